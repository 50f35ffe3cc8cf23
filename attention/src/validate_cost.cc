// SequenceCost: the SPEC section 7 cost of one validated sequence (bytes moved
// and the (query, key) pairs its mask leaves visible), summed per range by
// ValidateBatchInto (validate.cc).

#include <algorithm>
#include <cstdint>
#include <limits>

#include "validate.h"

#include "rpa/memory/storage_type.h"

namespace rpa::attention::internal {
namespace {

using memory::StorageBytes;

std::uint64_t SaturatingMul(std::uint64_t a, std::uint64_t b) {
  std::uint64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) {
    return std::numeric_limits<std::uint64_t>::max();
  }
  return product;
}

// Sum of the integers in [first, last] (0 if empty); first >= 0 and last <=
// 2^31, so (first + last) * count <= last * (last + 1) < 2^63.
std::uint64_t SumRange(std::int64_t first, std::int64_t last) {
  if (last < first) return 0;
  return static_cast<std::uint64_t>((first + last) * (last - first + 1) / 2);
}

// The (query, key) pairs of one sequence that SPEC 2 step 5 leaves visible,
// per query head: sum over queries p in [gap, kv_len) of |visible keys|.
std::uint64_t VisiblePairs(std::int64_t q_len, std::int64_t kv_len,
                           const ResolvedParams& params) {
  const std::int64_t gap = kv_len - q_len;
  const std::int64_t window = params.sliding_window;
  if (params.causal) {
    // Query p sees min(p + 1, window) keys; with x = p + 1 in (gap, kv_len].
    if (window <= 0) return SumRange(gap + 1, kv_len);
    const std::int64_t split = std::clamp(window, gap, kv_len);
    return SumRange(gap + 1, split) +
           static_cast<std::uint64_t>(window) *
               static_cast<std::uint64_t>(kv_len - split);
  }
  // Query p sees [max(0, p - window + 1), kv_len).
  const auto all =
      static_cast<std::uint64_t>(q_len) * static_cast<std::uint64_t>(kv_len);
  if (window <= 0) return all;
  const std::int64_t first_hidden = std::max<std::int64_t>(1, gap - window + 1);
  return all - SumRange(first_hidden, kv_len - window);
}

// Cached positions (< gap) that some query of the sequence sees: the union of
// the queries' visible ranges is [max(0, gap - window + 1), kv_len).
std::uint64_t VisibleCachedPositions(std::int64_t q_len, std::int64_t kv_len,
                                     const ResolvedParams& params) {
  const std::int64_t gap = kv_len - q_len;
  if (params.sliding_window <= 0) return static_cast<std::uint64_t>(gap);
  const std::int64_t first =
      std::max<std::int64_t>(0, gap - params.sliding_window + 1);
  return static_cast<std::uint64_t>(gap - first);
}

}  // namespace

BatchCost SequenceCost(const ValidatedBatch& batch, const SequenceSpan& seq) {
  const std::uint64_t q_len = static_cast<std::uint64_t>(seq.q_len);
  const std::uint64_t hq_d =
      std::uint64_t{batch.shape.num_q_heads} * batch.shape.head_dim;
  const std::uint64_t kv_d =
      2 * std::uint64_t{batch.shape.num_kv_heads} * batch.shape.head_dim;
  const std::uint64_t element_bytes = StorageBytes(batch.cache.storage);
  BatchCost cost;
  cost.q_bytes = SaturatingMul(q_len, hq_d * sizeof(float));
  cost.out_bytes = cost.q_bytes;
  cost.new_kv_read_bytes = SaturatingMul(q_len, kv_d * sizeof(float));
  cost.cache_write_bytes = SaturatingMul(q_len, kv_d * element_bytes);
  cost.cached_kv_read_bytes =
      SaturatingMul(VisibleCachedPositions(seq.q_len, seq.kv_len, batch.params),
                    kv_d * element_bytes);
  cost.visible_pairs = VisiblePairs(seq.q_len, seq.kv_len, batch.params);
  cost.flops =
      4.0 * static_cast<double>(hq_d) * static_cast<double>(cost.visible_pairs);
  return cost;
}

}  // namespace rpa::attention::internal
