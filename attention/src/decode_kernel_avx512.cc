// The AVX-512 decode kernel: what decode_kernel.cc's AVX2 path computes,
// reorganised so that the cache reads overlap the arithmetic
// (bench/HISTORY.md, "Session 14"). Per block of 16 keys:
//   (A) scores, the token rows read front to back: two tokens x eight query
//       rows (two kv heads x four query heads at group 4) in 16 zmm
//       accumulators over the head dim, reduced by one transpose tree;
//   (B) the online softmax with the item's query rows as lanes (vertical max,
//       exp and sum over the block's tokens, no horizontal work);
//   (C) V accumulation per kv head and column chunk, the rows' accumulators
//       in registers across the block's tokens, the softmax rescale fused
//       into their load.
// While a block is computed, the next block's rows are prefetched front to
// back, a few lines per inner step of (A) and (C) (as many as cover the
// block), and the first line of each of its rows somewhat earlier; the
// rows go through (A)-(C) in passes of 16. On the Zen 5 host (1 thread,
// f16, ns per (key, kv head), runs alternated, session 15): 33.7-35.9 cold
// (32 x 2048 keys) against the session 14 version's 40.2-43.1 and the AVX2
// kernel's 58-64, in a minute when memory was slow; 16.4 warm (1 x 128
// keys, in L2) (bench/HISTORY.md).
//
// Only the kernel functions are AVX-512 code (a target attribute, not
// file-wide flags): the inline helpers this file shares with the rest of the
// module stay AVX2 code, so no out-of-line copy of them can carry AVX-512
// instructions into a CPU without it. Positions outside the item's visible
// range are never read (slots past kv_len may hold NaN).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "building_blocks.h"
#include "decode_item.h"
#include "fast_exp.h"
#include "kernels.h"

#if defined(RPA_ATTENTION_AVX2) && defined(__x86_64__)
#define RPA_ATTENTION_AVX512_DECODE 1
#include <immintrin.h>
#endif

