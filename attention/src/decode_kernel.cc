// The decode kernel (SPEC section 6): q_len 1; an item covers a range of
// keys of one sequence for several (usually all) kv heads, each kv head's
// group_size query heads served from one pass over its K and V.
//
// Decode is memory bound: every cached K/V byte is used by group_size query
// heads only, so the kernel must stream the cache at the memory's speed.
// A cache token holds the K and V rows of every kv head next to each other
// ([2 * Hkv, D]: 4 KiB at Hkv 8, D 128, f16) and a page holds page_size
// consecutive tokens, so an item that covers all kv heads reads each page as
// one contiguous run. An item that served one kv head would read 512 bytes
// out of every 4 KiB: a new DRAM page and a broken hardware-prefetch stream
// on every row (measured 2-3x slower per byte).
//
// The AVX2 path reads K and V straight from the pages (f16 / bf16 converted
// in registers, no tile copy), in units of one kv head over a block of up to
// kUnitTokens keys (see kUnitTokens for why small); for each unit and each
// chunk of 4 (then 2, 1) query heads:
//   1. scores: each K row is loaded once per chunk and FMAed against the
//      chunk's q rows; 8 accumulators (heads x tokens; 12 for four heads
//      over a full unit) are reduced together with one hadd tree into one
//      vector (lane = head * tokens + token);
//   2. scale, soft cap, mask and the online softmax on those vectors: the
//      running max / sum live in the same lane layout, so the whole update
//      is a few vector ops and one vector exp per 8 (token, head) pairs;
//      the weights are stored token-major;
//   3. the V rows accumulated into the chunk's D-column accumulators, which
//      stay in registers across the unit's tokens (16 columns x 4 heads).
// While a block of keys is processed, the first line of each row of the
// next block is prefetched (PrefetchRowStarts).
// Positions outside [max(visible.begin, kv_begin), min(visible.end, kv_end))
// are never read: slots past kv_len may hold NaN, and
// unused page-table entries may point anywhere.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "building_blocks.h"
#include "fast_exp.h"
#include "kernels.h"

#if defined(RPA_ATTENTION_AVX2)
#include <immintrin.h>
#endif

