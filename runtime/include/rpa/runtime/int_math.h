#pragma once

// Integer rounding shared by every module: page counts of a token count,
// blocks of a byte count, sizes rounded to an alignment.
//
//   DivideRoundUp(value, divisor)      ceil(value / divisor)
//   RoundUpToMultiple(value, multiple) the least multiple of `multiple` >=
//                                      value
//
// Both need value >= 0 and divisor (multiple) > 0. DivideRoundUp cannot
// overflow (no value + divisor - 1); RoundUpToMultiple overflows only when the
// result itself does not fit in T.
//
// Thread-safety: pure constexpr functions.

#include <concepts>

namespace rpa {

template <std::integral T>
constexpr T DivideRoundUp(T value, T divisor) {
  return value / divisor + (value % divisor != 0 ? 1 : 0);
}

template <std::integral T>
constexpr T RoundUpToMultiple(T value, T multiple) {
  return DivideRoundUp(value, multiple) * multiple;
}

}  // namespace rpa
