// SyntheticModel (rpa/scheduler/synthetic_model.h): q / k / v rows as pure
// functions of (seed, layer, context), and a double-precision reference.

#include "rpa/scheduler/synthetic_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "mix64.h"

#include "rpa/attention/storage_convert.h"

namespace rpa::scheduler {
namespace {

using internal::Mix64;

enum Tensor : std::uint64_t { kTensorQ = 1, kTensorK = 2, kTensorV = 3 };

// Fills `out` with values uniform in [-1, 1) from a 64-bit key. Each element
// is an independent 32-bit hash (lowbias32) of key + i: no loop-carried
// state, so the loop vectorises (32-bit multiplies), which matters because
// this runs for every token of every layer of every step.
void FillUniform(std::uint64_t key, std::span<float> out) {
  const auto base = static_cast<std::uint32_t>(key ^ (key >> 32));
  const std::size_t n = out.size();
  float* data = out.data();
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t x = base + static_cast<std::uint32_t>(i) * 0x9e3779b9u;
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    // Two's-complement reinterpretation, then scale: [-2^31, 2^31) -> [-1, 1).
    data[i] = static_cast<float>(static_cast<std::int32_t>(x)) * 0x1.0p-31f;
  }
}

std::uint64_t RowKey(std::uint64_t seed, std::uint32_t layer,
                     std::uint64_t context, Tensor tensor) {
  return Mix64(Mix64(seed ^ (static_cast<std::uint64_t>(layer) << 8) ^ tensor) ^
               context);
}

}  // namespace

StatusOr<SyntheticModel> SyntheticModel::Create(
    const SyntheticModelConfig& config) {
  if (config.num_layers < 1) {
    return InvalidArgumentError("num_layers must be >= 1, got 0");
  }
  if (config.num_kv_heads < 1) {
    return InvalidArgumentError("num_kv_heads must be >= 1, got 0");
  }
  if (config.num_q_heads < 1 || config.num_q_heads % config.num_kv_heads != 0) {
    return InvalidArgumentError(fmt::format(
        "num_q_heads must be a positive multiple of num_kv_heads ({}), got {}",
        config.num_kv_heads, config.num_q_heads));
  }
  if (config.head_dim < 1) {
    return InvalidArgumentError("head_dim must be >= 1, got 0");
  }
  if (config.vocab_size < 2 ||
      config.vocab_size > static_cast<std::uint32_t>(
                              std::numeric_limits<std::int32_t>::max())) {
    return InvalidArgumentError(fmt::format(
        "vocab_size must be in [2, 2^31 - 1], got {}", config.vocab_size));
  }
  return SyntheticModel(config);
}

std::uint64_t SyntheticModel::Extend(std::uint64_t context,
                                     std::int32_t token) {
  return Mix64(context ^ Mix64(static_cast<std::uint64_t>(
                             static_cast<std::uint32_t>(token))));
}

void SyntheticModel::FillToken(std::uint32_t layer, std::uint64_t context,
                               std::span<float> q, std::span<float> k,
                               std::span<float> v) const {
  RPA_CHECK(layer < config_.num_layers);
  RPA_CHECK(q.size() == q_row_floats());
  RPA_CHECK(k.size() == kv_row_floats());
  RPA_CHECK(v.size() == kv_row_floats());
  FillUniform(RowKey(config_.seed, layer, context, kTensorQ), q);
  FillUniform(RowKey(config_.seed, layer, context, kTensorK), k);
  FillUniform(RowKey(config_.seed, layer, context, kTensorV), v);
}

std::int32_t SyntheticModel::NextToken(std::uint64_t context) const {
  return static_cast<std::int32_t>(Mix64(config_.seed ^ Mix64(context)) %
                                   config_.vocab_size);
}

ReferenceCheck SyntheticModel::Reference(
    std::uint32_t layer, std::span<const std::uint64_t> contexts,
    memory::StorageType storage, std::span<const float> got,
    std::optional<float> sm_scale,
    std::optional<std::int32_t> sliding_window_tokens) const {
  RPA_CHECK(!contexts.empty());
  RPA_CHECK(got.size() == q_row_floats());
  const std::uint32_t hq = config_.num_q_heads;
  const std::uint32_t hkv = config_.num_kv_heads;
  const std::uint32_t d = config_.head_dim;
  const std::uint32_t group = hq / hkv;
  const std::size_t kv_len = contexts.size();
  const std::size_t position = kv_len - 1;
  std::size_t first = 0;
  if (sliding_window_tokens.has_value() && *sliding_window_tokens > 0) {
    const auto window = static_cast<std::size_t>(*sliding_window_tokens);
    if (position + 1 > window) first = position + 1 - window;
  }
  const double scale = sm_scale.has_value()
                           ? static_cast<double>(*sm_scale)
                           : 1.0 / std::sqrt(static_cast<double>(d));

  std::vector<float> q(q_row_floats());
  std::vector<float> k(kv_row_floats());
  std::vector<float> v(kv_row_floats());
  std::vector<float> unused_q(q_row_floats());
  FillToken(layer, contexts[position], q, k, v);

  // Stored K / V of every visible position, rounded as the cache stores them.
  const std::size_t visible = kv_len - first;
  std::vector<double> keys(visible * hkv * d);
  std::vector<double> values(visible * hkv * d);
  for (std::size_t b = first; b < kv_len; ++b) {
    FillToken(layer, contexts[b], unused_q, k, v);
    for (std::size_t i = 0; i < k.size(); ++i) {
      keys[(b - first) * k.size() + i] =
          static_cast<double>(attention::RoundToStorage(k[i], storage));
      values[(b - first) * v.size() + i] =
          static_cast<double>(attention::RoundToStorage(v[i], storage));
    }
  }

  ReferenceCheck check;
  std::vector<double> scores(visible);
  std::vector<double> row(d);
  for (std::uint32_t h = 0; h < hq; ++h) {
    const std::uint32_t kvh = h / group;
    double max_score = -std::numeric_limits<double>::infinity();
    for (std::size_t b = 0; b < visible; ++b) {
      const double* key = &keys[(b * hkv + kvh) * d];
      double dot = 0;
      for (std::uint32_t x = 0; x < d; ++x) {
        dot += static_cast<double>(q[h * d + x]) * key[x];
      }
      scores[b] = dot * scale;
      max_score = std::max(max_score, scores[b]);
    }
    double sum = 0;
    for (double& s : scores) {
      s = std::exp(s - max_score);
      sum += s;
    }
    std::fill(row.begin(), row.end(), 0.0);
    for (std::size_t b = 0; b < visible; ++b) {
      const double* value = &values[(b * hkv + kvh) * d];
      for (std::uint32_t x = 0; x < d; ++x) row[x] += scores[b] * value[x];
    }
    for (std::uint32_t x = 0; x < d; ++x) {
      const double expected = row[x] / sum;
      const double error =
          std::abs(static_cast<double>(got[h * d + x]) - expected);
      check.max_abs_error = std::max(check.max_abs_error, error);
      check.max_abs_expected =
          std::max(check.max_abs_expected, std::abs(expected));
      check.max_scaled_error =
          std::max(check.max_scaled_error, error / (1.0 + std::abs(expected)));
      if (std::isnan(error)) {
        check.max_abs_error = std::numeric_limits<double>::infinity();
        check.max_scaled_error = std::numeric_limits<double>::infinity();
      }
    }
  }
  return check;
}

}  // namespace rpa::scheduler
