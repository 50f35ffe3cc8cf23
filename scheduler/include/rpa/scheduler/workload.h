#pragma once

// Request streams for the serving engine: the Azure LLM inference trace 2023's
// length distribution with Poisson or closed-loop arrivals, replay of a trace
// CSV, shared system prompts, and scaling of lengths to fit a small machine.
//
// The Azure trace (Microsoft Azure, Azure Public Dataset, CC-BY 4.0; the
// three-column form processed by the Vidur simulator) has two parts:
// conversation (19,366 requests, 5.5 req/s, prompt p50 1020 / output p50 129)
// and code (8,819 requests, 2.6 req/s, prompt p50 1469 / output p50 13).
// Its CSV format is
//
//   arrived_at,num_prefill_tokens,num_decode_tokens
//   0.0,512,64
//
// arrived_at in seconds from the start (non-decreasing), the two counts
// positive integers. ParseTraceCsv is strict: anything else is an
// InvalidArgument naming the line and the column ("trace.csv:7: column 2
// (num_prefill_tokens): \"12x\" is not an integer").
//
// Lengths. LengthDistribution::Azure draws (prompt, output) pairs from the
// trace's own rows (the empirical joint distribution) when the CSV is found
// (see FindAzureTraceFile), and otherwise from an embedded table of its
// percentiles (p0, p1, ..., p98, then p99.0, p99.1, ..., p100: the tail is
// finer because it carries much of the mean; prompt and output drawn
// independently, by linear interpolation between neighbouring grid points).
// Both are the published data; the report says which was used.
//
// Scaling (LengthScaling), applied to every sampled or replayed request:
//   prompt = clamp(round(trace_prompt * length_scale), 1, max_prompt_tokens)
//   output = clamp(round(trace_output * length_scale), 1, max_output_tokens)
// (a cap of 0 means no cap). The shared prefix (below) is not scaled and
// comes on top of the scaled prompt.
//
// Shared system prompts (SharedPrefixOptions): with probability `fraction`
// a request's prompt starts with one of `num_prefixes` fixed prefixes of
// `prefix_tokens` tokens (chosen uniformly), followed by its own prompt.
// Requests with the same prefix have the same first prefix_tokens token ids,
// so a prefix cache can match them.
//
// Token ids are synthetic and deterministic: prompt token j of request r is
// a hash of (seed, r, j) modulo vocab_size; token j of shared prefix k is a
// hash of (seed, k, j) in a separate stream. The same options give the same
// requests on every run and machine.
//
// Thread-safety: plain values and pure functions.
//
// Example:
//   RPA_ASSIGN_OR_RETURN(LengthDistribution lengths,
//                        LengthDistribution::Azure(AzureTrace::kConversation));
//   RPA_ASSIGN_OR_RETURN(std::vector<WorkloadRequest> requests,
//       SampleWorkload(lengths, {.num_requests = 64,
//                                .scaling = {.length_scale = 0.25}}));
//   for (const WorkloadRequest& r : requests) Submit(r.arrival_s, r.prompt);

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rpa/runtime/status.h"

namespace rpa::scheduler {

// One row of a trace CSV.
struct TraceRow {
  double arrived_at_s = 0;
  std::uint32_t num_prefill_tokens = 0;
  std::uint32_t num_decode_tokens = 0;
};

// The largest token count a trace row may give (longer is InvalidArgument).
inline constexpr std::uint32_t kMaxTraceTokens = 1u << 24;

// Parses `text` (the whole CSV) strictly: the header line exactly as above,
// then one row per line, three comma-separated fields without spaces,
// arrived_at a finite number >= 0 and >= the previous row's, the counts
// integers in [1, kMaxTraceTokens]. "\n" or "\r\n" line ends; a final line
// end is optional; an empty line before the end is an error. Parses the
// first max_rows data rows (0 = all) and ignores the rest of the text.
// Errors: InvalidArgument "<name>:<line>: ..." naming the column; an empty
// text or a file without rows is InvalidArgument too.
StatusOr<std::vector<TraceRow>> ParseTraceCsv(std::string_view text,
                                              std::string_view name,
                                              std::size_t max_rows = 0);

// Reads and parses a file (the message starts with its file name).
// NotFound if it does not exist, Unavailable if it cannot be read.
StatusOr<std::vector<TraceRow>> ReadTraceCsv(const std::filesystem::path& file,
                                             std::size_t max_rows = 0);

enum class AzureTrace : std::uint8_t { kConversation, kCode };
// "conv", "code" (the file names' suffixes).
std::string_view AzureTraceName(AzureTrace trace);
// Parses "conv" / "conversation" / "code"; InvalidArgument otherwise.
StatusOr<AzureTrace> ParseAzureTraceName(std::string_view name);

// Where the trace CSV (splitwise_conv.csv / splitwise_code.csv) is looked
// for, in order: `dir` if given (and only there); $RPA_SHARED_DIR/data/
// azure-llm-2023/; the source tree's ../shared/data/azure-llm-2023/ (the
// checkout's sibling shared/ directory, as the build saw it);
// ./shared/data/azure-llm-2023/ and ../shared/data/azure-llm-2023/ from the
// working directory. nullopt if none holds the file.
std::optional<std::filesystem::path> FindAzureTraceFile(
    AzureTrace trace, const std::optional<std::filesystem::path>& dir = {});

// The trace's mean arrival rate (requests / span), as published.
double AzureMeanArrivalRatePerS(AzureTrace trace);

// Prompt and output lengths to sample from.
class LengthDistribution {
 public:
  // The rows' (prompt, output) pairs, drawn uniformly. InvalidArgument if
  // `rows` is empty.
  static StatusOr<LengthDistribution> FromRows(std::span<const TraceRow> rows,
                                               std::string description);
  // The trace's CSV if FindAzureTraceFile(trace, dir) finds it, otherwise the
  // embedded percentiles. With an explicit `dir` that lacks the file: NotFound.
  // Errors of the CSV itself are returned, never silently replaced.
  static StatusOr<LengthDistribution> Azure(
      AzureTrace trace, const std::optional<std::filesystem::path>& dir = {});
  // The embedded percentile table alone.
  static LengthDistribution AzurePercentiles(AzureTrace trace);

