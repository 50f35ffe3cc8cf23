#include "rpa/memory/storage_type.h"

#include <gtest/gtest.h>

namespace rpa::memory {
namespace {

TEST(StorageTypeTest, NamesRoundTrip) {
  for (StorageType type :
       {StorageType::kF32, StorageType::kF16, StorageType::kBf16}) {
    auto parsed = ParseStorageType(StorageTypeName(type));
    ASSERT_TRUE(parsed.has_value());
    EXPECT_EQ(*parsed, type);
  }
  EXPECT_EQ(StorageBytes(StorageType::kF32), 4u);
  EXPECT_EQ(StorageBytes(StorageType::kBf16), 2u);
}

TEST(StorageTypeTest, UnknownNameIsRejected) {
  EXPECT_FALSE(ParseStorageType("fp8").has_value());
  EXPECT_FALSE(ParseStorageType("").has_value());
  EXPECT_FALSE(ParseStorageType("F32").has_value());
}

}  // namespace
}  // namespace rpa::memory
