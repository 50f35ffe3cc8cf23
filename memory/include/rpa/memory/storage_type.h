#pragma once

// The element types a KV cache can store (shared/SPEC.md section 4).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace rpa::memory {

enum class StorageType : std::uint8_t { kF32, kF16, kBf16 };

constexpr std::size_t StorageBytes(StorageType type) {
  return type == StorageType::kF32 ? 4 : 2;
}

// "f32", "f16", "bf16" (the names of SPEC section 5's params.json).
std::string_view StorageTypeName(StorageType type);
std::optional<StorageType> ParseStorageType(std::string_view name);

}  // namespace rpa::memory