namespace rpa::attention::internal {

namespace {

using memory::StorageType;

// Keys per block: large enough to amortise the per-block softmax work,
// small enough that a block of every kv head's K and V waits in L2.
constexpr std::int32_t kBlockTokens = 32;

struct Scratch {
  std::vector<float> tile;    // kBlockTokens x D (generic path)
  std::vector<float> scores;  // group x kBlockTokens
  std::vector<float> acc;     // group x D
  std::vector<SoftmaxRow> rows;
};

Scratch& ThreadScratch() {
  // Kernels never suspend, so a thread-local buffer is never shared by two
  // fibers at once.
  thread_local Scratch scratch;
  return scratch;
}

struct ItemView {
  const ValidatedBatch* batch = nullptr;
  const SequenceSpan* span = nullptr;
  std::uint32_t group = 0;
  std::uint32_t dim = 0;
  std::uint32_t num_heads = 0;  // kv heads of the item
  std::int32_t begin = 0;       // first key read
  std::int32_t end = 0;         // one past the last key read
  const std::int32_t* pages = nullptr;
  const float* q = nullptr;  // num_heads x group rows of D
};

ItemView MakeView(const KernelArgs& args, const WorkItem& item) {
  ItemView view;
  view.batch = args.batch;
  view.span = &args.batch->sequences[item.sequence];
  view.group = args.batch->group_size;
  view.dim = args.batch->shape.head_dim;
  view.num_heads = item.num_kv_heads;
  const std::int32_t query_pos = view.span->kv_len - 1;
  const KeyRange visible =
      VisibleKeys(query_pos, view.span->kv_len, args.batch->params);
  view.begin = std::max(visible.begin, item.kv_begin);
  view.end = std::min(visible.end, item.kv_end);
  view.pages = args.batch->page_indices.data() + view.span->page_row;
  view.q = args.q + (static_cast<std::size_t>(view.span->q_begin) *
                         args.batch->shape.num_q_heads +
                     static_cast<std::size_t>(item.kv_head) * view.group) *
                        view.dim;
  return view;
}

// Writes the item's result: normalised rows of out, or the partial slots.
// acc and rows hold num_heads x group rows.
void Finish(const KernelArgs& args, const WorkItem& item, const ItemView& view,
            const float* acc, const SoftmaxRow* rows) {
  const ValidatedBatch& batch = *view.batch;
  const std::uint32_t dim = view.dim;
  for (std::uint32_t i = 0; i < view.num_heads; ++i) {
    for (std::uint32_t g = 0; g < view.group; ++g) {
      const std::size_t row = static_cast<std::size_t>(i) * view.group + g;
      const float* head_acc = acc + row * dim;
      if (item.partial >= 0) {
        const auto slot_index =
            static_cast<std::size_t>(item.partial) +
            static_cast<std::size_t>(i) *
                static_cast<std::size_t>(item.partial_head_stride);
        float* slot = args.partials + slot_index * PartialSlotFloats(batch) +
                      static_cast<std::size_t>(g) * (dim + 2);
        slot[0] = rows[row].max;
        slot[1] = rows[row].sum;
        std::copy(head_acc, head_acc + dim, slot + 2);
      } else {
        float* out =
            args.out +
            (static_cast<std::size_t>(view.span->q_begin) *
                 batch.shape.num_q_heads +
             static_cast<std::size_t>(item.kv_head) * view.group + row) *
                dim;
        // A query always sees its own key, so sum > 0 for an unsplit item.
        const float normaliser = batch.params.v_scale / rows[row].sum;
        for (std::uint32_t d = 0; d < dim; ++d) {
          out[d] = head_acc[d] * normaliser;
        }
      }
    }
  }
}

// Any head dim, any build: tiles through LoadKvTile and the vector helpers,
// one kv head after the other.
void RunDecodeItemGeneric(const KernelArgs& args, const WorkItem& item) {
  const ItemView view = MakeView(args, item);
  const ValidatedBatch& batch = *view.batch;
  const std::uint32_t group = view.group;
  const std::uint32_t dim = view.dim;
  const std::size_t rows = static_cast<std::size_t>(view.num_heads) * group;
  Scratch& scratch = ThreadScratch();
  scratch.tile.resize(static_cast<std::size_t>(kBlockTokens) * dim);
  scratch.scores.resize(static_cast<std::size_t>(group) * kBlockTokens);
  scratch.acc.assign(rows * dim, 0.0F);
  scratch.rows.assign(rows, SoftmaxRow{});
  float* tile = scratch.tile.data();

  for (std::uint32_t i = 0; i < view.num_heads; ++i) {
    const std::uint32_t kv_head = item.kv_head + i;
    const float* q = view.q + static_cast<std::size_t>(i) * group * dim;
    float* head_acc =
        scratch.acc.data() + static_cast<std::size_t>(i) * group * dim;
    SoftmaxRow* head_rows =
        scratch.rows.data() + static_cast<std::size_t>(i) * group;
    for (std::int32_t block = view.begin; block < view.end;
         block += kBlockTokens) {
      const std::int32_t block_end = std::min(view.end, block + kBlockTokens);
      const auto n = static_cast<std::size_t>(block_end - block);
      LoadKvTile(args.cache, view.pages, kv_head, /*value=*/false, block,
                 block_end, tile, dim);
      for (std::uint32_t g = 0; g < group; ++g) {
        float* scores = scratch.scores.data() + g * kBlockTokens;
        for (std::size_t t = 0; t < n; ++t) {
          scores[t] = Dot(q + g * dim, tile + t * dim, dim);
        }
        ScaleAndCapScores(scores, n, batch.params.score_scale,
                          batch.params.soft_cap);
      }
      LoadKvTile(args.cache, view.pages, kv_head, /*value=*/true, block,
                 block_end, tile, dim);
      for (std::uint32_t g = 0; g < group; ++g) {
        float* scores = scratch.scores.data() + g * kBlockTokens;
        float* acc = head_acc + static_cast<std::size_t>(g) * dim;
        const float factor = OnlineSoftmaxUpdate(&head_rows[g], scores, n);
        if (factor != 1.0F) ScaleInPlace(acc, dim, factor);
        for (std::size_t t = 0; t < n; ++t) {
          Axpy(scores[t], tile + t * dim, acc, dim);
        }
      }
    }
  }
  Finish(args, item, view, scratch.acc.data(), scratch.rows.data());
}

#if defined(RPA_ATTENTION_AVX2)

// Keys per unit of the AVX2 path: a unit is one kv head's pass over a
// block of kUnitTokens keys, and pays the softmax bookkeeping once per chunk
// of query heads. Small on purpose: a unit reads one K and V row pair from
// each of its tokens, i.e. from kUnitTokens different 4 KiB pages at
// Hkv 8, D 128, f16, and the hardware prefetchers keep up with 8 such
// interleaved streams but not with 16 or 32 (measured, 32 x 2048 keys,
// shuffled pages, 1 thread: 8 -> 8.5 / 13.8 GB/s f16 / f32, 16 -> 7.4 /
// 10.5, 32 -> 5.7 / 9.0). Software prefetching of whole later units (1 to
// 12 units ahead, T0 / T1 / NTA, in bursts or spread one line per
// accumulation step) never helped; see PrefetchRowStarts for what does.
constexpr std::int32_t kUnitTokens = 8;

// Eight stored elements at `p` as f32.
template <StorageType kType>
inline __m256 Load8(const std::byte* p) {
  if constexpr (kType == StorageType::kF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  } else if constexpr (kType == StorageType::kF16) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    const __m256i wide = _mm256_cvtepu16_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
}

// Sums each of eight vectors: lane i of the result = sum of a[i]'s lanes.
inline __m256 ReduceEight(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]);
  const __m256 t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]);
  const __m256 t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1);
  const __m256 u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                       _mm256_permute2f128_ps(u0, u1, 0x31));
}

