// Request streams: the trace CSV parser, the length distributions, sampling,
// replay and scaling (contract in rpa/scheduler/workload.h).

#include "rpa/scheduler/workload.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <system_error>
#include <utility>

#include "mix64.h"

namespace rpa::scheduler {
namespace {

constexpr std::string_view kHeader =
    "arrived_at,num_prefill_tokens,num_decode_tokens";
constexpr std::string_view kColumnNames[3] = {
    "arrived_at", "num_prefill_tokens", "num_decode_tokens"};

// Mix64 (mix64.h) is bijective, so distinct inputs never collide before the
// modulo.
using internal::Mix64;

// Independent streams of one seed: every random decision is a pure function
// of (seed, stream, a, b), so a request's lengths, arrival, prefix and tokens
// do not depend on how many other requests were drawn.
enum Stream : std::uint64_t {
  kStreamLengthA = 1,
  kStreamLengthB,
  kStreamArrival,
  kStreamPrefixPick,
  kStreamPrefixWhich,
  kStreamPromptToken,
  kStreamPrefixToken,
};

std::uint64_t Hash(std::uint64_t seed, Stream stream, std::uint64_t a,
                   std::uint64_t b = 0) {
  return Mix64(Mix64(Mix64(seed ^ (stream * 0xd6e8feb86659fd93ULL)) ^ a) ^ b);
}

// [0, 1) from the top 53 bits.
double Uniform(std::uint64_t bits) {
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// The field as it appears, quoted, at most 40 characters, non-printable bytes
// as \xNN (the input may be anything).
std::string Quote(std::string_view field) {
  std::string out = "\"";
  for (std::size_t i = 0; i < field.size() && i < 40; ++i) {
    const auto c = static_cast<unsigned char>(field[i]);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (field.size() > 40) out += "...";
  out += "\"";
  return out;
}

Status RowError(std::string_view name, std::size_t line, int column,
                std::string_view what) {
  return InvalidArgumentError(fmt::format("{}:{}: column {} ({}): {}", name,
                                          line, column + 1,
                                          kColumnNames[column], what));
}

StatusOr<std::uint32_t> ParseCount(std::string_view field,
                                   std::string_view name, std::size_t line,
                                   int column) {
  std::uint64_t value = 0;
  const char* end = field.data() + field.size();
  auto [ptr, ec] = std::from_chars(field.data(), end, value);
  if (field.empty() || ptr != end ||
      (ec != std::errc() && ec != std::errc::result_out_of_range)) {
    return RowError(name, line, column,
                    fmt::format("{} is not an integer", Quote(field)));
  }
  if (ec == std::errc::result_out_of_range || value < 1 ||
      value > kMaxTraceTokens) {
    return RowError(
        name, line, column,
        fmt::format("{} is outside [1, {}]", Quote(field), kMaxTraceTokens));
  }
  return static_cast<std::uint32_t>(value);
}

StatusOr<double> ParseSeconds(std::string_view field, std::string_view name,
                              std::size_t line, double previous) {
  double value = 0;
  const char* end = field.data() + field.size();
  auto [ptr, ec] = std::from_chars(field.data(), end, value);
  if (field.empty() || ptr != end || ec != std::errc() ||
      !std::isfinite(value)) {
    return RowError(name, line, 0,
                    fmt::format("{} is not a finite number", Quote(field)));
  }
  if (value < 0) {
    return RowError(name, line, 0, fmt::format("{} is negative", Quote(field)));
  }
  if (value < previous) {
    return RowError(name, line, 0,
                    fmt::format("{} is before the previous row's {}",
                                Quote(field), previous));
  }
  return value;
}

std::uint32_t ScaleLength(std::uint32_t tokens, double scale,
                          std::uint32_t cap) {
  const double scaled = std::round(static_cast<double>(tokens) * scale);
  double bounded = std::max(1.0, scaled);
  if (cap > 0) bounded = std::min(bounded, static_cast<double>(cap));
  bounded = std::min(bounded, static_cast<double>(kMaxTraceTokens));
  return static_cast<std::uint32_t>(bounded);
}

// The quantile function of an embedded table at u in [0, 1): linear
// interpolation between the two grid points around u.
std::uint32_t FromPercentiles(std::span<const std::uint32_t> table, double u) {
  const std::span<const std::uint32_t> grid = AzurePercentileGridTenths();
  const double at = u * 1000.0;
  // First grid point above `at` (grid[0] = 0 <= at < 1000 = grid.back()).
  const auto upper = static_cast<std::size_t>(
      std::upper_bound(grid.begin(), grid.end(), at,
                       [](double x, std::uint32_t g) {
                         return x < static_cast<double>(g);
                       }) -
      grid.begin());
  const std::size_t hi = std::min(upper, grid.size() - 1);
  const std::size_t lo = hi - 1;
  const double frac = (at - static_cast<double>(grid[lo])) /
                      static_cast<double>(grid[hi] - grid[lo]);
  const double value =
      static_cast<double>(table[lo]) +
      (static_cast<double>(table[hi]) - static_cast<double>(table[lo])) * frac;
  return std::max<std::uint32_t>(
      1, static_cast<std::uint32_t>(std::lround(value)));
}

// Builds one request from its (unscaled) lengths.
WorkloadRequest MakeRequest(std::uint64_t id, double arrival_s,
                            const TraceRow& source,
                            const WorkloadOptions& options) {
  WorkloadRequest request;
  request.id = id;
  request.arrival_s = arrival_s;
  request.source = source;
  const std::uint32_t prompt_tokens =
      ScaleLength(source.num_prefill_tokens, options.scaling.length_scale,
                  options.scaling.max_prompt_tokens);
  request.output_tokens =
      ScaleLength(source.num_decode_tokens, options.scaling.length_scale,
                  options.scaling.max_output_tokens);
  const SharedPrefixOptions& shared = options.shared_prefix;
  const std::uint64_t seed = options.seed;
  if (shared.fraction > 0 &&
      Uniform(Hash(seed, kStreamPrefixPick, id)) < shared.fraction) {
    request.shared_prefix = static_cast<std::int32_t>(
        Hash(seed, kStreamPrefixWhich, id) % shared.num_prefixes);
    request.shared_prefix_tokens = shared.prefix_tokens;
  }
  request.prompt.reserve(request.shared_prefix_tokens + prompt_tokens);
  for (std::uint32_t j = 0; j < request.shared_prefix_tokens; ++j) {
    request.prompt.push_back(static_cast<std::int32_t>(
        Hash(seed, kStreamPrefixToken,
             static_cast<std::uint64_t>(request.shared_prefix), j) %
        options.vocab_size));
  }
  for (std::uint32_t j = 0; j < prompt_tokens; ++j) {
    request.prompt.push_back(static_cast<std::int32_t>(
        Hash(seed, kStreamPromptToken, id, j) % options.vocab_size));
  }
  return request;
}

bool FiniteIn(double value, double lo, double hi) {
  return std::isfinite(value) && value >= lo && value <= hi;
}

}  // namespace

StatusOr<std::vector<TraceRow>> ParseTraceCsv(std::string_view text,
                                              std::string_view name,
                                              std::size_t max_rows) {
  std::vector<TraceRow> rows;
  std::size_t pos = 0;
  std::size_t line = 0;
  double previous_s = 0;
  while (pos < text.size() && (max_rows == 0 || rows.size() < max_rows)) {
    ++line;
    std::size_t newline = text.find('\n', pos);
    if (newline == std::string_view::npos) newline = text.size();
    std::string_view content = text.substr(pos, newline - pos);
    pos = newline + 1;
    if (!content.empty() && content.back() == '\r') content.remove_suffix(1);
    if (line == 1) {
      if (content != kHeader) {
        return InvalidArgumentError(
            fmt::format("{}:1: the header must be \"{}\", got {}", name,
                        kHeader, Quote(content)));
      }
      continue;
    }
    if (content.empty()) {
      return InvalidArgumentError(
          fmt::format("{}:{}: empty line (expected {} fields)", name, line, 3));
    }
    std::string_view fields[3];
    std::string_view rest = content;
    for (int column = 0; column < 3; ++column) {
      const std::size_t comma = rest.find(',');
      if (column < 2 && comma == std::string_view::npos) {
        return RowError(name, line, column + 1,
                        fmt::format("missing: the row has {} field{}",
                                    column + 1, column == 0 ? "" : "s"));
      }
      if (column == 2 && comma != std::string_view::npos) {
        return InvalidArgumentError(fmt::format("{}:{}: more than 3 fields: {}",
                                                name, line, Quote(content)));
      }
      fields[column] = rest.substr(0, comma);
      rest = comma == std::string_view::npos ? std::string_view()
                                             : rest.substr(comma + 1);
    }
    TraceRow row;
    RPA_ASSIGN_OR_RETURN(row.arrived_at_s,
                         ParseSeconds(fields[0], name, line, previous_s));
    RPA_ASSIGN_OR_RETURN(row.num_prefill_tokens,
                         ParseCount(fields[1], name, line, 1));
    RPA_ASSIGN_OR_RETURN(row.num_decode_tokens,
                         ParseCount(fields[2], name, line, 2));
    previous_s = row.arrived_at_s;
    rows.push_back(row);
  }
  if (line == 0) {
    return InvalidArgumentError(fmt::format("{}: empty file", name));
  }
  if (rows.empty()) {
    return InvalidArgumentError(
        fmt::format("{}: no rows after the header", name));
  }
  return rows;
}

StatusOr<std::vector<TraceRow>> ReadTraceCsv(const std::filesystem::path& file,
                                             std::size_t max_rows) {
  const std::string name = file.filename().string();
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) {
    return NotFoundError(fmt::format("{}: no such file", file.string()));
  }
  std::ifstream in(file, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) {
    return UnavailableError(fmt::format("{}: cannot read", file.string()));
  }
  return ParseTraceCsv(text.str(), name, max_rows);
}

std::string_view AzureTraceName(AzureTrace trace) {
  return trace == AzureTrace::kCode ? "code" : "conv";
}

StatusOr<AzureTrace> ParseAzureTraceName(std::string_view name) {
  if (name == "conv" || name == "conversation") {
    return AzureTrace::kConversation;
  }
  if (name == "code") return AzureTrace::kCode;
  return InvalidArgumentError(fmt::format(
      "azure trace must be \"conv\" or \"code\", got {}", Quote(name)));
}

std::optional<std::filesystem::path> FindAzureTraceFile(
    AzureTrace trace, const std::optional<std::filesystem::path>& dir) {
  const std::string file =
      fmt::format("splitwise_{}.csv", AzureTraceName(trace));
  std::vector<std::filesystem::path> candidates;
  if (dir.has_value()) {
    candidates.push_back(*dir / file);
  } else {
    const std::filesystem::path data = "data/azure-llm-2023";
    if (const char* shared = std::getenv("RPA_SHARED_DIR");
        shared != nullptr && *shared != '\0') {
      candidates.push_back(std::filesystem::path(shared) / data / file);
    }
#ifdef RPA_SOURCE_SHARED_DIR
    candidates.push_back(std::filesystem::path(RPA_SOURCE_SHARED_DIR) / data /
                         file);
#endif
    candidates.push_back(std::filesystem::path("shared") / data / file);
    candidates.push_back(std::filesystem::path("../shared") / data / file);
  }
  for (const std::filesystem::path& candidate : candidates) {
    std::error_code ec;
    if (std::filesystem::is_regular_file(candidate, ec)) {
      return candidate.lexically_normal();
    }
  }
  return std::nullopt;
}

StatusOr<LengthDistribution> LengthDistribution::FromRows(
    std::span<const TraceRow> rows, std::string description) {
  if (rows.empty()) {
    return InvalidArgumentError("length distribution: rows must not be empty");
  }
  LengthDistribution d;
  d.rows_.assign(rows.begin(), rows.end());
  d.description_ = std::move(description);
  return d;
}

StatusOr<LengthDistribution> LengthDistribution::Azure(
    AzureTrace trace, const std::optional<std::filesystem::path>& dir) {
  std::optional<std::filesystem::path> file = FindAzureTraceFile(trace, dir);
  if (!file.has_value()) {
    if (dir.has_value()) {
      return NotFoundError(
          fmt::format("azure trace: {} has no splitwise_{}.csv", dir->string(),
                      AzureTraceName(trace)));
    }
    return AzurePercentiles(trace);
  }
  RPA_ASSIGN_OR_RETURN(std::vector<TraceRow> rows, ReadTraceCsv(*file));
  const std::size_t count = rows.size();
  return FromRows(rows,
                  fmt::format("Azure LLM inference trace 2023, {} ({} "
                              "rows of {})",
                              AzureTraceName(trace), count, file->string()));
}

LengthDistribution LengthDistribution::AzurePercentiles(AzureTrace trace) {
  LengthDistribution d;
  d.prompt_percentiles_ = AzurePromptPercentiles(trace);
  d.output_percentiles_ = AzureOutputPercentiles(trace);
  d.description_ = fmt::format(
      "Azure LLM inference trace 2023, {} (embedded percentile table; "
      "splitwise_{}.csv not found)",
      AzureTraceName(trace), AzureTraceName(trace));
  return d;
}

TraceRow LengthDistribution::Sample(std::uint64_t random_a,
                                    std::uint64_t random_b) const {
  if (!rows_.empty()) {
    // n < 2^25, so the modulo's bias (< n / 2^64) is immaterial.
    const auto index = static_cast<std::size_t>(random_a % rows_.size());
    TraceRow row = rows_[index];
    row.arrived_at_s = 0;
    return row;
  }
  return TraceRow{.arrived_at_s = 0,
                  .num_prefill_tokens =
                      FromPercentiles(prompt_percentiles_, Uniform(random_a)),
                  .num_decode_tokens =
                      FromPercentiles(output_percentiles_, Uniform(random_b))};
}

Status ValidateWorkloadOptions(const WorkloadOptions& options) {
  if (options.num_requests < 1 || options.num_requests > (1u << 24)) {
    return InvalidArgumentError(
        fmt::format("num_requests must be in [1, {}], got {}", 1u << 24,
                    options.num_requests));
  }
  if (options.arrivals == ArrivalProcess::kPoisson &&
      !FiniteIn(options.arrival_rate_per_s, 1e-9, 1e9)) {
    return InvalidArgumentError(
        fmt::format("arrival_rate_per_s must be positive and finite, got {}",
                    options.arrival_rate_per_s));
  }
  if (!FiniteIn(options.time_scale, 1e-12, 1e12)) {
    return InvalidArgumentError(fmt::format(
        "time_scale must be positive and finite, got {}", options.time_scale));
  }
  if (!FiniteIn(options.scaling.length_scale, 1e-9, 1e6)) {
    return InvalidArgumentError(
        fmt::format("length_scale must be positive and finite, got {}",
                    options.scaling.length_scale));
  }
  const SharedPrefixOptions& shared = options.shared_prefix;
  if (!FiniteIn(shared.fraction, 0, 1)) {
    return InvalidArgumentError(fmt::format(
        "shared_prefix.fraction must be in [0, 1], got {}", shared.fraction));
  }
  if (shared.fraction > 0 && shared.num_prefixes < 1) {
    return InvalidArgumentError(
        "shared_prefix.num_prefixes must be >= 1 when fraction > 0, got 0");
  }
  if (shared.fraction > 0 &&
      (shared.prefix_tokens < 1 || shared.prefix_tokens > kMaxTraceTokens)) {
    return InvalidArgumentError(fmt::format(
        "shared_prefix.prefix_tokens must be in [1, {}] when fraction > 0, "
        "got {}",
        kMaxTraceTokens, shared.prefix_tokens));
  }
  if (options.vocab_size < 2 ||
      options.vocab_size > static_cast<std::uint32_t>(
                               std::numeric_limits<std::int32_t>::max())) {
    return InvalidArgumentError(fmt::format(
        "vocab_size must be in [2, 2^31 - 1], got {}", options.vocab_size));
  }
  return OkStatus();
}

StatusOr<std::vector<WorkloadRequest>> SampleWorkload(
    const LengthDistribution& lengths, const WorkloadOptions& options) {
  RPA_RETURN_IF_ERROR(ValidateWorkloadOptions(options));
  std::vector<WorkloadRequest> requests;
  requests.reserve(options.num_requests);
  double arrival_s = 0;
  for (std::uint64_t id = 0; id < options.num_requests; ++id) {
    if (options.arrivals == ArrivalProcess::kPoisson && id > 0) {
      // Exponential gap by inversion; 1 - u is in (0, 1], so log is finite.
      const double u = Uniform(Hash(options.seed, kStreamArrival, id));
      arrival_s += -std::log1p(-u) / options.arrival_rate_per_s;
    }
    const TraceRow source =
        lengths.Sample(Hash(options.seed, kStreamLengthA, id),
                       Hash(options.seed, kStreamLengthB, id));
    requests.push_back(MakeRequest(id, arrival_s, source, options));
  }
  return requests;
}

StatusOr<std::vector<WorkloadRequest>> ReplayTrace(
    std::span<const TraceRow> rows, const WorkloadOptions& options) {
  WorkloadOptions checked = options;
  checked.num_requests = 1;  // not used by a replay
  checked.arrival_rate_per_s = 1;
  RPA_RETURN_IF_ERROR(ValidateWorkloadOptions(checked));
  if (rows.empty()) {
    return InvalidArgumentError("trace replay: rows must not be empty");
  }
  std::vector<WorkloadRequest> requests;
  requests.reserve(rows.size());
  const double start_s = rows.front().arrived_at_s;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const double arrival_s =
        options.arrivals == ArrivalProcess::kClosedLoop
            ? 0.0
            : std::max(0.0, rows[i].arrived_at_s - start_s) *
                  options.time_scale;
    requests.push_back(MakeRequest(i, arrival_s, rows[i], options));
  }
  return requests;
}

WorkloadTotals SumWorkload(std::span<const WorkloadRequest> requests) {
  WorkloadTotals totals;
  for (const WorkloadRequest& r : requests) {
    ++totals.requests;
    totals.prompt_tokens += r.prompt.size();
    totals.output_tokens += r.output_tokens;
    if (r.shared_prefix >= 0) ++totals.shared_prefix_requests;
    totals.max_prompt_tokens = std::max(
        totals.max_prompt_tokens, static_cast<std::uint32_t>(r.prompt.size()));
    totals.max_output_tokens =
        std::max(totals.max_output_tokens, r.output_tokens);
  }
  return totals;
}

double Percentile(std::span<const double> values, double p) {
  if (values.empty() || std::isnan(p)) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  std::vector<double> sorted(values.begin(), values.end());
  std::sort(sorted.begin(), sorted.end());
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 *
                      static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(rank));
  const std::size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] +
         (sorted[hi] - sorted[lo]) * (rank - static_cast<double>(lo));
}

}  // namespace rpa::scheduler