namespace rpa::attention::internal {

namespace {

using memory::StorageType;

// Largest query-row count of an item (lanes of the score block).
constexpr std::uint32_t kMaxItemRows = 256;

bool GroupSupported(std::uint32_t group) {
  return group == 1 || group == 2 || group == 4 || group == 8 || group == 16;
}

}  // namespace

bool Avx512DecodeSupports(const ValidatedBatch& batch,
                          std::uint32_t num_kv_heads) {
  const std::uint32_t rows = num_kv_heads * batch.group_size;
  return batch.shape.head_dim % 16 == 0 && GroupSupported(batch.group_size) &&
         rows % 8 == 0 && rows <= kMaxItemRows;
}

#if defined(RPA_ATTENTION_AVX512_DECODE)

#define RPA_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))

bool CpuRunsAvx512Decode() {
  static const bool kRuns =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return kRuns;
}

namespace {

constexpr std::int32_t kBlockTokens = 16;

template <StorageType kType>
RPA_AVX512 inline __m512 Load16(const std::byte* p) {
  if constexpr (kType == StorageType::kF32) {
    return _mm512_loadu_ps(p);
  } else if constexpr (kType == StorageType::kF16) {
    return _mm512_cvtph_ps(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else {
    const __m512i wide = _mm512_cvtepu16_epi32(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
}

// exp(x) for x <= 0 (scores minus their running max): 2^(x log2 e) with a
// degree-6 polynomial on the fraction (relative error ~2e-7) and scalef;
// exactly 0 for x = -inf and below 2^-126.
RPA_AVX512 inline __m512 Exp16(__m512 x) {
  const __mmask16 finite =
      _mm512_cmp_ps_mask(x, _mm512_set1_ps(-__builtin_inff()), _CMP_NEQ_UQ);
  __m512 y = _mm512_mul_ps(x, _mm512_set1_ps(kLog2e));
  y = _mm512_max_ps(y, _mm512_set1_ps(-126.0F));
  const __m512 n =
      _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(y, n);  // [-0.5, 0.5]
  __m512 p = _mm512_set1_ps(kExp2Poly[0]);
  for (std::size_t i = 1; i < 7; ++i) {
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[i]));
  }
  return _mm512_maskz_mov_ps(finite, _mm512_scalef_ps(p, n));
}

// v[0..16) -> one vector whose lane j is the sum of v[j]'s lanes.
RPA_AVX512 inline __m512 Reduce16(const __m512* v) {
  __m512 quarters[4];  // lanes of v[4g .. 4g + 3], partial per 128-bit quarter
  for (int g = 0; g < 4; ++g) {
    const __m512* w = v + 4 * g;
    const __m512 a01 = _mm512_add_ps(_mm512_unpacklo_ps(w[0], w[1]),
                                     _mm512_unpackhi_ps(w[0], w[1]));
    const __m512 a23 = _mm512_add_ps(_mm512_unpacklo_ps(w[2], w[3]),
                                     _mm512_unpackhi_ps(w[2], w[3]));
    const __m512d lo =
        _mm512_unpacklo_pd(_mm512_castps_pd(a01), _mm512_castps_pd(a23));
    const __m512d hi =
        _mm512_unpackhi_pd(_mm512_castps_pd(a01), _mm512_castps_pd(a23));
    quarters[g] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
  }
  const __m512 d01 =
      _mm512_add_ps(_mm512_shuffle_f32x4(quarters[0], quarters[1], 0x44),
                    _mm512_shuffle_f32x4(quarters[0], quarters[1], 0xEE));
  const __m512 d23 =
      _mm512_add_ps(_mm512_shuffle_f32x4(quarters[2], quarters[3], 0x44),
                    _mm512_shuffle_f32x4(quarters[2], quarters[3], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(d01, d23, 0x88),
                       _mm512_shuffle_f32x4(d01, d23, 0xDD));
}

// Walks the lines of the next block's rows (the item's part of each) front
// to back, kLines per step. A step is kLines prefetches, an add and a
// compare: the position is an address, not a (row, line) pair, and once past
// the last row the cursor re-touches that row's last lines (cache hits)
// instead of testing for the end. The last step of a row may touch up to
// kLines - 1 lines past the item's part; a prefetch never faults and loads
// nothing the kernel reads.
template <std::size_t kLines>
struct PrefetchCursor {
  const std::byte* const* next_rows = nullptr;  // rows not started yet
  std::int32_t rows_left = 0;
  std::uintptr_t line = 0;
  std::uintptr_t row_end = 0;
  std::size_t row_bytes = 0;

  void Start(const std::byte* const* rows, std::int32_t count,
             std::size_t bytes) {
    row_bytes = bytes;
    next_rows = rows;
    rows_left = count;
    NextRow();
  }

  void Step() {
    for (std::size_t k = 0; k < kLines; ++k) {
      _mm_prefetch(reinterpret_cast<const char*>(line + 64 * k), _MM_HINT_T0);
    }
    line += 64 * kLines;
    if (line >= row_end) NextRow();
  }

  void NextRow() {
    if (rows_left > 0) {
      line = reinterpret_cast<std::uintptr_t>(*next_rows++);
      row_end = line + row_bytes;
      --rows_left;
    } else {
      line -= 64 * kLines;
    }
  }
};

struct ItemGeometry {
  std::uint32_t num_heads = 0;
  std::uint32_t dim = 0;
  std::size_t row_bytes = 0;   // one K (or V) row
  std::size_t item_lines = 0;  // cache lines of the item's part of a token
  float scale = 1.0F;
  float soft_cap = 0.0F;
};

// The soft cap (building_blocks.h) on the scores s[0, tokens) x [begin,
// end). Out of line and called with bounds recomputed from the pass's live
// values: inlined, or with bounds the loops above had to keep alive, it cost
// the hot loops registers (the cold f16 decode ran ~10 % slower).
[[gnu::noinline]] void CapScoreRows(float cap, std::int32_t tokens,
                                    std::uint32_t begin, std::uint32_t end,
                                    float (*s)[kMaxItemRows]) {
  for (std::int32_t t = 0; t < tokens; ++t) {
    CapScores(&s[t][begin], end - begin, cap);
  }
}

// (C) for kRows query rows of one kv head (from row r0) and kCols zmm
// columns from column c: acc = acc * factor + sum_t p(t, row) V_t.
template <StorageType kType, std::uint32_t kRows, std::uint32_t kCols,
          typename Cursor>
RPA_AVX512 void AccumulateColumns(const ItemGeometry& g,
                                  const std::byte* const* block_rows,
                                  std::int32_t num_tokens,
                                  std::size_t value_offset,
                                  const float (*p)[kMaxItemRows],
                                  const float* factor, std::uint32_t r0,
                                  std::uint32_t c, Cursor* cursor, float* acc) {
  constexpr std::size_t kEb = memory::StorageBytes(kType);
  __m512 a[kRows][kCols];
  for (std::uint32_t r = 0; r < kRows; ++r) {
    const __m512 f = _mm512_set1_ps(factor[r0 + r]);
    const float* row = acc + static_cast<std::size_t>(r0 + r) * g.dim + c;
    for (std::uint32_t j = 0; j < kCols; ++j) {
      a[r][j] = _mm512_mul_ps(_mm512_loadu_ps(row + 16 * j), f);
    }
  }
  for (std::int32_t t = 0; t < num_tokens; ++t) {
    cursor->Step();
    const std::byte* v = block_rows[t] + value_offset + c * kEb;
    __m512 values[kCols];
    for (std::uint32_t j = 0; j < kCols; ++j)
      values[j] = Load16<kType>(v + 16 * j * kEb);
    for (std::uint32_t r = 0; r < kRows; ++r) {
      const __m512 w = _mm512_set1_ps(p[t][r0 + r]);
      for (std::uint32_t j = 0; j < kCols; ++j) {
        a[r][j] = _mm512_fmadd_ps(w, values[j], a[r][j]);
      }
    }
  }
  for (std::uint32_t r = 0; r < kRows; ++r) {
    float* row = acc + static_cast<std::size_t>(r0 + r) * g.dim + c;
    for (std::uint32_t j = 0; j < kCols; ++j)
      _mm512_storeu_ps(row + 16 * j, a[r][j]);
  }
}

// Rows (query heads) num_heads * kGroup, q rows dim apart, row r served by
// kv head r / kGroup; slots[k]: the item's part of key k's token row (kv
// head i's K at + 2 i row_bytes, V at + (2 i + 1) row_bytes). acc: rows x
// dim unnormalised; max and sum: the rows' running softmax states, `lanes`
// (rows rounded up to 16) long. The caller starts them empty (acc 0, max
// -inf, sum 0): an item without keys keeps that state.
template <StorageType kType, std::uint32_t kGroup>
RPA_AVX512 void DecodeRows(const float* q, const ItemGeometry& g,
                           const std::byte* const* slots, std::int32_t count,
                           float* acc, float* max, float* sum) {
  static_assert(kGroup % 8 == 0 || 8 % kGroup == 0);
  constexpr std::size_t kEb = memory::StorageBytes(kType);
  constexpr std::uint32_t kHeadsPerTile = kGroup >= 8 ? 1 : 8 / kGroup;
  constexpr std::uint32_t kCols = kGroup <= 4 ? 4 : 2;
  constexpr std::uint32_t kRowsPerPass = kGroup <= 8 ? kGroup : 8;
  // Lines per step that spread the next block's lines over this block's
  // steps of (A) and (C): per token, kv head and 32 columns, (A) takes
  // kGroup / 8 steps and (C) 2 kGroup / (kRowsPerPass kCols), for kEb lines.
  constexpr std::size_t kLinesPerStep =
      (kEb * 8 * kCols * kRowsPerPass + kGroup * (kCols * kRowsPerPass + 16) -
       1) /
      (kGroup * (kCols * kRowsPerPass + 16));
  const std::uint32_t rows = g.num_heads * kGroup;
  const std::uint32_t lanes = (rows + 15) / 16 * 16;
  const std::uint32_t dim = g.dim;
  const std::size_t rb = g.row_bytes;
  alignas(64) float s[kBlockTokens][kMaxItemRows];
  alignas(64) float factor[kMaxItemRows];
  for (auto& row : s) std::fill(row + rows, row + lanes, 0.0F);
  for (std::int32_t b0 = 0; b0 < count; b0 += kBlockTokens) {
    const std::int32_t nb = std::min(kBlockTokens, count - b0);
    const std::byte* block_rows[kBlockTokens + 1];
    for (std::int32_t t = 0; t < nb; ++t) block_rows[t] = slots[b0 + t];
    block_rows[nb] = block_rows[nb - 1];  // an odd tail's pair partner
    PrefetchCursor<kLinesPerStep> cursor;
    if (b0 + kBlockTokens < count) {
      cursor.Start(slots + b0 + kBlockTokens,
                   std::min(kBlockTokens, count - b0 - kBlockTokens),
                   g.item_lines * 64);
    } else {
      cursor.Start(block_rows, 1, g.item_lines * 64);  // the last block: hits
    }
    // The block's rows in passes of 16 (as many kv heads as that takes),
    // each through (A), (B) and (C) before the next: the queries and
    // accumulators in use (8 KiB each at head dim 128, instead of 16) leave
    // more of the L1 to the rows streaming through. Zen 5, 32 x 2048 keys,
    // against one pass of all 32 rows: 10-12 % less time cold for f16 on 1
    // and 2 threads, 5 % for f32, 4 % more warm (bench/HISTORY.md, "Session
    // 15"). Row counts that are not a multiple of 16 take one pass, their
    // lanes padded.
    const std::uint32_t pass_heads =
        rows % 16 == 0 && kGroup <= 16 ? 16 / kGroup : g.num_heads;
    for (std::uint32_t h0 = 0; h0 < g.num_heads; h0 += pass_heads) {
      const std::uint32_t row_begin = h0 * kGroup;
      const std::uint32_t row_end = (h0 + pass_heads) * kGroup;
      const std::uint32_t lane_end =
          pass_heads == g.num_heads ? lanes : row_end;
      // (A) scores, two tokens at a time, the rows in tiles of 8. Each pair
      // first touches the first lines of the rows a block ahead (again in
      // each pass; once per block measured no faster).
      for (std::int32_t t = 0; t < nb; t += 2) {
        for (std::int32_t k = b0 + t + kBlockTokens;
             k < std::min(count, b0 + t + kBlockTokens + 2); ++k) {
          _mm_prefetch(reinterpret_cast<const char*>(slots[k]), _MM_HINT_T0);
        }
        for (std::uint32_t r0 = row_begin; r0 < row_end; r0 += 8) {
          const std::uint32_t head0 = r0 / kGroup;
          __m512 a[16];
          for (auto& x : a) x = _mm512_setzero_ps();
          for (std::uint32_t c = 0; c < dim; c += 16) {
            cursor.Step();
            __m512 k[2][kHeadsPerTile];
            for (std::uint32_t tt = 0; tt < 2; ++tt) {
              for (std::uint32_t kh = 0; kh < kHeadsPerTile; ++kh) {
                k[tt][kh] =
                    Load16<kType>(block_rows[static_cast<std::size_t>(t) + tt] +
                                  2 * (head0 + kh) * rb + c * kEb);
              }
            }
            for (std::uint32_t j = 0; j < 8; ++j) {
              const __m512 qv = _mm512_loadu_ps(
                  q + static_cast<std::size_t>(r0 + j) * dim + c);
              const std::uint32_t kh = kGroup >= 8 ? 0 : j / kGroup;
              for (std::uint32_t tt = 0; tt < 2; ++tt) {
                a[tt * 8 + j] = _mm512_fmadd_ps(qv, k[tt][kh], a[tt * 8 + j]);
              }
            }
          }
          const __m512 scores =
              _mm512_mul_ps(Reduce16(a), _mm512_set1_ps(g.scale));
          _mm256_store_ps(&s[t][r0], _mm512_castps512_ps256(scores));
          _mm256_store_ps(&s[t + 1][r0], _mm512_extractf32x8_ps(scores, 1));
        }
      }
      if (g.soft_cap != 0.0F) {
        CapScoreRows(g.soft_cap, nb, h0 * kGroup, (h0 + pass_heads) * kGroup,
                     s);
      }
      // (B) the online softmax, rows as lanes.
      for (std::uint32_t j = row_begin; j < lane_end; j += 16) {
        __m512 block_max = _mm512_load_ps(&s[0][j]);
        for (std::int32_t t = 1; t < nb; ++t) {
          block_max = _mm512_max_ps(block_max, _mm512_load_ps(&s[t][j]));
        }
        const __m512 old_max = _mm512_loadu_ps(max + j);
        const __m512 new_max = _mm512_max_ps(old_max, block_max);
        const __m512 f = Exp16(_mm512_sub_ps(old_max, new_max));
        __m512 block_sum = _mm512_setzero_ps();
        for (std::int32_t t = 0; t < nb; ++t) {
          const __m512 p =
              Exp16(_mm512_sub_ps(_mm512_load_ps(&s[t][j]), new_max));
          _mm512_store_ps(&s[t][j], p);
          block_sum = _mm512_add_ps(block_sum, p);
        }
        _mm512_storeu_ps(max + j, new_max);
        _mm512_storeu_ps(
            sum + j, _mm512_fmadd_ps(_mm512_loadu_ps(sum + j), f, block_sum));
        _mm512_store_ps(factor + j, f);
      }
      // (C) V, per kv head and chunk of columns.
      for (std::uint32_t i = h0; i < h0 + pass_heads; ++i) {
        const std::size_t value_offset = (2 * i + 1) * rb;
        for (std::uint32_t g0 = 0; g0 < kGroup; g0 += kRowsPerPass) {
          const std::uint32_t r0 = i * kGroup + g0;
          std::uint32_t c = 0;
          for (; c + 16 * kCols <= dim; c += 16 * kCols) {
            AccumulateColumns<kType, kRowsPerPass, kCols>(
                g, block_rows, nb, value_offset, s, factor, r0, c, &cursor,
                acc);
          }
          for (; c < dim; c += 16) {
            AccumulateColumns<kType, kRowsPerPass, 1>(g, block_rows, nb,
                                                      value_offset, s, factor,
                                                      r0, c, &cursor, acc);
          }
        }
      }
    }
  }
}

template <StorageType kType>
void DecodeRowsForGroup(std::uint32_t group, const float* q,
                        const ItemGeometry& g, const std::byte* const* slots,
                        std::int32_t count, float* acc, float* max,
                        float* sum) {
  switch (group) {
    case 1:
      return DecodeRows<kType, 1>(q, g, slots, count, acc, max, sum);
    case 2:
      return DecodeRows<kType, 2>(q, g, slots, count, acc, max, sum);
    case 4:
      return DecodeRows<kType, 4>(q, g, slots, count, acc, max, sum);
    case 8:
      return DecodeRows<kType, 8>(q, g, slots, count, acc, max, sum);
    default:
      return DecodeRows<kType, 16>(q, g, slots, count, acc, max, sum);
  }
}

struct Avx512Scratch {
  std::vector<const std::byte*> slots;
  std::vector<float> acc;
  std::vector<float> max;
  std::vector<float> sum;
  std::vector<SoftmaxRow> rows;
};

Avx512Scratch& ThreadScratch() {
  // Kernels never suspend, so a thread-local buffer is never shared by two
  // fibers at once.
  thread_local Avx512Scratch scratch;
  return scratch;
}

}  // namespace

bool RunDecodeItemAvx512(const KernelArgs& args, const WorkItem& item) {
  const ValidatedBatch& batch = *args.batch;
  if (!CpuRunsAvx512Decode() ||
      !Avx512DecodeSupports(batch, item.num_kv_heads)) {
    return false;
  }
  const DecodeItemView view = MakeDecodeItemView(args, item);
  const std::uint32_t rows = view.num_heads * view.group;
  const std::uint32_t lanes = (rows + 15) / 16 * 16;
  Avx512Scratch& scratch = ThreadScratch();
  scratch.acc.assign(static_cast<std::size_t>(rows) * view.dim, 0.0F);
  scratch.max.assign(lanes, -__builtin_inff());
  scratch.sum.assign(lanes, 0.0F);
  const std::int32_t count = std::max(0, view.end - view.begin);
  if (count > 0) {
    scratch.slots.resize(static_cast<std::size_t>(count) + 8);
    GatherDecodeSlots(args.cache, view.pages, view.begin, view.end,
                      scratch.slots.data());
    ItemGeometry g;
    g.num_heads = view.num_heads;
    g.dim = view.dim;
    g.row_bytes = view.dim * memory::StorageBytes(args.cache.storage);
    g.item_lines = (2 * view.num_heads * g.row_bytes + 63) / 64;
    g.scale = batch.params.score_scale;
    g.soft_cap = batch.params.soft_cap;
    const std::size_t item_offset = 2 * item.kv_head * g.row_bytes;
    for (std::int32_t k = 0; k < count; ++k) {
      scratch.slots[static_cast<std::size_t>(k)] += item_offset;
    }
    float* acc = scratch.acc.data();
    switch (args.cache.storage) {
      case StorageType::kF32:
        DecodeRowsForGroup<StorageType::kF32>(
            view.group, view.q, g, scratch.slots.data(), count, acc,
            scratch.max.data(), scratch.sum.data());
        break;
      case StorageType::kF16:
        DecodeRowsForGroup<StorageType::kF16>(
            view.group, view.q, g, scratch.slots.data(), count, acc,
            scratch.max.data(), scratch.sum.data());
        break;
      case StorageType::kBf16:
        DecodeRowsForGroup<StorageType::kBf16>(
            view.group, view.q, g, scratch.slots.data(), count, acc,
            scratch.max.data(), scratch.sum.data());
        break;
    }
  }
  scratch.rows.resize(rows);
  for (std::uint32_t r = 0; r < rows; ++r) {
    scratch.rows[r] = SoftmaxRow{scratch.max[r], scratch.sum[r]};
  }
  FinishDecodeItem(args, item, view, scratch.acc.data(), scratch.rows.data());
  return true;
}

#else  // !RPA_ATTENTION_AVX512_DECODE

bool CpuRunsAvx512Decode() { return false; }

bool RunDecodeItemAvx512(const KernelArgs& /*args*/, const WorkItem& /*item*/) {
  return false;
}

#endif

}  // namespace rpa::attention::internal