// Every lane becomes the max over its group of kTokens consecutive lanes
// (the lanes of one query head in the score layout below).
template <std::size_t kTokens>
inline __m256 GroupMax(__m256 v) {
  if constexpr (kTokens >= 2) {
    v = _mm256_max_ps(v, _mm256_permute_ps(v, 0xB1));
  }
  if constexpr (kTokens >= 4) {
    v = _mm256_max_ps(v, _mm256_permute_ps(v, 0x4E));
  }
  if constexpr (kTokens >= 8) {
    v = _mm256_max_ps(v, _mm256_permute2f128_ps(v, v, 0x01));
  }
  return v;
}

// Sums each of four vectors: lane i of the result = sum of a[i]'s lanes.
inline __m128 ReduceFour(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]);
  const __m256 t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 u = _mm256_hadd_ps(t0, t1);
  return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

// dots[t * 4 + h] = lane-wise partial dot products of q row h (rows `dim`
// apart) with the K row of token t, over the whole head dim.
template <StorageType kType, std::size_t kTokens>
inline void FourHeadDots(const float* q, std::uint32_t dim,
                         const std::byte* const* rows, __m256* dots) {
  constexpr std::size_t kElementBytes = memory::StorageBytes(kType);
  for (std::size_t i = 0; i < 4 * kTokens; ++i) dots[i] = _mm256_setzero_ps();
  for (std::uint32_t c = 0; c < dim; c += 8) {
    __m256 k[kTokens];
    for (std::size_t t = 0; t < kTokens; ++t) {
      k[t] = Load8<kType>(rows[t] + c * kElementBytes);
    }
    for (std::size_t h = 0; h < 4; ++h) {
      const __m256 q_chunk = _mm256_loadu_ps(q + h * dim + c);
      for (std::size_t t = 0; t < kTokens; ++t) {
        dots[t * 4 + h] = _mm256_fmadd_ps(q_chunk, k[t], dots[t * 4 + h]);
      }
    }
  }
}

// The step vector (lane h * 2 + t) of two tokens' dots in FourHeadDots'
// order (first token at `first`, second at `second`).
inline __m256 PairScores(const __m256* first, const __m256* second) {
  const __m256 ordered[8] = {first[0], second[0], first[1], second[1],
                             first[2], second[2], first[3], second[3]};
  return ReduceEight(ordered);
}

