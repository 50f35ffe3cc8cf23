#include "rpa/attention/storage_convert.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "storage_convert_portable.h"

namespace rpa::attention {
namespace {

using memory::StorageType;

TEST(StorageConvertTest, EveryHalfRoundTripsExactly) {
  for (std::uint32_t bits = 0; bits <= 0xFFFFU; ++bits) {
    const auto half = static_cast<std::uint16_t>(bits);
    const float value = HalfToFloat(half);
    const float portable = internal::HalfToFloatPortable(half);
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(portable)) << bits;
      EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(value)))) << bits;
      continue;
    }
    EXPECT_EQ(std::bit_cast<std::uint32_t>(value),
              std::bit_cast<std::uint32_t>(portable))
        << bits;
    EXPECT_EQ(FloatToHalf(value), half) << bits;
    EXPECT_EQ(internal::FloatToHalfPortable(value), half) << bits;
  }
}

TEST(StorageConvertTest, HalfRoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1 and the next half (1 + 2^-10): ties to 1.
  EXPECT_EQ(FloatToHalf(1.0F + 0x1p-11F), 0x3C00);
  // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9: up.
  EXPECT_EQ(FloatToHalf(1.0F + 3 * 0x1p-11F), 0x3C02);
  EXPECT_EQ(FloatToHalf(1.0F + 0x1p-11F + 0x1p-20F), 0x3C01);
  EXPECT_EQ(FloatToHalf(65520.0F), 0x7C00);  // rounds to inf
  EXPECT_EQ(FloatToHalf(65519.0F), 0x7BFF);
  EXPECT_EQ(FloatToHalf(0x1p-25F), 0x0000);    // tie to even (0)
  EXPECT_EQ(FloatToHalf(0x1.8p-25F), 0x0001);  // above the tie
  EXPECT_EQ(FloatToHalf(-0.0F), 0x8000);
}

TEST(StorageConvertTest, PortableHalfMatchesHardwareOnRandomFloats) {
  std::mt19937 rng(7);
  for (int i = 0; i < 1'000'000; ++i) {
    const auto bits = static_cast<std::uint32_t>(rng());
    const float value = std::bit_cast<float>(bits);
    if (std::isnan(value)) continue;
    ASSERT_EQ(FloatToHalf(value), internal::FloatToHalfPortable(value))
        << std::hex << bits;
  }
}

TEST(StorageConvertTest, Bf16RoundsToNearestEvenAndKeepsNan) {
  EXPECT_EQ(FloatToBf16(1.0F), 0x3F80);
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3F808000U)), 0x3F80);  // tie
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3F818000U)), 0x3F82);  // tie up
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x3F808001U)), 0x3F81);
  EXPECT_TRUE(std::isnan(
      Bf16ToFloat(FloatToBf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(
      std::bit_cast<float>(0x7F800001U)))));  // payload only in low bits
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::infinity()), 0x7F80);
}

TEST(StorageConvertTest, SpanConversionsMatchScalarOnes) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0F, 3.0F);
  for (StorageType type :
       {StorageType::kF32, StorageType::kF16, StorageType::kBf16}) {
    for (std::size_t n : {0U, 1U, 7U, 8U, 9U, 100U}) {
      std::vector<float> in(n);
      for (float& x : in) x = normal(rng);
      std::vector<std::byte> stored(n * memory::StorageBytes(type));
      ConvertToStorage(in, type, stored.data());
      std::vector<float> back(n);
      ConvertFromStorage(stored.data(), type, back);
      for (std::size_t i = 0; i < n; ++i) {
        EXPECT_EQ(back[i], RoundToStorage(in[i], type)) << i;
      }
    }
  }
}

}  // namespace
}  // namespace rpa::attention
