#pragma once

// An 8-lane f32 vector for the flash kernel: AVX2 + FMA when the module is
// built for them (RPA_ATTENTION_AVX2), plain C++ arrays otherwise (the
// portable build; the compiler vectorises what it can). The micro-kernels and
// the online softmax are written once against this interface, so both builds
// run the same algorithm and differ only in speed and in the last ulp of exp2
// (and of the soft cap's tanh, building_blocks.h's CapScores). Private to
// attention/.

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "fast_exp.h"

#if RPA_ATTENTION_AVX2
#include <immintrin.h>
#endif

#define RPA_FLASH_INLINE [[gnu::always_inline]] inline

namespace rpa::attention::internal::flash {

inline constexpr std::size_t kLanes = 8;

#if RPA_ATTENTION_AVX2

struct Vec8 {
  __m256 v;
};

RPA_FLASH_INLINE Vec8 Load(const float* p) { return {_mm256_loadu_ps(p)}; }
RPA_FLASH_INLINE void Store(float* p, Vec8 a) { _mm256_storeu_ps(p, a.v); }
RPA_FLASH_INLINE Vec8 Set1(float x) { return {_mm256_set1_ps(x)}; }
RPA_FLASH_INLINE Vec8 Broadcast(const float* p) {
  return {_mm256_broadcast_ss(p)};
}
RPA_FLASH_INLINE Vec8 Zero() { return {_mm256_setzero_ps()}; }
// a * b + c, one rounding.
RPA_FLASH_INLINE Vec8 Fma(Vec8 a, Vec8 b, Vec8 c) {
  return {_mm256_fmadd_ps(a.v, b.v, c.v)};
}
RPA_FLASH_INLINE Vec8 Add(Vec8 a, Vec8 b) { return {_mm256_add_ps(a.v, b.v)}; }
RPA_FLASH_INLINE Vec8 Sub(Vec8 a, Vec8 b) { return {_mm256_sub_ps(a.v, b.v)}; }
RPA_FLASH_INLINE Vec8 Mul(Vec8 a, Vec8 b) { return {_mm256_mul_ps(a.v, b.v)}; }
RPA_FLASH_INLINE Vec8 Max(Vec8 a, Vec8 b) { return {_mm256_max_ps(a.v, b.v)}; }
// Lanes where a == -inf become 0 (the reference point of a row that has not
// seen a visible key yet, so exp(-inf - 0) = 0 and never exp(-inf + inf)).
RPA_FLASH_INLINE Vec8 ZeroIfMinusInf(Vec8 a) {
  const __m256 is_minus_inf =
      _mm256_cmp_ps(a.v, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ);
  return {_mm256_andnot_ps(is_minus_inf, a.v)};
}

// 2^x for x <= 0 (the softmax's only use: scores minus their running max,
// or -inf), Cephes' exp2f polynomial on [-0.5, 0.5]: relative error <= 2e-7.
// Below -127 (and for -inf) the result is exactly 0: clamping to -127 makes
// the exponent field 0, so 2^n * poly is +0 without a compare and a blend.
// Half the work of a general exp (fast_exp.h's Exp8): no range check above,
// no two-constant ln 2 split.
RPA_FLASH_INLINE Vec8 Exp2NonPositive(Vec8 x) {
  const __m256 t = _mm256_max_ps(x.v, _mm256_set1_ps(-127.0F));
  const __m256 n =
      _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, n);
  __m256 y = _mm256_set1_ps(kExp2Poly[0]);
  for (std::size_t i = 1; i < 7; ++i) {
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(kExp2Poly[i]));
  }
  const __m256i exponent = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return {_mm256_mul_ps(y, _mm256_castsi256_ps(exponent))};
}

#else  // portable

// GCC / Clang generic vectors of 4 floats (two per Vec8): the compiler lowers
// them to whatever the target has (SSE2 on baseline x86-64, NEON on Arm), and
// to separate multiply and add where there is no FMA. 16-byte vectors keep
// the ABI of every target (a 32-byte vector argument needs AVX).
using Float4 = float __attribute__((vector_size(16)));
using Int4 = std::int32_t __attribute__((vector_size(16)));

struct Vec8 {
  Float4 lo;
  Float4 hi;
};

RPA_FLASH_INLINE Float4 Splat4(float x) { return Float4{x, x, x, x}; }

RPA_FLASH_INLINE Vec8 Load(const float* p) {
  Float4 lo;
  Float4 hi;
  std::memcpy(&lo, p, sizeof(lo));
  std::memcpy(&hi, p + 4, sizeof(hi));
  return {lo, hi};
}
RPA_FLASH_INLINE void Store(float* p, Vec8 a) {
  std::memcpy(p, &a.lo, sizeof(a.lo));
  std::memcpy(p + 4, &a.hi, sizeof(a.hi));
}
RPA_FLASH_INLINE Vec8 Set1(float x) { return {Splat4(x), Splat4(x)}; }
RPA_FLASH_INLINE Vec8 Broadcast(const float* p) { return Set1(*p); }
RPA_FLASH_INLINE Vec8 Zero() { return Set1(0.0F); }
RPA_FLASH_INLINE Vec8 Fma(Vec8 a, Vec8 b, Vec8 c) {
  return {a.lo * b.lo + c.lo, a.hi * b.hi + c.hi};
}
RPA_FLASH_INLINE Vec8 Add(Vec8 a, Vec8 b) { return {a.lo + b.lo, a.hi + b.hi}; }
RPA_FLASH_INLINE Vec8 Sub(Vec8 a, Vec8 b) { return {a.lo - b.lo, a.hi - b.hi}; }
RPA_FLASH_INLINE Vec8 Mul(Vec8 a, Vec8 b) { return {a.lo * b.lo, a.hi * b.hi}; }
RPA_FLASH_INLINE Vec8 Max(Vec8 a, Vec8 b) {
  return {a.lo > b.lo ? a.lo : b.lo, a.hi > b.hi ? a.hi : b.hi};
}
RPA_FLASH_INLINE Vec8 ZeroIfMinusInf(Vec8 a) {
  const Float4 minus_inf = Splat4(-INFINITY);
  const Float4 zero = Splat4(0.0F);
  return {a.lo == minus_inf ? zero : a.lo, a.hi == minus_inf ? zero : a.hi};
}
// The same exp2f polynomial and exponent trick as the AVX2 build; rounding
// to nearest by adding and subtracting 1.5 * 2^23 (exact for |t| <= 2^22).
RPA_FLASH_INLINE Float4 Exp2NonPositive4(Float4 x) {
  const Float4 low = Splat4(-127.0F);
  const Float4 t = x < low ? low : x;
  const Float4 magic = Splat4(12582912.0F);
  const Float4 n = (t + magic) - magic;
  const Float4 f = t - n;
  Float4 y = Splat4(kExp2Poly[0]);
  for (std::size_t i = 1; i < 7; ++i) y = y * f + Splat4(kExp2Poly[i]);
  const Int4 exponent = (__builtin_convertvector(n, Int4) + 127) << 23;
  return y * std::bit_cast<Float4>(exponent);
}
RPA_FLASH_INLINE Vec8 Exp2NonPositive(Vec8 x) {
  return {Exp2NonPositive4(x.lo), Exp2NonPositive4(x.hi)};
}

#endif  // RPA_ATTENTION_AVX2

}  // namespace rpa::attention::internal::flash