// ChunkScores for four heads and a full unit of 8 tokens. Two tokens at a
// time give 8 accumulators, exactly the FMA latency times the two FMA pipes,
// and any stall shows; three at a time give 12 (measured: 0.24 -> 0.18 ns
// per FMA on cache-resident f16 rows). The unit is done as tokens {0, 1, 2},
// {3, 4, 5}, {6, 7}; tokens 2 and 3 share step 1.
template <StorageType kType>
void FourHeadUnitScores(const float* q, std::uint32_t dim,
                        const std::byte* const* key_rows, std::size_t offset,
                        float* scores) {
  static_assert(kUnitTokens == 8);
  const std::byte* rows[kUnitTokens];
  for (std::int32_t t = 0; t < kUnitTokens; ++t) rows[t] = key_rows[t] + offset;
  __m256 dots[12];
  FourHeadDots<kType, 3>(q, dim, rows, dots);
  _mm256_store_ps(scores, PairScores(dots, dots + 4));
  const __m128 token2 = ReduceFour(dots + 8);
  FourHeadDots<kType, 3>(q, dim, rows + 3, dots);
  const __m128 token3 = ReduceFour(dots);
  _mm256_store_ps(scores + 8, _mm256_set_m128(_mm_unpackhi_ps(token2, token3),
                                              _mm_unpacklo_ps(token2, token3)));
  _mm256_store_ps(scores + 16, PairScores(dots + 4, dots + 8));
  FourHeadDots<kType, 2>(q, dim, rows + 6, dots);
  _mm256_store_ps(scores + 24, PairScores(dots, dots + 4));
}

// Scores of a chunk of kHeads query heads (q rows `dim` apart) against the
// unit's tokens (K rows at key_rows[t] + offset, the list padded to a
// multiple of 8 by repeating a valid row). Step s covers tokens
// [s * kTokens, (s + 1) * kTokens), kTokens = 8 / kHeads, and writes the
// raw scores to scores[s * 8 + h * kTokens + t].
template <StorageType kType, std::size_t kHeads>
void ChunkScores(const float* q, std::uint32_t dim,
                 const std::byte* const* key_rows, std::size_t offset,
                 std::int32_t num_tokens, float* scores) {
  if constexpr (kHeads == 4) {
    if (num_tokens == kUnitTokens) {
      return FourHeadUnitScores<kType>(q, dim, key_rows, offset, scores);
    }
  }
  constexpr std::size_t kTokens = 8 / kHeads;
  constexpr std::size_t kElementBytes = memory::StorageBytes(kType);
  const std::int32_t steps =
      (num_tokens + static_cast<std::int32_t>(kTokens) - 1) /
      static_cast<std::int32_t>(kTokens);
  for (std::int32_t s = 0; s < steps; ++s) {
    const auto t0 = static_cast<std::size_t>(s) * kTokens;
    const std::byte* rows[kTokens];
    for (std::size_t t = 0; t < kTokens; ++t) {
      rows[t] = key_rows[t0 + t] + offset;
    }
    __m256 acc[8];
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (std::uint32_t c = 0; c < dim; c += 8) {
      __m256 q_chunk[kHeads];
      for (std::size_t h = 0; h < kHeads; ++h) {
        q_chunk[h] = _mm256_loadu_ps(q + h * dim + c);
      }
      for (std::size_t t = 0; t < kTokens; ++t) {
        const __m256 k = Load8<kType>(rows[t] + c * kElementBytes);
        for (std::size_t h = 0; h < kHeads; ++h) {
          __m256& a = acc[h * kTokens + t];
          a = _mm256_fmadd_ps(q_chunk[h], k, a);
        }
      }
    }
    _mm256_store_ps(scores + static_cast<std::size_t>(s) * 8, ReduceEight(acc));
  }
}

