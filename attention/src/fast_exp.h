#pragma once

// The vectorised exp shared by the building blocks (ExpInPlace, the online
// softmax) and the decode kernel: one set of constants, one polynomial; and
// the tanh of the soft cap, built on it.
// Private to attention/.

#if defined(RPA_ATTENTION_AVX2)
#include <immintrin.h>
#endif

namespace rpa::attention::internal {

// Cephes-style expf: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6
// polynomial (about 1 ulp), 2^n put into the exponent bits. ln2 is split in
// two so that n * ln2_hi is exact and r keeps its low bits.
inline constexpr float kLog2e = 1.44269504088896341F;
inline constexpr float kLn2Hi = 0.693359375F;
inline constexpr float kLn2Lo = -2.12194440e-4F;
// Below this e^x is subnormal; the kernels only ever need "small enough to
// vanish next to the row max", so such inputs give exactly 0 (and -inf does).
inline constexpr float kExpMinInput = -87.33654F;
inline constexpr float kExpMaxInput = 88.37626F;
inline constexpr float kExpP0 = 1.9875691500E-4F;
inline constexpr float kExpP1 = 1.3981999507E-3F;
inline constexpr float kExpP2 = 8.3334519073E-3F;
inline constexpr float kExpP3 = 4.1665795894E-2F;
inline constexpr float kExpP4 = 1.6666665459E-1F;
inline constexpr float kExpP5 = 5.0000001201E-1F;

// 2^f for f in [-0.5, 0.5], highest degree first (relative error ~2e-7): the
// exp2 of non-positive inputs in the flash kernel (flash_vec.h) and the
// AVX-512 decode kernel, where 2^n is applied by exponent bits or scalef.
inline constexpr float kExp2Poly[7] = {1.535336188319500E-4F,
                                       1.339887440266574E-3F,
                                       9.618437357674640E-3F,
                                       5.550332471162809E-2F,
                                       2.402264791363012E-1F,
                                       6.931472028550421E-1F,
                                       1.0F};

#if defined(RPA_ATTENTION_AVX2)
// Eight lanes of building_blocks.cc's ExpScalar (relative error <= 2e-7).
// Lanes below kExpMinInput (-inf included) are blended to 0 after the
// arithmetic, which ran on a clamped input, so no NaN appears; NaN inputs stay
// NaN.
inline __m256 Exp8(__m256 x) {
  const __m256 clamped =
      _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kExpMinInput)),
                    _mm256_set1_ps(kExpMaxInput));
  const __m256 n =
      _mm256_round_ps(_mm256_mul_ps(clamped, _mm256_set1_ps(kLog2e)),
                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), clamped);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpP0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP5));
  const __m256 r2 = _mm256_mul_ps(r, r);
  const __m256 e_r =
      _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0F));
  // n in [-126, 128]: 2^n = 2^(n >> 1) * 2^(n - (n >> 1)) keeps both
  // exponent fields normal at either end of the range.
  const __m256i exponent = _mm256_cvtps_epi32(n);
  const __m256i half_exponent = _mm256_srai_epi32(exponent, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 scale_a = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(half_exponent, bias), 23));
  const __m256 scale_b = _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_add_epi32(_mm256_sub_epi32(exponent, half_exponent), bias), 23));
  __m256 result = _mm256_mul_ps(_mm256_mul_ps(e_r, scale_a), scale_b);
  // x < min (including -inf) -> 0; x > max -> inf; NaN -> NaN.
  const __m256 too_small =
      _mm256_cmp_ps(x, _mm256_set1_ps(kExpMinInput), _CMP_LT_OQ);
  const __m256 too_large =
      _mm256_cmp_ps(x, _mm256_set1_ps(kExpMaxInput), _CMP_GT_OQ);
  const __m256 is_nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  result = _mm256_andnot_ps(too_small, result);
  result =
      _mm256_blendv_ps(result, _mm256_set1_ps(__builtin_inff()), too_large);
  return _mm256_blendv_ps(result, x, is_nan);
}

inline float HorizontalMax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// tanh(x), Cephes' tanhf: an odd polynomial below |x| = 0.625 (where
// 1 - 2 / (e^2x + 1) would cancel), the exp form above; relative error
// ~2e-7 everywhere. +-inf -> +-1, NaN -> NaN. The soft cap of every kernel
// (building_blocks.h's CapScores).
inline __m256 Tanh8(__m256 x) {
  const __m256 sign_mask = _mm256_set1_ps(-0.0F);
  const __m256 abs_x = _mm256_andnot_ps(sign_mask, x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 small = _mm256_set1_ps(-5.70498872745E-3F);
  small = _mm256_fmadd_ps(small, z, _mm256_set1_ps(2.06390887954E-2F));
  small = _mm256_fmadd_ps(small, z, _mm256_set1_ps(-5.37397155531E-2F));
  small = _mm256_fmadd_ps(small, z, _mm256_set1_ps(1.33314422036E-1F));
  small = _mm256_fmadd_ps(small, z, _mm256_set1_ps(-3.33332819422E-1F));
  small = _mm256_fmadd_ps(_mm256_mul_ps(small, z), x, x);
  const __m256 e = Exp8(_mm256_add_ps(abs_x, abs_x));
  __m256 large =
      _mm256_sub_ps(_mm256_set1_ps(1.0F),
                    _mm256_div_ps(_mm256_set1_ps(2.0F),
                                  _mm256_add_ps(e, _mm256_set1_ps(1.0F))));
  large = _mm256_or_ps(large, _mm256_and_ps(sign_mask, x));
  const __m256 use_small =
      _mm256_cmp_ps(abs_x, _mm256_set1_ps(0.625F), _CMP_LT_OQ);
  return _mm256_blendv_ps(large, small, use_small);
}

#endif

}  // namespace rpa::attention::internal