  // One (prompt, output) pair from a 64-bit random word pair.
  TraceRow Sample(std::uint64_t random_a, std::uint64_t random_b) const;

  // "splitwise_conv.csv (19366 rows)" or "embedded percentiles of ...".
  const std::string& description() const { return description_; }
  bool empirical() const { return !rows_.empty(); }

 private:
  LengthDistribution() = default;

  std::string description_;
  std::vector<TraceRow> rows_;  // empirical; empty = percentile table
  std::span<const std::uint32_t> prompt_percentiles_;  // on the grid
  std::span<const std::uint32_t> output_percentiles_;
};

// The embedded tables, exposed for the test that recomputes them from the
// CSVs: the grid in tenths of a percent (0, 10, ..., 980, 990, 991, ...,
// 1000) and, per grid point g, the sorted column's element at index
// (g * (n - 1) + 500) / 1000.
std::span<const std::uint32_t> AzurePercentileGridTenths();
std::span<const std::uint32_t> AzurePromptPercentiles(AzureTrace trace);
std::span<const std::uint32_t> AzureOutputPercentiles(AzureTrace trace);

struct LengthScaling {
  double length_scale = 1.0;            // > 0
  std::uint32_t max_prompt_tokens = 0;  // 0 = no cap
  std::uint32_t max_output_tokens = 0;  // 0 = no cap
};

struct SharedPrefixOptions {
  double fraction = 0;              // in [0, 1]
  std::uint32_t num_prefixes = 0;   // K >= 1 when fraction > 0
  std::uint32_t prefix_tokens = 0;  // L >= 1 when fraction > 0
};

enum class ArrivalProcess : std::uint8_t {
  kPoisson,     // exponential gaps at arrival_rate_per_s
  kClosedLoop,  // every arrival_s is 0: the driver keeps a fixed number of
                // requests in flight and submits the next when one finishes
};

struct WorkloadOptions {
  std::uint64_t seed = 2023;
  std::uint32_t num_requests = 64;  // SampleWorkload; >= 1
  ArrivalProcess arrivals = ArrivalProcess::kPoisson;
  double arrival_rate_per_s = 5.5;  // kPoisson; > 0
  // ReplayTrace: arrival_s = arrived_at_s * time_scale (> 0; 1 = as
  // recorded, 0.1 = ten times faster).
  double time_scale = 1.0;
  LengthScaling scaling{};
  SharedPrefixOptions shared_prefix{};
  std::uint32_t vocab_size = 128256;  // Llama-3; >= 2
};

struct WorkloadRequest {
  std::uint64_t id = 0;              // 0, 1, ... in arrival order
  double arrival_s = 0;              // from the start of the workload
  std::vector<std::int32_t> prompt;  // token ids, shared prefix included
  std::uint32_t output_tokens = 0;   // tokens to generate, >= 1
  std::int32_t shared_prefix = -1;   // index of its shared prefix, -1 = none
  std::uint32_t shared_prefix_tokens = 0;
  TraceRow source{};  // the unscaled lengths it was drawn or replayed from
};

// InvalidArgument naming the field for any option out of range.
Status ValidateWorkloadOptions(const WorkloadOptions& options);

// num_requests requests with lengths from `lengths`.
StatusOr<std::vector<WorkloadRequest>> SampleWorkload(
    const LengthDistribution& lengths, const WorkloadOptions& options);

// One request per row, in order: arrival_s = (the row's arrived_at_s - the
// first row's) * time_scale (0 with kClosedLoop), lengths scaled;
// num_requests and
// arrival_rate_per_s are ignored. InvalidArgument for empty rows.
StatusOr<std::vector<WorkloadRequest>> ReplayTrace(
    std::span<const TraceRow> rows, const WorkloadOptions& options);

// Sums over a request list, for reports.
struct WorkloadTotals {
  std::uint64_t requests = 0;
  std::uint64_t prompt_tokens = 0;
  std::uint64_t output_tokens = 0;
  std::uint64_t shared_prefix_requests = 0;
  std::uint32_t max_prompt_tokens = 0;
  std::uint32_t max_output_tokens = 0;
};
WorkloadTotals SumWorkload(std::span<const WorkloadRequest> requests);

// The p-th percentile (p in [0, 100]) of `values` by linear interpolation
// between closest ranks (numpy's default); NaN for an empty span. Copies and
// sorts, so `values` may be in any order.
double Percentile(std::span<const double> values, double p);

}  // namespace rpa::scheduler
