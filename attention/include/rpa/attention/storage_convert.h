#pragma once

// Conversions between f32 and the cache's storage types (SPEC section 4):
// f16 (IEEE binary16; F16C instructions when built for them) and bf16 (the
// top 16 bits of an f32), both rounding to nearest even on the way in. NaN
// stays NaN (quiet), infinities stay infinite, f16 overflow rounds to inf.
//
// Thread-safety: pure functions.

#include <cstddef>
#include <cstdint>
#include <span>

#include "rpa/memory/storage_type.h"

namespace rpa::attention {

float HalfToFloat(std::uint16_t bits);
std::uint16_t FloatToHalf(float value);
float Bf16ToFloat(std::uint16_t bits);
std::uint16_t FloatToBf16(float value);

// Writes in.size() elements of type `type` at `out` (unaligned is fine).
void ConvertToStorage(std::span<const float> in, memory::StorageType type,
                      std::byte* out);
// Reads out.size() elements of type `type` from `in`.
void ConvertFromStorage(const std::byte* in, memory::StorageType type,
                        std::span<float> out);
// The value `value` becomes once stored: ConvertFromStorage(ConvertToStorage).
float RoundToStorage(float value, memory::StorageType type);

}  // namespace rpa::attention
