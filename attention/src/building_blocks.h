#pragma once

// The tested building blocks every kernel is made of (SPEC section 2):
// the visible key range of a query, tile loads from the paged cache with
// type conversion, score transforms, the online softmax and the merge of
// partial softmax states. Private to attention/; tested directly by
// tests/attention/building_blocks_test.cc.

#include <cstddef>
#include <cstdint>

#include "plan_data.h"

#include "rpa/memory/kv_cache.h"

namespace rpa::attention::internal {

// Keys visible to a query at absolute position `query_pos` are exactly
// [begin, end) (SPEC 2 step 5; the window and causal bound make it
// contiguous). Never empty for a validated batch: the query's own position
// is always visible.
struct KeyRange {
  std::int32_t begin = 0;
  std::int32_t end = 0;
};
inline KeyRange VisibleKeys(std::int32_t query_pos, std::int32_t kv_len,
                            const ResolvedParams& params) {
  KeyRange range{0, kv_len};
  if (params.causal && query_pos + 1 < range.end) range.end = query_pos + 1;
  if (params.sliding_window > 0 && query_pos - params.sliding_window + 1 > 0) {
    range.begin = query_pos - params.sliding_window + 1;
  }
  return range;
}

// Address of kv head `kv_head`'s K (value = false) or V (value = true) row of
// token `position` of a sequence, through its page-table row `pages`.
inline const std::byte* KvRowAddress(const memory::KvLayerView& cache,
                                     const std::int32_t* pages,
                                     std::int32_t position,
                                     std::uint32_t kv_head, bool value) {
  const auto ps = static_cast<std::int32_t>(cache.page_size_tokens);
  const std::byte* slot =
      cache.data +
      (static_cast<std::size_t>(pages[position / ps]) * cache.page_size_tokens +
       static_cast<std::size_t>(position % ps)) *
          cache.token_bytes;
  const std::size_t head =
      2 * static_cast<std::size_t>(kv_head) + (value ? 1 : 0);
  return slot + head * cache.head_dim * memory::StorageBytes(cache.storage);
}

// Loads K (or V) rows of positions [begin, end) of one kv head into a dense
// f32 tile, row r = position begin + r, `row_stride` floats apart (>= D).
void LoadKvTile(const memory::KvLayerView& cache, const std::int32_t* pages,
                std::uint32_t kv_head, bool value, std::int32_t begin,
                std::int32_t end, float* tile, std::size_t row_stride);

// scores[i] = cap(scores[i] * scale) for i < n; cap(x) = soft_cap *
// tanh(x / soft_cap), skipped when soft_cap == 0. Entries that are -inf
// (already masked) stay -inf.
void ScaleAndCapScores(float* scores, std::size_t n, float scale,
                       float soft_cap);

// The soft cap alone (SPEC section 2, step 4) for i < n: scores[i] =
// soft_cap * tanh(scores[i] / soft_cap), soft_cap != 0; -inf stays -inf.
// Eight lanes at a time through fast_exp.h's Tanh8 (relative error ~2e-7)
// in the AVX2 build; libm tanh for the tail and in the portable build. Every
// kernel's soft cap goes through here.
void CapScores(float* scores, std::size_t n, float soft_cap);

// exp(x) for i < n in place; relative error <= 2e-7 for x in [-87, 88],
// exactly 0 for x = -inf.
void ExpInPlace(float* values, std::size_t n);

// One row of an online softmax (flash attention): the running max and sum of
// exp(score - max) over the keys seen so far.
struct SoftmaxRow {
  float max = -__builtin_inff();
  float sum = 0.0F;
};

// Folds a block of n scores of one row into `row`: replaces scores[i] with
// p_i = exp(scores[i] - new_max) (masked entries must be -inf and give 0),
// adds their sum, and returns the factor exp(old_max - new_max) by which the
// caller must rescale its accumulator (0 when the row had seen nothing).
float OnlineSoftmaxUpdate(SoftmaxRow* row, float* scores, std::size_t n);

// A partial result of a KV split for one query row: its SoftmaxRow and the
// unnormalised accumulator sum_b exp(s_b - max) * V_b (D floats). Stored in a
// partial slot as {max, sum, acc[0..D)}.
// Merges `count` partial rows (each `stride` floats apart, layout above) into
// out[0..D): out = (sum_j e^(m_j - M) acc_j) / (sum_j e^(m_j - M) l_j) *
// v_scale.
void MergePartialRows(const float* partials, std::size_t count,
                      std::size_t stride, std::uint32_t head_dim, float v_scale,
                      float* out);

// Small vector helpers (added for the decode kernel; C: free to use them in
// the flash kernel). AVX2/FMA when built for it, plain loops otherwise.
// sum_i a[i] * b[i].
float Dot(const float* a, const float* b, std::size_t n);
// y[i] += alpha * x[i].
void Axpy(float alpha, const float* x, float* y, std::size_t n);
// values[i] *= factor.
void ScaleInPlace(float* values, std::size_t n, float factor);

}  // namespace rpa::attention::internal
