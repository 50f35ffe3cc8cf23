#include "attention/oracle.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "rpa/attention/storage_convert.h"
#include "rpa/runtime/check.h"

namespace rpa::attention::testutil {
namespace {

using memory::StorageBytes;

// Offset in bytes of element d of combined head `head` of (page, slot).
std::size_t ElementOffset(const memory::KvLayerView& cache, std::size_t page,
                          std::size_t slot, std::size_t head, std::size_t d) {
  const std::size_t element_bytes = StorageBytes(cache.storage);
  return ((page * cache.page_size_tokens + slot) * cache.num_combined_heads +
          head) *
             cache.head_dim * element_bytes +
         d * element_bytes;
}

// The cache element at `offset`, widened to double.
double ReadElement(const std::vector<std::byte>& bytes,
                   memory::StorageType type, std::size_t offset) {
  float value = 0;
  ConvertFromStorage(bytes.data() + offset, type, std::span<float>(&value, 1));
  return static_cast<double>(value);
}

struct Geometry {
  std::int64_t num_seqs = 0;
  std::int64_t pages_per_sequence = 0;
  std::int64_t page_size = 0;
};

// The physical (page, slot) of token `position` of sequence `seq`.
std::pair<std::size_t, std::size_t> Locate(const OracleInput& input,
                                           const Geometry& geometry,
                                           std::int64_t seq,
                                           std::int64_t position) {
  const std::int64_t entry =
      seq * geometry.pages_per_sequence + position / geometry.page_size;
  RPA_CHECK(position / geometry.page_size < geometry.pages_per_sequence);
  RPA_CHECK(entry >= 0 && static_cast<std::size_t>(entry) <
                              input.metadata.page_indices.size());
  const std::int32_t page =
      input.metadata.page_indices[static_cast<std::size_t>(entry)];
  RPA_CHECK(page >= 0 &&
            static_cast<std::uint32_t>(page) < input.cache.num_pages);
  return {static_cast<std::size_t>(page),
          static_cast<std::size_t>(position % geometry.page_size)};
}

// Higham's gamma_n = n u / (1 - n u), u = 2^-24: the relative error bound of
// n rounded f32 operations in sequence.
double Gamma(std::size_t n) {
  const double nu = static_cast<double>(n) * 0x1p-24;
  return nu / (1.0 - nu);
}

// A first-order bound on the relative error of every softmax weight w_b, and
// of the sum over b of w_b v_b, when SPEC section 2 is evaluated in f32:
// each score s_b is a D-term dot product, scaled (and perhaps capped, tanh
// being 1-Lipschitz), so |ds_b| <= delta_s = gamma_{D+8} * max_abs_terms +
// 8 u max|s|; exp(s_b - max) then carries 2 delta_s + 8 u, the
// normalisation by the kv_len-term sum doubles that and adds
// 2 gamma_{kv_len+2}, and the weighted sum of values adds gamma_{kv_len+2}.
// Scaled by sum_b w_b |v_b| it bounds the error of out.
double WeightRelativeError(std::size_t head_dim, std::size_t kv_len,
                           double max_abs_terms, double max_abs_score) {
  constexpr double kUnit = 0x1p-24;
  const double score_error =
      Gamma(head_dim + 8) * max_abs_terms + 8 * kUnit * max_abs_score;
  return 4 * score_error + 16 * kUnit + 3 * Gamma(kv_len + 2);
}

}  // namespace

OracleOutput RunOracle(const OracleInput& input) {
  const BatchMetadata& meta = input.metadata;
  const memory::KvLayerView& cache = input.cache;
  const std::size_t num_q_heads = meta.shape.num_q_heads;
  const std::size_t num_kv_heads = meta.shape.num_kv_heads;
  const std::size_t head_dim = meta.shape.head_dim;
  RPA_CHECK(num_kv_heads > 0 && num_q_heads % num_kv_heads == 0);
  RPA_CHECK(cache.num_combined_heads == 2 * num_kv_heads);
  RPA_CHECK(cache.head_dim == head_dim);
  RPA_CHECK(meta.distribution.size() == 3);
  RPA_CHECK(meta.cu_q_lens.size() == meta.kv_lens.size() + 1);
  const std::size_t group = num_q_heads / num_kv_heads;

  Geometry geometry;
  geometry.num_seqs = static_cast<std::int64_t>(meta.kv_lens.size());
  // S = 0 is a valid (empty) batch.
  geometry.pages_per_sequence =
      geometry.num_seqs == 0
          ? 0
          : static_cast<std::int64_t>(meta.page_indices.size()) /
                geometry.num_seqs;
  geometry.page_size = cache.page_size_tokens;
  const std::int64_t num_processed = meta.distribution[2];
  RPA_CHECK(num_processed >= 0 && num_processed <= geometry.num_seqs);
  const std::int64_t used_tokens =
      meta.cu_q_lens[static_cast<std::size_t>(num_processed)];
  RPA_CHECK(used_tokens >= 0 && used_tokens <= meta.shape.num_tokens);
  RPA_CHECK(input.q.size() >= meta.shape.num_tokens * num_q_heads * head_dim);
  RPA_CHECK(input.k.size() >= meta.shape.num_tokens * num_kv_heads * head_dim);
  RPA_CHECK(input.v.size() >= meta.shape.num_tokens * num_kv_heads * head_dim);

  OracleOutput result;
  result.cache.assign(cache.data, cache.data + CacheBytes(cache));
  result.out.assign(
      static_cast<std::size_t>(used_tokens) * num_q_heads * head_dim, 0.0);
  result.f32_rounding_bound.assign(result.out.size(), 0.0);

  // Step 1: the fused cache write, every new token of every processed
  // sequence, window or not.
  std::vector<std::byte> element(StorageBytes(cache.storage));
  for (std::int64_t i = 0; i < num_processed; ++i) {
    const std::int64_t q_begin = meta.cu_q_lens[static_cast<std::size_t>(i)];
    const std::int64_t q_len =
        meta.cu_q_lens[static_cast<std::size_t>(i + 1)] - q_begin;
    const std::int64_t kv_len = meta.kv_lens[static_cast<std::size_t>(i)];
    RPA_CHECK(q_len >= 1 && q_len <= kv_len);
    const std::int64_t gap = kv_len - q_len;
    for (std::int64_t a = 0; a < q_len; ++a) {
      const auto [page, slot] = Locate(input, geometry, i, gap + a);
      const std::size_t token = static_cast<std::size_t>(q_begin + a);
      for (std::size_t h = 0; h < num_kv_heads; ++h) {
        for (std::size_t d = 0; d < head_dim; ++d) {
          const std::size_t row = (token * num_kv_heads + h) * head_dim + d;
          ConvertToStorage(
              std::span<const float>(&input.k[row], 1), cache.storage,
              result.cache.data() + ElementOffset(cache, page, slot, 2 * h, d));
          ConvertToStorage(std::span<const float>(&input.v[row], 1),
                           cache.storage,
                           result.cache.data() +
                               ElementOffset(cache, page, slot, 2 * h + 1, d));
        }
      }
    }
  }

  const AttentionParams& params = input.params;
  const double score_scale = static_cast<double>(params.sm_scale) *
                             static_cast<double>(params.k_scale.value_or(1.0F));
  const double v_scale = static_cast<double>(params.v_scale.value_or(1.0F));

  std::vector<double> keys;    // [kv_len, D] of one kv head
  std::vector<double> values;  // [kv_len, D]
  std::vector<double> scores;
  std::vector<bool> visible_key;
  for (std::int64_t i = 0; i < num_processed; ++i) {
    const std::int64_t q_begin = meta.cu_q_lens[static_cast<std::size_t>(i)];
    const std::int64_t q_len =
        meta.cu_q_lens[static_cast<std::size_t>(i + 1)] - q_begin;
    const std::int64_t kv_len = meta.kv_lens[static_cast<std::size_t>(i)];
    const std::int64_t gap = kv_len - q_len;
    const auto kv = static_cast<std::size_t>(kv_len);
    keys.assign(kv * head_dim, 0.0);
    values.assign(kv * head_dim, 0.0);
    scores.assign(kv, 0.0);
    visible_key.assign(kv, false);
    for (std::size_t h = 0; h < num_kv_heads; ++h) {
      // Gather K / V "as stored" (SPEC 2): the cache below gap, the new k / v
      // rounded to the cache type from gap on.
      for (std::int64_t b = 0; b < kv_len; ++b) {
        const auto row = static_cast<std::size_t>(b) * head_dim;
        if (b < gap) {
          const auto [page, slot] = Locate(input, geometry, i, b);
          for (std::size_t d = 0; d < head_dim; ++d) {
            keys[row + d] =
                ReadElement(result.cache, cache.storage,
                            ElementOffset(cache, page, slot, 2 * h, d));
            values[row + d] =
                ReadElement(result.cache, cache.storage,
                            ElementOffset(cache, page, slot, 2 * h + 1, d));
          }
        } else {
          const auto token = static_cast<std::size_t>(q_begin + b - gap);
          for (std::size_t d = 0; d < head_dim; ++d) {
            const std::size_t src = (token * num_kv_heads + h) * head_dim + d;
            keys[row + d] = static_cast<double>(
                RoundToStorage(input.k[src], cache.storage));
            values[row + d] = static_cast<double>(
                RoundToStorage(input.v[src], cache.storage));
          }
        }
      }
      for (std::size_t g = 0; g < group; ++g) {
        const std::size_t qh = h * group + g;
        for (std::int64_t a = 0; a < q_len; ++a) {
          const std::int64_t p = gap + a;
          const auto token = static_cast<std::size_t>(q_begin + a);
          const float* q_row = &input.q[(token * num_q_heads + qh) * head_dim];
          double max_score = -std::numeric_limits<double>::infinity();
          // For the f32 rounding bound: the largest sum_d |q_d k_d| times
          // |score_scale| and the largest |score| over the visible keys.
          double max_abs_terms = 0;
          double max_abs_score = 0;
          for (std::int64_t b = 0; b < kv_len; ++b) {
            const bool visible =
                (!params.causal || b <= p) &&
                (!params.sliding_window.has_value() ||
                 p - b < static_cast<std::int64_t>(*params.sliding_window));
            const auto bi = static_cast<std::size_t>(b);
            visible_key[bi] = visible;
            if (!visible) {
              scores[bi] = -std::numeric_limits<double>::infinity();
              continue;
            }
            double dot = 0;
            double abs_terms = 0;
            for (std::size_t d = 0; d < head_dim; ++d) {
              const double term =
                  static_cast<double>(q_row[d]) * keys[bi * head_dim + d];
              dot += term;
              abs_terms += std::fabs(term);
            }
            max_abs_terms =
                std::max(max_abs_terms, abs_terms * std::fabs(score_scale));
            double score = dot * score_scale;
            if (params.soft_cap.has_value()) {
              const auto cap = static_cast<double>(*params.soft_cap);
              score = cap * std::tanh(score / cap);
            }
            scores[bi] = score;
            max_score = std::max(max_score, score);
            max_abs_score = std::max(max_abs_score, std::fabs(score));
          }
          double* out_row = &result.out[(token * num_q_heads + qh) * head_dim];
          // A NaN score (a NaN the row can see: allowed in cached data of
          // a mutated batch) or scores that all overflowed to -inf leave the
          // softmax undefined: the expected row is NaN, which callers treat
          // as "compare the cache writes only".
          const bool undefined =
              std::any_of(scores.begin(), scores.begin() + kv_len,
                          [](double score) { return std::isnan(score); });
          if (undefined ||
              !(max_score > -std::numeric_limits<double>::infinity())) {
            for (std::size_t d = 0; d < head_dim; ++d) {
              out_row[d] = std::numeric_limits<double>::quiet_NaN();
            }
            continue;
          }
          double sum = 0;
          for (std::int64_t b = 0; b < kv_len; ++b) {
            const auto bi = static_cast<std::size_t>(b);
            if (scores[bi] == -std::numeric_limits<double>::infinity()) {
              scores[bi] = 0;  // exactly 0 weight, never 0 * NaN below
            } else {
              scores[bi] = std::exp(scores[bi] - max_score);
              sum += scores[bi];
            }
          }
          double* bound_row =
              &result.f32_rounding_bound[(token * num_q_heads + qh) * head_dim];
          for (std::int64_t b = 0; b < kv_len; ++b) {
            const auto bi = static_cast<std::size_t>(b);
            if (scores[bi] == 0) continue;
            const double weight = scores[bi] / sum;
            for (std::size_t d = 0; d < head_dim; ++d) {
              out_row[d] += weight * values[bi * head_dim + d];
              bound_row[d] += weight * std::fabs(values[bi * head_dim + d]);
            }
          }
          const double weight_error =
              WeightRelativeError(head_dim, static_cast<std::size_t>(kv_len),
                                  max_abs_terms, max_abs_score);
          for (std::size_t d = 0; d < head_dim; ++d) {
            out_row[d] *= v_scale;
            bound_row[d] *= std::fabs(v_scale) * weight_error;
          }
          // A first-order bound means nothing once it reaches 1: the scores
          // are so large (e.g. sm_scale 1e30) that f32 rounding decides which
          // weights survive. Ties appear that double does not have (a soft
          // cap's tanh is exactly 1 in f32 for every argument above ~9), and
          // close scores may swap. Any softmax of the visible keys is then a
          // possible f32 result, so an element may be anywhere between the
          // visible values: the allowance is the distance to the farthest.
          if (!(weight_error < 1.0)) {
            for (std::size_t d = 0; d < head_dim; ++d) {
              double farthest = 0;
              for (std::int64_t b = 0; b < kv_len; ++b) {
                if (!visible_key[static_cast<std::size_t>(b)]) continue;
                const double value =
                    v_scale *
                    values[static_cast<std::size_t>(b) * head_dim + d];
                farthest = std::max(farthest, std::fabs(value - out_row[d]));
              }
              bound_row[d] = farthest;
            }
          }
        }
      }
    }
  }
  return result;
}

Comparison CompareOutputs(std::span<const float> actual,
                          std::span<const double> expected,
                          std::uint32_t num_q_heads, std::uint32_t head_dim,
                          double tolerance,
                          std::span<const double> rounding_bound) {
  Comparison result;
  if (!rounding_bound.empty() && rounding_bound.size() != expected.size()) {
    result.ok = false;
    result.num_bad = 1;
    result.first_bad = "rounding bound size " +
                       std::to_string(rounding_bound.size()) +
                       " != expected size " + std::to_string(expected.size());
    return result;
  }
  if (actual.size() != expected.size()) {
    result.ok = false;
    result.num_bad = 1;
    result.first_bad = "size " + std::to_string(actual.size()) +
                       " != expected size " + std::to_string(expected.size());
    return result;
  }
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const double got = static_cast<double>(actual[i]);
    const double error = std::fabs(got - expected[i]);
    const double scaled = error / (1.0 + std::fabs(expected[i]));
    const double allowed = rounding_bound.empty() ? 0.0 : rounding_bound[i];
    const bool bad =  // NaN is bad
        !(scaled <= tolerance) && !(error <= allowed);
    if (!std::isnan(error)) {
      result.max_abs_error = std::max(result.max_abs_error, error);
      result.max_scaled_error = std::max(result.max_scaled_error, scaled);
    } else {
      result.max_abs_error = std::numeric_limits<double>::infinity();
      result.max_scaled_error = std::numeric_limits<double>::infinity();
    }
    if (bad) {
      if (result.num_bad == 0) {
        const std::size_t row_floats =
            static_cast<std::size_t>(num_q_heads) * head_dim;
        result.first_bad =
            "out[" + std::to_string(i) + "] (token " +
            std::to_string(row_floats == 0 ? 0 : i / row_floats) + ", head " +
            std::to_string(head_dim == 0 ? 0 : (i / head_dim) % num_q_heads) +
            ", d " + std::to_string(head_dim == 0 ? 0 : i % head_dim) +
            ") = " + std::to_string(got) + ", expected " +
            std::to_string(expected[i]);
      }
      ++result.num_bad;
      result.ok = false;
    }
  }
  return result;
}

