// Invariant fuzzer of the trace CSV parser (rpa/scheduler/workload.h), the
// parser of `rpa demo --trace FILE`.
//   - ParseTraceCsv never reads out of bounds and never throws; a rejection
//     is InvalidArgument whose message starts with the file name and a line
//     number ("fuzz.csv:<line>");
//   - accepted rows satisfy the contract: arrivals finite, >= 0 and
//     non-decreasing, counts in [1, kMaxTraceTokens];
//   - accepted rows round-trip: printed back as CSV (shortest round-trip
//     form) they parse to the same values;
//   - max_rows is a prefix: parsing the first k rows gives the first k rows
//     of the full parse;
//   - ReplayTrace accepts every accepted trace and keeps its order.
// Seeds: fuzz/corpus/trace_csv/ (made-up rows in the Azure traces' format,
// CRLF, limits, and near misses of every rule; the trace data itself stays
// in shared/data).

#include <fmt/format.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "rpa/scheduler/workload.h"

namespace {

void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "trace_csv_fuzz: invariant violated: %s\n", what);
    std::abort();
  }
}

bool SameRows(const std::vector<rpa::scheduler::TraceRow>& a,
              const std::vector<rpa::scheduler::TraceRow>& b, std::size_t n) {
  if (a.size() < n || b.size() < n) return false;
  for (std::size_t i = 0; i < n; ++i) {
    if (a[i].arrived_at_s != b[i].arrived_at_s ||
        a[i].num_prefill_tokens != b[i].num_prefill_tokens ||
        a[i].num_decode_tokens != b[i].num_decode_tokens) {
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  using rpa::scheduler::TraceRow;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = rpa::scheduler::ParseTraceCsv(text, "fuzz.csv");
  if (!parsed.ok()) {
    Require(parsed.status().code() == rpa::StatusCode::kInvalidArgument,
            "a rejection is not InvalidArgument");
    Require(parsed.status().message().rfind("fuzz.csv:", 0) == 0,
            "an error does not start with the file name");
    return 0;
  }
  const std::vector<TraceRow>& rows = *parsed;
  Require(!rows.empty(), "accepted a trace without rows");
  double previous = 0;
  std::string again = "arrived_at,num_prefill_tokens,num_decode_tokens\n";
  for (const TraceRow& row : rows) {
    Require(std::isfinite(row.arrived_at_s) && row.arrived_at_s >= 0,
            "arrival not finite and >= 0");
    Require(row.arrived_at_s >= previous, "arrivals decrease");
    previous = row.arrived_at_s;
    Require(row.num_prefill_tokens >= 1 &&
                row.num_prefill_tokens <= rpa::scheduler::kMaxTraceTokens,
            "num_prefill_tokens out of range");
    Require(row.num_decode_tokens >= 1 &&
                row.num_decode_tokens <= rpa::scheduler::kMaxTraceTokens,
            "num_decode_tokens out of range");
    again += fmt::format("{},{},{}\n", row.arrived_at_s, row.num_prefill_tokens,
                         row.num_decode_tokens);
  }
  auto reparsed = rpa::scheduler::ParseTraceCsv(again, "again.csv");
  Require(reparsed.ok(), "printed rows do not parse");
  Require(
      reparsed->size() == rows.size() && SameRows(*reparsed, rows, rows.size()),
      "rows changed in the round trip");

  const std::size_t half = (rows.size() + 1) / 2;
  auto prefix = rpa::scheduler::ParseTraceCsv(text, "fuzz.csv", half);
  Require(
      prefix.ok() && prefix->size() == half && SameRows(*prefix, rows, half),
      "max_rows is not a prefix of the full parse");

  // Replay a bounded number of rows with lengths scaled down, so a fuzz
  // input of huge counts does not turn into gigabytes of token ids.
  const std::size_t replayed = rows.size() < 64 ? rows.size() : 64;
  auto requests = rpa::scheduler::ReplayTrace(
      std::span<const TraceRow>(rows.data(), replayed),
      {.scaling = {.length_scale = 1e-3,
                   .max_prompt_tokens = 64,
                   .max_output_tokens = 64}});
  Require(requests.ok() && requests->size() == replayed,
          "an accepted trace does not replay");
  for (std::size_t i = 0; i < replayed; ++i) {
    const auto& r = (*requests)[i];
    Require(r.id == i, "replay reordered requests");
    Require(!r.prompt.empty() && r.prompt.size() <= 64,
            "replayed prompt out of the cap");
    Require(r.output_tokens >= 1 && r.output_tokens <= 64,
            "replayed output out of the cap");
    Require(i == 0 || r.arrival_s >= (*requests)[i - 1].arrival_s,
            "replayed arrivals decrease");
  }
  return 0;
}
