#include "rpa/attention/storage_convert.h"

#include <bit>
#include <cstring>

#include "storage_convert_portable.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace rpa::attention {

using memory::StorageType;

namespace internal {

// IEEE binary16 -> binary32, exact (every half is representable).
float HalfToFloatPortable(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000U) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1FU;
  std::uint32_t mantissa = bits & 0x3FFU;
  std::uint32_t result = 0;
  if (exponent == 0x1F) {  // inf / NaN (NaN payload kept, made quiet)
    result =
        sign | 0x7F800000U | (mantissa << 13) | (mantissa != 0 ? 0x400000U : 0);
  } else if (exponent != 0) {  // normal
    result = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {  // zero
    result = sign;
  } else {  // subnormal: normalise
    std::uint32_t shift = 0;
    while ((mantissa & 0x400U) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    mantissa &= 0x3FFU;
    result = sign | ((113 - shift) << 23) | (mantissa << 13);
  }
  return std::bit_cast<float>(result);
}

// binary32 -> binary16, round to nearest even, overflow to inf.
std::uint16_t FloatToHalfPortable(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000U);
  const std::uint32_t abs = bits & 0x7FFFFFFFU;
  if (abs >= 0x7F800000U) {  // inf or NaN
    const std::uint16_t nan_bit =
        abs > 0x7F800000U
            ? static_cast<std::uint16_t>(0x200U | ((abs >> 13) & 0x3FFU))
            : 0;
    return static_cast<std::uint16_t>(sign | 0x7C00U | nan_bit);
  }
  if (abs >= 0x477FF000U) return static_cast<std::uint16_t>(sign | 0x7C00U);
  if (abs < 0x38800000U) {  // below the smallest normal half: subnormal or 0
    // Value in units of 2^-24, rounded to nearest even.
    const std::uint32_t exponent = abs >> 23;
    if (exponent < 102) return sign;  // < 2^-25: rounds to 0
    const std::uint32_t mantissa = (abs & 0x7FFFFFU) | 0x800000U;
    const std::uint32_t shift = 126 - exponent;  // 14..24
    std::uint32_t half = mantissa >> shift;
    const std::uint32_t remainder = mantissa & ((1U << shift) - 1);
    const std::uint32_t halfway = 1U << (shift - 1);
    if (remainder > halfway || (remainder == halfway && (half & 1U) != 0)) {
      ++half;
    }
    return static_cast<std::uint16_t>(sign | half);
  }
  // Normal: rebias the exponent, round the 13 dropped bits to nearest even.
  std::uint32_t half = (abs - 0x38000000U) >> 13;
  const std::uint32_t remainder = abs & 0x1FFFU;
  if (remainder > 0x1000U || (remainder == 0x1000U && (half & 1U) != 0)) {
    ++half;  // may carry into the exponent, up to inf: still correct
  }
  return static_cast<std::uint16_t>(sign | half);
}

}  // namespace internal

float HalfToFloat(std::uint16_t bits) {
#if defined(__F16C__)
  // The vector forms: clang's _cvtsh_ss / _cvtss_sh macros use C compound
  // literals, which -Wpedantic rejects in C++.
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)));
#else
  return internal::HalfToFloatPortable(bits);
#endif
}

std::uint16_t FloatToHalf(float value) {
#if defined(__F16C__)
  return static_cast<std::uint16_t>(_mm_extract_epi16(
      _mm_cvtps_ph(_mm_set_ss(value), _MM_FROUND_TO_NEAREST_INT), 0));
#else
  return internal::FloatToHalfPortable(value);
#endif
}

float Bf16ToFloat(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

std::uint16_t FloatToBf16(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7FFFFFFFU) > 0x7F800000U) {  // NaN: keep it a (quiet) NaN
    return static_cast<std::uint16_t>((bits >> 16) | 0x40U);
  }
  const std::uint32_t rounding = 0x7FFFU + ((bits >> 16) & 1U);
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

void ConvertToStorage(std::span<const float> in, StorageType type,
                      std::byte* out) {
  const std::size_t n = in.size();
  switch (type) {
    case StorageType::kF32:
      if (n != 0) std::memcpy(out, in.data(), n * sizeof(float));
      return;
    case StorageType::kF16: {
      std::size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
      for (; i + 8 <= n; i += 8) {
        const __m128i halves = _mm256_cvtps_ph(_mm256_loadu_ps(in.data() + i),
                                               _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i), halves);
      }
#endif
      for (; i < n; ++i) {
        const std::uint16_t half = FloatToHalf(in[i]);
        std::memcpy(out + 2 * i, &half, sizeof(half));
      }
      return;
    }
    case StorageType::kBf16:
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint16_t bf16 = FloatToBf16(in[i]);
        std::memcpy(out + 2 * i, &bf16, sizeof(bf16));
      }
      return;
  }
}

void ConvertFromStorage(const std::byte* in, StorageType type,
                        std::span<float> out) {
  const std::size_t n = out.size();
  switch (type) {
    case StorageType::kF32:
      if (n != 0) std::memcpy(out.data(), in, n * sizeof(float));
      return;
    case StorageType::kF16: {
      std::size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
      for (; i + 8 <= n; i += 8) {
        const __m128i halves =
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i));
        _mm256_storeu_ps(out.data() + i, _mm256_cvtph_ps(halves));
      }
#endif
      for (; i < n; ++i) {
        std::uint16_t half = 0;
        std::memcpy(&half, in + 2 * i, sizeof(half));
        out[i] = HalfToFloat(half);
      }
      return;
    }
    case StorageType::kBf16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t bf16 = 0;
        std::memcpy(&bf16, in + 2 * i, sizeof(bf16));
        out[i] = Bf16ToFloat(bf16);
      }
      return;
  }
}

float RoundToStorage(float value, StorageType type) {
  switch (type) {
    case StorageType::kF32:
      return value;
    case StorageType::kF16:
      return HalfToFloat(FloatToHalf(value));
    case StorageType::kBf16:
      return Bf16ToFloat(FloatToBf16(value));
  }
  return value;
}

}  // namespace rpa::attention
