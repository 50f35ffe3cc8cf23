#pragma once

// The register-blocked micro-kernels of the flash kernel. Private to
// attention/.
//
// Layout ("rows as lanes"): the kernel's query rows (query token x head in
// the GQA group) run along the vector lanes, in panels of W = 8 * NumVecs rows
// (W = 16 normally, 8 for blocks of at most 8 rows, e.g. decode-like rows of
// a mixed batch). Every per-row buffer is panel-major:
//   q_panel[d][W]   the pre-scaled queries of W rows, transposed once per
//                   query block (so K never needs a transpose: it is
//                   broadcast);
//   s_panel[t][W]   scores, then probabilities, of key t for the W rows;
//   o_panel[d][W]   the unnormalised output accumulator.
// Both products are then the same shape, C[R][W] += A[R] x B[W] per step
// (R = the micro-tile's rows), with A broadcast from a row-major f32 tile
// straight out of the cache conversion and B one W-float line of the
// L1-resident panel:
//   QK^T: C = s_panel rows t..t+R, A = K[t + i][d], B = q_panel[d], over d;
//   PV:   C = o_panel rows d..d+R, A = V[t][d + i], B = s_panel[t], over t.
// W = 16 uses R = 6: 12 accumulators + 2 B vectors + 1 broadcast fill the 16
// ymm registers and each step issues 12 FMAs per 6 broadcasts + 2 loads,
// bound by the two FMA pipes, not the loads (Zen 3: 3 loads/cycle). W = 8
// uses R = 8: 8 accumulators, the fewest that cover the FMA latency (4 cycles
// x 2 pipes). Panels also make the online softmax vertical: the running max,
// sum and rescale factor of 8 rows are one vector, with no horizontal
// reductions.
//
// Measured against Eigen (3.4, same -mavx2 -mfma build, one Zen 3 core,
// M x 128 x Bk products of the kernel's tiles): M 256, Bk 128: QK^T 99 vs 91
// GFLOP/s, PV 96 vs 92; M 16: 100 vs 71 and 96 vs 74; M 8 (W = 8): 79 vs 57
// and 76 vs 61. Only M 4 is a tie (40 vs 39, 39 vs 45): the micro-kernels
// serve every block.

#include <cstddef>
#include <type_traits>

#include "flash_vec.h"

