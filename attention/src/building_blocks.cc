#include "building_blocks.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "fast_exp.h"

#include "rpa/attention/storage_convert.h"

#if defined(RPA_ATTENTION_AVX2)
#include <immintrin.h>
#endif

namespace rpa::attention::internal {

using memory::StorageType;

namespace {

// a * b + c, fused where the hardware has it (std::fma without FMA hardware
// is a slow libm emulation, and the portable build only needs f32 accuracy).
inline float MulAdd(float a, float b, float c) {
#if defined(__FMA__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

float ExpScalar(float x) {
  if (!(x >= kExpMinInput)) return std::isnan(x) ? x : 0.0F;  // -inf -> 0
  if (x > kExpMaxInput) return __builtin_inff();
  const float n = std::nearbyint(x * kLog2e);
  float r = MulAdd(n, -kLn2Hi, x);
  r = MulAdd(n, -kLn2Lo, r);
  float p = kExpP0;
  p = MulAdd(p, r, kExpP1);
  p = MulAdd(p, r, kExpP2);
  p = MulAdd(p, r, kExpP3);
  p = MulAdd(p, r, kExpP4);
  p = MulAdd(p, r, kExpP5);
  const float r2 = r * r;
  const float e_r = MulAdd(p, r2, r) + 1.0F;
  // n in [-126, 128]: 2^n = 2^(n >> 1) * 2^(n - (n >> 1)) keeps both
  // exponent fields normal at either end of the range.
  const auto exponent = static_cast<std::int32_t>(n);
  const std::int32_t half_exponent = exponent >> 1;
  const float scale_a = std::bit_cast<float>(
      static_cast<std::uint32_t>(half_exponent + 127) << 23);
  const float scale_b = std::bit_cast<float>(
      static_cast<std::uint32_t>(exponent - half_exponent + 127) << 23);
  return e_r * scale_a * scale_b;
}

// Converts one row of `count` stored elements to f32.
void ConvertRow(const std::byte* in, StorageType type, std::uint32_t count,
                float* out) {
  std::uint32_t i = 0;
  switch (type) {
    case StorageType::kF32:
      std::memcpy(out, in, count * sizeof(float));
      return;
    case StorageType::kF16:
#if defined(RPA_ATTENTION_AVX2)
      for (; i + 8 <= count; i += 8) {
        _mm256_storeu_ps(out + i,
                         _mm256_cvtph_ps(_mm_loadu_si128(
                             reinterpret_cast<const __m128i*>(in + 2 * i))));
      }
#endif
      for (; i < count; ++i) {
        std::uint16_t bits = 0;
        std::memcpy(&bits, in + 2 * i, sizeof(bits));
        out[i] = HalfToFloat(bits);
      }
      return;
    case StorageType::kBf16:
#if defined(RPA_ATTENTION_AVX2)
      for (; i + 8 <= count; i += 8) {
        const __m256i wide = _mm256_cvtepu16_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i)));
        _mm256_storeu_ps(out + i,
                         _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
      }
#endif
      for (; i < count; ++i) {
        std::uint16_t bits = 0;
        std::memcpy(&bits, in + 2 * i, sizeof(bits));
        out[i] = Bf16ToFloat(bits);
      }
      return;
  }
}

}  // namespace

void LoadKvTile(const memory::KvLayerView& cache, const std::int32_t* pages,
                std::uint32_t kv_head, bool value, std::int32_t begin,
                std::int32_t end, float* tile, std::size_t row_stride) {
  const auto ps = static_cast<std::int32_t>(cache.page_size_tokens);
  std::int32_t position = begin;
  float* row = tile;
  // Page by page: one page-table lookup per page, then rows token_bytes
  // apart within it.
  while (position < end) {
    const std::int32_t page_end = std::min(end, (position / ps + 1) * ps);
    const std::byte* address =
        KvRowAddress(cache, pages, position, kv_head, value);
    for (; position < page_end; ++position) {
      ConvertRow(address, cache.storage, cache.head_dim, row);
      address += cache.token_bytes;
      row += row_stride;
    }
  }
}

void ScaleAndCapScores(float* scores, std::size_t n, float scale,
                       float soft_cap) {
  std::size_t i = 0;
#if defined(RPA_ATTENTION_AVX2)
  const __m256 scale8 = _mm256_set1_ps(scale);
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(scores + i,
                     _mm256_mul_ps(_mm256_loadu_ps(scores + i), scale8));
  }
#endif
  for (; i < n; ++i) scores[i] *= scale;
  if (soft_cap != 0.0F) CapScores(scores, n, soft_cap);
}

void CapScores(float* scores, std::size_t n, float soft_cap) {
  const float inverse_cap = 1.0F / soft_cap;
  std::size_t i = 0;
  // An entry that is already -inf was masked by the caller; capping it to
  // -soft_cap would unmask it, so it stays -inf.
#if defined(RPA_ATTENTION_AVX2)
  const __m256 cap8 = _mm256_set1_ps(soft_cap);
  const __m256 inverse8 = _mm256_set1_ps(inverse_cap);
  const __m256 minus_inf = _mm256_set1_ps(-__builtin_inff());
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(scores + i);
    const __m256 capped =
        _mm256_mul_ps(Tanh8(_mm256_mul_ps(x, inverse8)), cap8);
    const __m256 masked = _mm256_cmp_ps(x, minus_inf, _CMP_EQ_OQ);
    _mm256_storeu_ps(scores + i, _mm256_blendv_ps(capped, x, masked));
  }
