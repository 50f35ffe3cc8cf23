#pragma once

// The f16 conversions in plain C++ (what the portable build uses), kept
// callable in every build so tests can compare them with F16C bit for bit.

#include <cstdint>

namespace rpa::attention::internal {

float HalfToFloatPortable(std::uint16_t bits);
std::uint16_t FloatToHalfPortable(float value);  // round to nearest even

}  // namespace rpa::attention::internal