namespace rpa::attention::internal::flash {

template <std::size_t NumVecs>
struct PanelTraits {
  static_assert(NumVecs == 1 || NumVecs == 2);
  static constexpr std::size_t kRows = NumVecs * kLanes;  // W
#if RPA_ATTENTION_AVX2
  static constexpr std::size_t kMicroRows = NumVecs == 2 ? 6 : 8;
#else
  // Baseline x86-64 has 16 128-bit registers, a Vec8 takes two: 12 (or 8)
  // accumulators of the AVX2 shape would spill.
  static constexpr std::size_t kMicroRows = NumVecs == 2 ? 3 : 6;
#endif
};

// scores[i][0..W) = sum_d k_rows[i * k_stride + d] * q_panel[d][0..W) for
// i < NumRows.
template <std::size_t NumVecs, std::size_t NumRows>
RPA_FLASH_INLINE void QkMicroKernel(const float* k_rows, std::size_t k_stride,
                                    const float* q_panel, std::size_t head_dim,
                                    float* scores) {
  constexpr std::size_t kWidth = PanelTraits<NumVecs>::kRows;
  Vec8 acc[NumRows][NumVecs];
#pragma GCC unroll 8
  for (std::size_t i = 0; i < NumRows; ++i) {
#pragma GCC unroll 2
    for (std::size_t j = 0; j < NumVecs; ++j) acc[i][j] = Zero();
  }
#pragma GCC unroll 2
  for (std::size_t d = 0; d < head_dim; ++d) {
    Vec8 q[NumVecs];
#pragma GCC unroll 2
    for (std::size_t j = 0; j < NumVecs; ++j) {
      q[j] = Load(q_panel + d * kWidth + j * kLanes);
    }
#pragma GCC unroll 8
    for (std::size_t i = 0; i < NumRows; ++i) {
      const Vec8 k = Broadcast(k_rows + i * k_stride + d);
#pragma GCC unroll 2
      for (std::size_t j = 0; j < NumVecs; ++j)
        acc[i][j] = Fma(k, q[j], acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (std::size_t i = 0; i < NumRows; ++i) {
#pragma GCC unroll 2
    for (std::size_t j = 0; j < NumVecs; ++j) {
      Store(scores + i * kWidth + j * kLanes, acc[i][j]);
    }
  }
}

// o_panel[i][0..W) = o_panel[i][0..W) * alpha[0..W)
//                  + sum_t v_cols[t * v_stride + i] * p_panel[t][0..W)
// for i < NumRows: the online softmax's rescale of the accumulator is fused
// into its load.
template <std::size_t NumVecs, std::size_t NumRows>
RPA_FLASH_INLINE void PvMicroKernel(const float* v_cols, std::size_t v_stride,
                                    const float* p_panel, std::size_t num_keys,
                                    const float* alpha, float* o_panel) {
  constexpr std::size_t kWidth = PanelTraits<NumVecs>::kRows;
  Vec8 acc[NumRows][NumVecs];
#pragma GCC unroll 8
  for (std::size_t i = 0; i < NumRows; ++i) {
#pragma GCC unroll 2
    for (std::size_t j = 0; j < NumVecs; ++j) {
      acc[i][j] = Mul(Load(o_panel + i * kWidth + j * kLanes),
                      Load(alpha + j * kLanes));
    }
  }
#pragma GCC unroll 2
  for (std::size_t t = 0; t < num_keys; ++t) {
    Vec8 p[NumVecs];
#pragma GCC unroll 2
    for (std::size_t j = 0; j < NumVecs; ++j) {
      p[j] = Load(p_panel + t * kWidth + j * kLanes);
    }
#pragma GCC unroll 8
    for (std::size_t i = 0; i < NumRows; ++i) {
      const Vec8 v = Broadcast(v_cols + t * v_stride + i);
#pragma GCC unroll 2
      for (std::size_t j = 0; j < NumVecs; ++j)
        acc[i][j] = Fma(v, p[j], acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (std::size_t i = 0; i < NumRows; ++i) {
#pragma GCC unroll 2
    for (std::size_t j = 0; j < NumVecs; ++j) {
      Store(o_panel + i * kWidth + j * kLanes, acc[i][j]);
    }
  }
}

// Calls fn(offset, std::integral_constant<rows>) over [0, n) in micro-tiles
// of MicroRows rows. With MicroRows = 6 the remainder becomes tiles of 3 to 5
// rows whenever n >= 3 (7 = 4 + 3, 8 = 4 + 4): a 1- or 2-row tile keeps only 2
// or 4 accumulator chains, too few to cover the FMA latency, and would run at
// half speed (D = 128 = 6 x 20 + 4 + 4).
template <std::size_t MicroRows, typename Fn>
RPA_FLASH_INLINE void ForEachMicroTile(std::size_t n, Fn&& fn) {
  std::size_t full = n / MicroRows;
  std::size_t rest = n % MicroRows;
  if (MicroRows == 6 && rest != 0 && rest < 3 && full > 0) {
    --full;
    rest += MicroRows;
  }
  std::size_t offset = 0;
  for (std::size_t i = 0; i < full; ++i, offset += MicroRows) {
    fn(offset, std::integral_constant<std::size_t, MicroRows>{});
  }
  if (rest > MicroRows) {  // 7 or 8 with MicroRows = 6
    fn(offset, std::integral_constant<std::size_t, 4>{});
    offset += 4;
    rest -= 4;
  }
  switch (rest) {
    case 7:
      fn(offset, std::integral_constant<std::size_t, 7>{});
      break;
    case 6:
      fn(offset, std::integral_constant<std::size_t, 6>{});
      break;
    case 5:
      fn(offset, std::integral_constant<std::size_t, 5>{});
      break;
    case 4:
      fn(offset, std::integral_constant<std::size_t, 4>{});
      break;
    case 3:
      fn(offset, std::integral_constant<std::size_t, 3>{});
      break;
    case 2:
      fn(offset, std::integral_constant<std::size_t, 2>{});
      break;
    case 1:
      fn(offset, std::integral_constant<std::size_t, 1>{});
      break;
    default:
      break;
  }
}

// Scores of keys [0, num_keys) of a K tile (rows k_stride floats apart) for
// one panel: scores[t][W].
template <std::size_t NumVecs>
void QkPanel(const float* k_tile, std::size_t k_stride, std::size_t num_keys,
             const float* q_panel, std::size_t head_dim, float* scores) {
  using Traits = PanelTraits<NumVecs>;
  ForEachMicroTile<Traits::kMicroRows>(num_keys, [&](std::size_t t, auto rows) {
    QkMicroKernel<NumVecs, decltype(rows)::value>(k_tile + t * k_stride,
                                                  k_stride, q_panel, head_dim,
                                                  scores + t * Traits::kRows);
  });
}

// o_panel[d][W] = o_panel[d][W] * alpha + sum over keys [0, num_keys) of
// V tile rows (v_stride floats apart) times p_panel[t][W].
template <std::size_t NumVecs>
void PvPanel(const float* v_tile, std::size_t v_stride, std::size_t num_keys,
             const float* p_panel, std::size_t head_dim, const float* alpha,
             float* o_panel) {
  using Traits = PanelTraits<NumVecs>;
  ForEachMicroTile<Traits::kMicroRows>(head_dim, [&](std::size_t d, auto rows) {
    PvMicroKernel<NumVecs, decltype(rows)::value>(v_tile + d, v_stride, p_panel,
                                                  num_keys, alpha,
                                                  o_panel + d * Traits::kRows);
  });
}

}  // namespace rpa::attention::internal::flash