#endif
  for (; i < n; ++i) {
    if (scores[i] == -__builtin_inff()) continue;
    scores[i] = soft_cap * std::tanh(scores[i] * inverse_cap);
  }
}

void ExpInPlace(float* values, std::size_t n) {
  std::size_t i = 0;
#if defined(RPA_ATTENTION_AVX2)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(values + i, Exp8(_mm256_loadu_ps(values + i)));
  }
#endif
  for (; i < n; ++i) values[i] = ExpScalar(values[i]);
}

float OnlineSoftmaxUpdate(SoftmaxRow* row, float* scores, std::size_t n) {
  float block_max = -__builtin_inff();
  std::size_t i = 0;
#if defined(RPA_ATTENTION_AVX2)
  if (n >= 8) {
    __m256 max8 = _mm256_set1_ps(-__builtin_inff());
    for (; i + 8 <= n; i += 8) {
      max8 = _mm256_max_ps(max8, _mm256_loadu_ps(scores + i));
    }
    block_max = HorizontalMax(max8);
  }
#endif
  for (; i < n; ++i) block_max = std::max(block_max, scores[i]);
  const float new_max = std::max(row->max, block_max);
  if (new_max == -__builtin_inff()) {
    // Nothing visible yet: every p is 0 and there is nothing to rescale
    // (exp(-inf - -inf) would be NaN).
    std::fill(scores, scores + n, 0.0F);
    return 0.0F;
  }
  float block_sum = 0.0F;
  i = 0;
#if defined(RPA_ATTENTION_AVX2)
  const __m256 max8 = _mm256_set1_ps(new_max);
  __m256 sum8 = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 p = Exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + i), max8));
    _mm256_storeu_ps(scores + i, p);
    sum8 = _mm256_add_ps(sum8, p);
  }
  block_sum = HorizontalSum(sum8);
#endif
  for (; i < n; ++i) {
    scores[i] = ExpScalar(scores[i] - new_max);
    block_sum += scores[i];
  }
  const float factor =
      row->max == -__builtin_inff() ? 0.0F : ExpScalar(row->max - new_max);
  row->sum = row->sum * factor + block_sum;
  row->max = new_max;
  return factor;
}

void MergePartialRows(const float* partials, std::size_t count,
                      std::size_t stride, std::uint32_t head_dim, float v_scale,
                      float* out) {
  float global_max = -__builtin_inff();
  for (std::size_t j = 0; j < count; ++j) {
    global_max = std::max(global_max, partials[j * stride]);
  }
  std::fill(out, out + head_dim, 0.0F);
  if (global_max == -__builtin_inff()) return;  // no split saw a key
  float total = 0.0F;
  for (std::size_t j = 0; j < count; ++j) {
    const float* partial = partials + j * stride;
    // A split that saw no visible key has max -inf, sum 0 and acc 0: weight
    // 0, never exp(-inf - -inf).
    if (partial[0] == -__builtin_inff()) continue;
    const float weight = ExpScalar(partial[0] - global_max);
    total += weight * partial[1];
    Axpy(weight, partial + 2, out, head_dim);
  }
  const float normaliser = v_scale / total;
  ScaleInPlace(out, head_dim, normaliser);
}

float Dot(const float* a, const float* b, std::size_t n) {
  std::size_t i = 0;
  float sum = 0.0F;
#if defined(RPA_ATTENTION_AVX2)
  __m256 acc0 = _mm256_setzero_ps();
  __m256 acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    acc0 =
        _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8),
                           _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) {
    acc0 =
        _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  }
  sum = HorizontalSum(_mm256_add_ps(acc0, acc1));
#endif
  for (; i < n; ++i) sum = MulAdd(a[i], b[i], sum);
  return sum;
}

void Axpy(float alpha, const float* x, float* y, std::size_t n) {
  std::size_t i = 0;
#if defined(RPA_ATTENTION_AVX2)
  const __m256 alpha8 = _mm256_set1_ps(alpha);
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(alpha8, _mm256_loadu_ps(x + i),
                                            _mm256_loadu_ps(y + i)));
  }
#endif
  for (; i < n; ++i) y[i] = MulAdd(alpha, x[i], y[i]);
}

void ScaleInPlace(float* values, std::size_t n, float factor) {
  std::size_t i = 0;
#if defined(RPA_ATTENTION_AVX2)
  const __m256 factor8 = _mm256_set1_ps(factor);
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(values + i,
                     _mm256_mul_ps(_mm256_loadu_ps(values + i), factor8));
  }
#endif
  for (; i < n; ++i) values[i] *= factor;
}

}  // namespace rpa::attention::internal
