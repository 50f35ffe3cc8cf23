#include "rpa/memory/storage_type.h"

namespace rpa::memory {

std::string_view StorageTypeName(StorageType type) {
  switch (type) {
    case StorageType::kF32:
      return "f32";
    case StorageType::kF16:
      return "f16";
    case StorageType::kBf16:
      return "bf16";
  }
  return "unknown";
}

std::optional<StorageType> ParseStorageType(std::string_view name) {
  if (name == "f32") return StorageType::kF32;
  if (name == "f16") return StorageType::kF16;
  if (name == "bf16") return StorageType::kBf16;
  return std::nullopt;
}

}  // namespace rpa::memory
