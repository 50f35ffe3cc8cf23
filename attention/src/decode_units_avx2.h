#pragma once

// The AVX2 steps of the decode kernel (decode_kernel.cc, which has the
// overview) on one unit, i.e. one kv head's pass over a block of up to
// kUnitTokens keys, for a chunk of 4, 2 or 1 query heads: the scores
// (ChunkScores), the online softmax (ChunkSoftmax) and the V accumulation
// (ChunkAccumulate), put together by ChunkPass.
//
// Private to attention/ and included only where RPA_ATTENTION_AVX2 is
// defined (those files are compiled with -mavx2 -mfma -mf16c).
// Thread-safety: pure functions of their arguments.

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "building_blocks.h"
#include "fast_exp.h"
#include "kernels.h"

namespace rpa::attention::internal::decode_avx2 {

using memory::StorageType;

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
    CapScores(scores, static_cast<std::size_t>(steps) * 8, soft_cap);
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

}  // namespace rpa::attention::internal::decode_avx2