// A vector in the score layout (lane h * kTokens + t, kTokens = 8 / kHeads)
// in token-major order (lane t * kHeads + h).
template <std::size_t kHeads>
inline __m256 TokenMajor(__m256 v) {
  if constexpr (kHeads == 4) {
    return _mm256_permutevar8x32_ps(v,
                                    _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
  } else if constexpr (kHeads == 2) {
    return _mm256_permutevar8x32_ps(v,
                                    _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  } else {
    return v;
  }
}

// The online softmax of a chunk over one unit, in the score layout of
// ChunkScores: scales (and caps) the raw scores, masks tokens >= num_tokens,
// folds them into the running state (max and sum, 8 lanes in the same
// layout: lane h * kTokens + t; every lane of a head holds its max, the
// lanes' sums add up to its sum) and replaces the scores with the weights
// p = exp(score - max), token-major: p(h, t) at scores[t * kHeads + h], so
// that the V accumulation finds a token's weights at one pointer. Returns
// the factors exp(old max - new max), lane h * kTokens for head h.
template <std::size_t kHeads>
__m256 ChunkSoftmax(float* scores, std::int32_t num_tokens, float scale,
                    float soft_cap, float* state_max, float* state_sum) {
  constexpr auto kTokens = static_cast<std::int32_t>(8 / kHeads);
  const std::int32_t steps = (num_tokens + kTokens - 1) / kTokens;
  const __m256 scale8 = _mm256_set1_ps(scale);
  for (std::int32_t s = 0; s < steps; ++s) {
    float* row = scores + static_cast<std::size_t>(s) * 8;
    _mm256_store_ps(row, _mm256_mul_ps(_mm256_load_ps(row), scale8));
  }
  if (soft_cap != 0.0F) {
    // Rare (Gemma-style models): scalar libm tanh, as ScaleAndCapScores.
    const float inverse_cap = 1.0F / soft_cap;
    for (std::int32_t i = 0; i < steps * 8; ++i) {
      scores[i] = soft_cap * std::tanh(scores[i] * inverse_cap);
    }
  }
  // Token index of each lane at step 0.
  const __m256i lane_token =
      _mm256_setr_epi32(0 % kTokens, 1 % kTokens, 2 % kTokens, 3 % kTokens,
                        4 % kTokens, 5 % kTokens, 6 % kTokens, 7 % kTokens);
  const __m256 minus_inf = _mm256_set1_ps(-__builtin_inff());
  __m256 block_max = minus_inf;
  for (std::int32_t s = 0; s < steps; ++s) {
    float* row = scores + static_cast<std::size_t>(s) * 8;
    __m256 x = _mm256_load_ps(row);
    if ((s + 1) * kTokens > num_tokens) {
      const __m256i token =
          _mm256_add_epi32(lane_token, _mm256_set1_epi32(s * kTokens));
      const __m256i valid =
          _mm256_cmpgt_epi32(_mm256_set1_epi32(num_tokens), token);
      x = _mm256_blendv_ps(minus_inf, x, _mm256_castsi256_ps(valid));
      _mm256_store_ps(row, x);
    }
    block_max = _mm256_max_ps(block_max, x);
  }
  const __m256 old_max = _mm256_loadu_ps(state_max);
  // Every unit has a visible token, so new_max is finite for finite data.
  const __m256 new_max = _mm256_max_ps(old_max, GroupMax<kTokens>(block_max));
  __m256 sum = _mm256_setzero_ps();
  for (std::int32_t s = 0; s < steps; ++s) {
    float* row = scores + static_cast<std::size_t>(s) * 8;
    const __m256 p = Exp8(_mm256_sub_ps(_mm256_load_ps(row), new_max));
    _mm256_store_ps(row, TokenMajor<kHeads>(p));
    sum = _mm256_add_ps(sum, p);
  }
  // exp(-inf - max) = 0 for the first unit; 1 where the max did not move
  // (the common case once the first units have been seen).
  const __m256 moved = _mm256_cmp_ps(old_max, new_max, _CMP_NEQ_UQ);
  const __m256 factor = _mm256_movemask_ps(moved) == 0
                            ? _mm256_set1_ps(1.0F)
                            : Exp8(_mm256_sub_ps(old_max, new_max));
  _mm256_storeu_ps(state_max, new_max);
  _mm256_storeu_ps(state_sum,
                   _mm256_fmadd_ps(_mm256_loadu_ps(state_sum), factor, sum));
  return factor;
}

// acc[h][0..dim) += sum_t p(h, t) * V_t for the chunk's kHeads heads (V rows
// at value_rows[t] + offset, weights token-major as ChunkSoftmax leaves
// them); the
// accumulators of 16 (or, at a tail of 8, 8) columns of every head stay in
// registers across the unit's tokens.
template <StorageType kType, std::size_t kHeads>
void ChunkAccumulate(const float* p, std::uint32_t dim,
                     const std::byte* const* value_rows, std::size_t offset,
                     std::int32_t num_tokens, float* acc) {
  constexpr std::size_t kElementBytes = memory::StorageBytes(kType);
  const auto weight = [p](std::size_t h, std::int32_t t) {
    return _mm256_broadcast_ss(p + static_cast<std::size_t>(t) * kHeads + h);
  };
  std::uint32_t c = 0;
  for (; c + 16 <= dim; c += 16) {
    __m256 a[2 * kHeads];
    for (std::size_t h = 0; h < kHeads; ++h) {
      float* row = acc + h * dim + c;
      a[2 * h] = _mm256_loadu_ps(row);
      a[2 * h + 1] = _mm256_loadu_ps(row + 8);
    }
    const std::size_t column_offset = offset + c * kElementBytes;
    for (std::int32_t t = 0; t < num_tokens; ++t) {
      const std::byte* v = value_rows[t] + column_offset;
      const __m256 v0 = Load8<kType>(v);
      const __m256 v1 = Load8<kType>(v + 8 * kElementBytes);
      for (std::size_t h = 0; h < kHeads; ++h) {
        const __m256 w = weight(h, t);
        a[2 * h] = _mm256_fmadd_ps(w, v0, a[2 * h]);
        a[2 * h + 1] = _mm256_fmadd_ps(w, v1, a[2 * h + 1]);
      }
    }
    for (std::size_t h = 0; h < kHeads; ++h) {
      float* row = acc + h * dim + c;
      _mm256_storeu_ps(row, a[2 * h]);
      _mm256_storeu_ps(row + 8, a[2 * h + 1]);
    }
  }
  if (c < dim) {  // dim % 16 == 8
    __m256 a[kHeads];
    for (std::size_t h = 0; h < kHeads; ++h) {
      a[h] = _mm256_loadu_ps(acc + h * dim + c);
    }
    const std::size_t column_offset = offset + c * kElementBytes;
    for (std::int32_t t = 0; t < num_tokens; ++t) {
      const __m256 v0 = Load8<kType>(value_rows[t] + column_offset);
      for (std::size_t h = 0; h < kHeads; ++h) {
        a[h] = _mm256_fmadd_ps(weight(h, t), v0, a[h]);
      }
    }
    for (std::size_t h = 0; h < kHeads; ++h) {
      _mm256_storeu_ps(acc + h * dim + c, a[h]);
    }
  }
}

// One chunk of kHeads query heads over one unit: scores, softmax, rescale of
// the accumulators when a head's max moved, V accumulation.
template <StorageType kType, std::size_t kHeads>
void ChunkPass(const float* q, std::uint32_t dim, const std::byte* const* rows,
               std::size_t key_offset, std::size_t row_bytes,
               std::int32_t num_tokens, const ResolvedParams& params,
               float* state, float* acc) {
  constexpr std::size_t kTokens = 8 / kHeads;
  alignas(32) float scores[kUnitTokens * 4];
  ChunkScores<kType, kHeads>(q, dim, rows, key_offset, num_tokens, scores);
  const __m256 factor =
      ChunkSoftmax<kHeads>(scores, num_tokens, params.score_scale,
                           params.soft_cap, state, state + 8);
  const int moved = _mm256_movemask_ps(
      _mm256_cmp_ps(factor, _mm256_set1_ps(1.0F), _CMP_NEQ_UQ));
  if (moved != 0) {
    alignas(32) float factors[8];
    _mm256_store_ps(factors, factor);
    for (std::size_t h = 0; h < kHeads; ++h) {
      const float f = factors[h * kTokens];
      if (f != 1.0F) ScaleInPlace(acc + h * dim, dim, f);
    }
  }
  ChunkAccumulate<kType, kHeads>(scores, dim, rows, key_offset + row_bytes,
                                 num_tokens, acc);
}

// The slot addresses of positions [begin, end), padded with copies of the
// last one to a multiple of 8 entries (the score kernels work on up to 8
// tokens at a time).
inline std::int32_t GatherSlots(const memory::KvLayerView& cache,
                                const std::int32_t* pages, std::int32_t begin,
                                std::int32_t end, const std::byte** slots) {
  const auto ps = static_cast<std::int32_t>(cache.page_size_tokens);
  std::int32_t count = 0;
  std::int32_t position = begin;
  while (position < end) {
    const std::int32_t page_end = std::min(end, (position / ps + 1) * ps);
    const std::byte* address =
        KvRowAddress(cache, pages, position, /*kv_head=*/0, /*value=*/false);
    for (; position < page_end; ++position) {
      slots[count++] = address;
      address += cache.token_bytes;
    }
  }
  const std::int32_t padded = (count + 7) / 8 * 8;
  for (std::int32_t i = count; i < padded; ++i) slots[i] = slots[count - 1];
  return count;
}

// Prefetches the first cache line of the item's part of each of `count`
// token rows, a block ahead of their use. Each row of a block is a 4 KiB OS
// page the kernel has not touched yet; the first access to it pays a TLB
// walk and a DRAM miss before the hardware prefetcher streams the rest of
// the page (our reading of the measurements, not a documented mechanism).
// One prefetch per row starts that a block (one pass over every kv head of
// the item) early: measured on 32 x 2048 f16 keys, 1 thread, 64.5 -> 57-59
// ns per (key, kv head), where 2, 4 or 8 lines per row gained no more and
// whole rows (1 to 12 units ahead, any hint) made it slower (they push out
// of L1 the queries and accumulators the kernel reuses).
inline void PrefetchRowStarts(const std::byte* const* rows, std::int32_t count,
                              std::size_t offset) {
  for (std::int32_t t = 0; t < count; ++t) {
    _mm_prefetch(reinterpret_cast<const char*>(rows[t] + offset), _MM_HINT_T0);
  }
}

// The item's work is a sequence of units (block of kUnitTokens keys, kv
// head), block-major.
template <StorageType kType>
void RunDecodeItemAvx2(const KernelArgs& args, const WorkItem& item) {
  const ItemView view = MakeView(args, item);
  const ValidatedBatch& batch = *view.batch;
  const std::uint32_t group = view.group;
  const std::uint32_t dim = view.dim;
  const std::uint32_t num_heads = view.num_heads;
  const std::size_t row_bytes = dim * memory::StorageBytes(kType);
  const std::size_t rows = static_cast<std::size_t>(num_heads) * group;
  // Query-head chunks of each kv head: 4, then 2, then 1 heads.
  const std::uint32_t chunks = group / 4 + (group % 4) / 2 + group % 2;
  Scratch& scratch = ThreadScratch();
  scratch.acc.assign(rows * dim, 0.0F);
  // Per (kv head, chunk): 8 lanes of max, then 8 lanes of sum.
  scratch.scores.resize(static_cast<std::size_t>(num_heads) * chunks * 16);
  for (std::size_t i = 0; i < scratch.scores.size(); i += 16) {
    std::fill_n(scratch.scores.data() + i, 8, -__builtin_inff());
    std::fill_n(scratch.scores.data() + i + 8, 8, 0.0F);
  }

  // The slots of the current block and of the next one (prefetched).
  std::array<const std::byte*, kUnitTokens + 8> slot_buffers[2];
  const std::byte** slots = slot_buffers[0].data();
  const std::byte** next_slots = slot_buffers[1].data();
  std::int32_t n =
      view.begin < view.end
          ? GatherSlots(args.cache, view.pages, view.begin,
                        std::min(view.end, view.begin + kUnitTokens), slots)
          : 0;
  const std::size_t item_offset = 2 * item.kv_head * row_bytes;
  for (std::int32_t block = view.begin; block < view.end;
       block += kUnitTokens) {
    const std::int32_t next_begin = block + kUnitTokens;
    std::int32_t next_n = 0;
    if (next_begin < view.end) {
      next_n =
          GatherSlots(args.cache, view.pages, next_begin,
                      std::min(view.end, next_begin + kUnitTokens), next_slots);
      PrefetchRowStarts(next_slots, next_n, item_offset);
    }
    for (std::uint32_t i = 0; i < num_heads; ++i) {
      const std::size_t key_offset = 2 * (item.kv_head + i) * row_bytes;
      const float* q = view.q + static_cast<std::size_t>(i) * group * dim;
      float* acc =
          scratch.acc.data() + static_cast<std::size_t>(i) * group * dim;
      float* state =
          scratch.scores.data() + static_cast<std::size_t>(i) * chunks * 16;
      std::uint32_t g = 0;
      for (; g + 4 <= group; g += 4) {
        ChunkPass<kType, 4>(q + g * dim, dim, slots, key_offset, row_bytes, n,
                            batch.params, state, acc + g * dim);
        state += 16;
      }
      if (g + 2 <= group) {
        ChunkPass<kType, 2>(q + g * dim, dim, slots, key_offset, row_bytes, n,
                            batch.params, state, acc + g * dim);
        state += 16;
        g += 2;
      }
      if (g < group) {
        ChunkPass<kType, 1>(q + g * dim, dim, slots, key_offset, row_bytes, n,
                            batch.params, state, acc + g * dim);
      }
    }
    std::swap(slots, next_slots);
    n = next_n;
  }

  // The running states as SoftmaxRows: a head's max is in each of its
  // lanes, its sum spread over them.
  scratch.rows.assign(rows, SoftmaxRow{});
  for (std::uint32_t i = 0; i < num_heads; ++i) {
    const float* state =
        scratch.scores.data() + static_cast<std::size_t>(i) * chunks * 16;
    std::uint32_t g = 0;
    while (g < group) {
      const std::uint32_t heads = group - g >= 4 ? 4 : (group - g >= 2 ? 2 : 1);
      const std::uint32_t tokens = 8 / heads;
      for (std::uint32_t h = 0; h < heads; ++h) {
        SoftmaxRow& row =
            scratch.rows[static_cast<std::size_t>(i) * group + g + h];
        row.max = state[h * tokens];
        row.sum = 0.0F;
        for (std::uint32_t t = 0; t < tokens; ++t) {
          row.sum += state[8 + h * tokens + t];
        }
      }
      g += heads;
      state += 16;
    }
  }
  Finish(args, item, view, scratch.acc.data(), scratch.rows.data());
}

#endif  // RPA_ATTENTION_AVX2

}  // namespace

void RunDecodeItem(const KernelArgs& args, const WorkItem& item) {
#if defined(RPA_ATTENTION_AVX2)
  if (args.batch->shape.head_dim % 8 == 0) {
    switch (args.cache.storage) {
      case StorageType::kF32:
        return RunDecodeItemAvx2<StorageType::kF32>(args, item);
      case StorageType::kF16:
        return RunDecodeItemAvx2<StorageType::kF16>(args, item);
      case StorageType::kBf16:
        return RunDecodeItemAvx2<StorageType::kBf16>(args, item);
    }
  }
#endif
  RunDecodeItemGeneric(args, item);
}

void MergePartials(const KernelArgs& args, const PlanData::MergeGroup& group) {
  const ValidatedBatch& batch = *args.batch;
  const SequenceSpan& span = batch.sequences[group.sequence];
  const std::uint32_t dim = batch.shape.head_dim;
  const std::size_t slot_floats = PartialSlotFloats(batch);
  for (std::uint32_t g = 0; g < batch.group_size; ++g) {
    const float* first =
        args.partials +
        static_cast<std::size_t>(group.first_partial) * slot_floats +
        static_cast<std::size_t>(g) * (dim + 2);
    float* out =
        args.out +
        ((static_cast<std::size_t>(span.q_begin) +
          static_cast<std::size_t>(span.q_len) - 1) *
             batch.shape.num_q_heads +
         static_cast<std::size_t>(group.kv_head) * batch.group_size + g) *
            dim;
    MergePartialRows(first, static_cast<std::size_t>(group.num_partials),
                     slot_floats, dim, batch.params.v_scale, out);
  }
}

}  // namespace rpa::attention::internal