std::string DescribeCacheDifference(const memory::KvLayerView& cache,
                                    std::span<const std::byte> actual,
                                    std::span<const std::byte> expected) {
  if (actual.size() != expected.size()) {
    return "cache size " + std::to_string(actual.size()) +
           " != expected size " + std::to_string(expected.size());
  }
  const auto mismatch =
      std::mismatch(actual.begin(), actual.end(), expected.begin());
  if (mismatch.first == actual.end()) return "";
  const auto offset = static_cast<std::size_t>(mismatch.first - actual.begin());
  const std::size_t element_bytes = StorageBytes(cache.storage);
  const std::size_t element = offset / element_bytes;
  const std::size_t d = element % cache.head_dim;
  const std::size_t head =
      (element / cache.head_dim) % cache.num_combined_heads;
  const std::size_t token = element / cache.head_dim / cache.num_combined_heads;
  const std::size_t slot = token % cache.page_size_tokens;
  const std::size_t page = token / cache.page_size_tokens;
  std::size_t num_bad = 0;
  for (std::size_t i = offset; i < actual.size(); ++i) {
    if (actual[i] != expected[i]) ++num_bad;
  }
  return "cache differs at byte " + std::to_string(offset) + ": page " +
         std::to_string(page) + " slot " + std::to_string(slot) +
         " combined head " + std::to_string(head) + " d " + std::to_string(d) +
         " (" + std::to_string(num_bad) + " differing bytes in all)";
}

}  // namespace rpa::attention::testutil
