// The kernels' building blocks against straightforward double math.

#include "building_blocks.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "support/gtest_printers.h"

#include "rpa/attention/storage_convert.h"
#include "rpa/memory/storage_type.h"

namespace rpa::attention::internal {
namespace {

using memory::StorageType;

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(BuildingBlocksTest, VisibleKeysNonCausalSeesEverything) {
  ResolvedParams params;
  params.causal = false;
  const KeyRange range = VisibleKeys(3, 10, params);
  EXPECT_EQ(range.begin, 0);
  EXPECT_EQ(range.end, 10);
}

TEST(BuildingBlocksTest, VisibleKeysCausalStopsAtTheQuery) {
  ResolvedParams params;
  const KeyRange range = VisibleKeys(3, 10, params);
  EXPECT_EQ(range.begin, 0);
  EXPECT_EQ(range.end, 4);
  // The last query sees everything.
  EXPECT_EQ(VisibleKeys(9, 10, params).end, 10);
}

TEST(BuildingBlocksTest, VisibleKeysMatchesTheSpecRuleEverywhere) {
  // SPEC 2 step 5 evaluated key by key, for every combination.
  for (const bool causal : {false, true}) {
    for (const std::int32_t window : {0, 1, 3, 7, 100}) {
      ResolvedParams params;
      params.causal = causal;
      params.sliding_window = window;
      const std::int32_t kv_len = 20;
      for (std::int32_t pos = 0; pos < kv_len; ++pos) {
        const KeyRange range = VisibleKeys(pos, kv_len, params);
        for (std::int32_t b = 0; b < kv_len; ++b) {
          const bool visible =
              (!causal || b <= pos) && (window == 0 || pos - b < window);
          EXPECT_EQ(visible, b >= range.begin && b < range.end)
              << "causal " << causal << " window " << window << " pos " << pos
              << " key " << b;
        }
      }
    }
  }
}

// A cache with NaN everywhere, pages of 4 tokens, 3 kv heads, D 10 (not a
// multiple of 8, so vector tails are exercised) and a shuffled page table.
struct TestCache {
  static constexpr std::uint32_t kNumPages = 9;
  static constexpr std::uint32_t kPageSize = 4;
  static constexpr std::uint32_t kKvHeads = 3;

  TestCache(StorageType storage, std::uint32_t head_dim) {
    view.num_pages = kNumPages;
    view.page_size_tokens = kPageSize;
    view.num_combined_heads = 2 * kKvHeads;
    view.head_dim = head_dim;
    view.storage = storage;
    view.token_bytes =
        view.num_combined_heads * head_dim * memory::StorageBytes(storage);
    view.page_bytes = kPageSize * view.token_bytes;
    bytes.resize(kNumPages * view.page_bytes);
    const std::vector<float> nan(bytes.size(),
                                 std::numeric_limits<float>::quiet_NaN());
    ConvertToStorage(
        std::span(nan).first(bytes.size() / memory::StorageBytes(storage)),
        storage, bytes.data());
    view.data = bytes.data();
    pages = {7, 2, 5, 0, 8};  // shuffled, skipping some pages
  }

  // The stored value of element d of (position, head, K or V), f32.
  float Expected(std::int32_t position, std::uint32_t head, bool value,
                 std::uint32_t d) const {
    return RoundToStorage(Source(position, head, value, d), view.storage);
  }
  static float Source(std::int32_t position, std::uint32_t head, bool value,
                      std::uint32_t d) {
    return 0.01F * static_cast<float>(position * 100 +
                                      static_cast<std::int32_t>(d)) +
           static_cast<float>(head) + (value ? 0.5F : 0.0F) - 3.0F;
  }

  void Fill(std::int32_t num_tokens) {
    std::vector<float> row(view.head_dim);
    for (std::int32_t t = 0; t < num_tokens; ++t) {
      for (std::uint32_t h = 0; h < kKvHeads; ++h) {
        for (const bool value : {false, true}) {
          for (std::uint32_t d = 0; d < view.head_dim; ++d) {
            row[d] = Source(t, h, value, d);
          }
          const std::size_t page = static_cast<std::size_t>(
              pages[static_cast<std::size_t>(t) / kPageSize]);
          std::byte* address =
              view.data +
              (page * kPageSize + static_cast<std::size_t>(t) % kPageSize) *
                  view.token_bytes +
              (2 * h + (value ? 1 : 0)) * view.head_dim *
                  memory::StorageBytes(view.storage);
          ConvertToStorage(row, view.storage, address);
        }
      }
    }
  }

  std::vector<std::byte> bytes;
  memory::KvLayerView view;
  std::vector<std::int32_t> pages;
};

TEST(BuildingBlocksTest, KvRowAddressFollowsTheShuffledPageTable) {
  TestCache cache(StorageType::kF32, 10);
  const std::size_t element = sizeof(float);
  for (std::int32_t position = 0; position < 20; ++position) {
    for (std::uint32_t head = 0; head < TestCache::kKvHeads; ++head) {
      for (const bool value : {false, true}) {
        const std::size_t page = static_cast<std::size_t>(
            cache.pages[static_cast<std::size_t>(position / 4)]);
        const std::size_t expected =
            (page * 4 + static_cast<std::size_t>(position % 4)) *
                cache.view.token_bytes +
            (2 * head + (value ? 1 : 0)) * 10 * element;
        EXPECT_EQ(
            KvRowAddress(cache.view, cache.pages.data(), position, head, value),
            cache.view.data + expected);
      }
    }
  }
}

class LoadKvTileTest : public testing::TestWithParam<StorageType> {};

TEST_P(LoadKvTileTest, LoadsStoredRowsAcrossPages) {
  for (const std::uint32_t head_dim : {10U, 16U, 24U}) {
    TestCache cache(GetParam(), head_dim);
    cache.Fill(18);  // positions 18, 19 of the last page stay NaN
    const std::size_t stride = head_dim + 3;
    for (const auto& [begin, end] : std::vector<std::pair<int, int>>{
             {0, 18}, {3, 9}, {4, 8}, {5, 6}, {17, 18}, {7, 7}}) {
      for (std::uint32_t head = 0; head < TestCache::kKvHeads; ++head) {
        for (const bool value : {false, true}) {
          std::vector<float> tile(20 * stride, -7.0F);
          LoadKvTile(cache.view, cache.pages.data(), head, value, begin, end,
                     tile.data(), stride);
          for (int r = 0; r < 20; ++r) {
            for (std::size_t d = 0; d < stride; ++d) {
              const float got = tile[static_cast<std::size_t>(r) * stride + d];
              if (r < end - begin && d < head_dim) {
                ASSERT_EQ(got, cache.Expected(begin + r, head, value,
                                              static_cast<std::uint32_t>(d)))
                    << "row " << r << " d " << d;
              } else {
                ASSERT_EQ(got, -7.0F) << "wrote outside the tile rows";
              }
            }
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Storage, LoadKvTileTest,
                         testing::Values(StorageType::kF32, StorageType::kF16,
                                         StorageType::kBf16));

TEST(BuildingBlocksTest, ScaleAndCapScores) {
  std::vector<float> scores(19);
  for (std::size_t i = 0; i < scores.size(); ++i) {
    scores[i] = static_cast<float>(i) * 1.7F - 15.0F;
  }
  std::vector<float> plain = scores;
  ScaleAndCapScores(plain.data(), plain.size(), 0.3F, 0.0F);
  std::vector<float> capped = scores;
  ScaleAndCapScores(capped.data(), capped.size(), 0.3F, 2.5F);
  for (std::size_t i = 0; i < scores.size(); ++i) {
    const double x = static_cast<double>(scores[i]) * 0.3;
    EXPECT_NEAR(plain[i], x, 1e-6 * (1 + std::abs(x)));
    const double y = 2.5 * std::tanh(x / 2.5);
    EXPECT_NEAR(capped[i], y, 1e-6 * (1 + std::abs(y)));
    EXPECT_LE(std::abs(capped[i]), 2.5F);
  }
  // -inf stays -inf through the scale and the cap.
  float minus_inf = -kInf;
  ScaleAndCapScores(&minus_inf, 1, 0.5F, 3.0F);
  EXPECT_EQ(minus_inf, -kInf);
}

TEST(BuildingBlocksTest, CapScoresIsTanhToAFewUlpsOnBothPathsAndKeepsMasks) {
  // Both branches of the vector tanh (|x / cap| below and above 0.625),
  // tiny and huge inputs, and n not a multiple of 8 (the scalar tail).
  std::vector<float> scores;
  for (float x = -40.0F; x <= 40.0F; x += 0.0173F) scores.push_back(x);
  for (const float x : {0.0F, -0.0F, 1e-8F, -1e-8F, 0.625F, -0.625F, 0.62499F,
                        1e4F, -1e4F, kInf}) {
    scores.push_back(x);
  }
  scores.push_back(-kInf);  // masked: stays -inf
  scores.push_back(std::numeric_limits<float>::quiet_NaN());
  ASSERT_NE(scores.size() % 8, 0U);
  for (const float cap : {1.0F, 50.0F, -3.0F}) {
    std::vector<float> capped = scores;
    CapScores(capped.data(), capped.size(), cap);
    for (std::size_t i = 0; i + 2 < scores.size(); ++i) {
      const double want =
          static_cast<double>(cap) *
          std::tanh(static_cast<double>(scores[i]) / static_cast<double>(cap));
      EXPECT_NEAR(capped[i], want, 4e-7 * std::abs(want) + 1e-30)
          << "x " << scores[i] << ", cap " << cap;
    }
    EXPECT_EQ(capped[scores.size() - 2], -kInf);
    EXPECT_TRUE(std::isnan(capped.back()));
  }
}

TEST(BuildingBlocksTest, ExpIsAccurateOverTheWholeRange) {
  std::vector<float> values;
  for (float x = -87.0F; x <= 88.0F; x += 0.0137F) values.push_back(x);
  for (const float x : {0.0F, -0.0F, 1e-8F, -1e-8F, 0.5F, -0.5F, 88.0F, -87.0F,
                        0.34657359F, -0.34657359F}) {
    values.push_back(x);
  }
  std::vector<float> result = values;
  ExpInPlace(result.data(), result.size());
  double worst = 0;
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double expected = std::exp(static_cast<double>(values[i]));
    const double relative =
        std::abs(static_cast<double>(result[i]) - expected) / expected;
    worst = std::max(worst, relative);
    ASSERT_LE(relative, 2e-7) << "exp(" << values[i] << ") = " << result[i];
  }
  RecordProperty("worst_relative_error", std::to_string(worst));
}

TEST(BuildingBlocksTest, ExpOfMinusInfinityIsZeroAndNeverNaN) {
  std::vector<float> values(21, -kInf);
  values[3] = -1000.0F;
  values[4] = -88.5F;
  values[11] = 0.0F;
  values[20] = 1.0F;
  ExpInPlace(values.data(), values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    ASSERT_FALSE(std::isnan(values[i])) << i;
  }
  EXPECT_EQ(values[0], 0.0F);
  EXPECT_EQ(values[3], 0.0F);
  EXPECT_LT(values[4], 1e-37F);
  EXPECT_EQ(values[11], 1.0F);
  EXPECT_NEAR(values[20], std::exp(1.0), 1e-6);
  EXPECT_EQ(values[19], 0.0F);  // scalar tail
  float big = 100.0F;
  ExpInPlace(&big, 1);
  EXPECT_EQ(big, kInf);
}

// Online softmax over blocks (some entries masked with -inf) equals the
// one-shot softmax in double, including the accumulator rescaling.
TEST(BuildingBlocksTest, OnlineSoftmaxOverBlocksEqualsOneShotSoftmax) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0F, 3.0F);
  constexpr std::size_t kKeys = 75;
  constexpr std::size_t kDim = 5;
  std::vector<float> scores(kKeys);
  std::vector<float> values(kKeys * kDim);
  for (auto& s : scores) s = normal(rng);
  for (auto& v : values) v = normal(rng);
  // Masked keys, and a first block that is masked entirely.
  for (std::size_t b = 0; b < 9; ++b) scores[b] = -kInf;
  for (std::size_t b = 30; b < kKeys; b += 4) scores[b] = -kInf;
  // A large max late, so that rescaling matters.
  scores[60] = 40.0F;

  double max = -1e300;
  for (const float s : scores) max = std::max(max, static_cast<double>(s));
  double sum = 0;
  std::vector<double> expected(kDim, 0.0);
  for (std::size_t b = 0; b < kKeys; ++b) {
    const double p = std::exp(static_cast<double>(scores[b]) - max);
    sum += p;
    for (std::size_t d = 0; d < kDim; ++d) {
      expected[d] += p * static_cast<double>(values[b * kDim + d]);
    }
  }

  for (const std::size_t block : {1UL, 7UL, 9UL, 16UL, 75UL}) {
    SoftmaxRow row;
    std::vector<float> acc(kDim, 0.0F);
    for (std::size_t start = 0; start < kKeys; start += block) {
      const std::size_t n = std::min(block, kKeys - start);
      std::vector<float> p(scores.begin() + static_cast<long>(start),
                           scores.begin() + static_cast<long>(start + n));
      const float old_max = row.max;
      const float factor = OnlineSoftmaxUpdate(&row, p.data(), n);
      if (old_max == -kInf) {
        EXPECT_EQ(factor, 0.0F);
      } else {
        EXPECT_NEAR(factor,
                    std::exp(static_cast<double>(old_max) -
                             static_cast<double>(row.max)),
                    1e-6);
      }
      for (std::size_t b = 0; b < n; ++b) {
        ASSERT_FALSE(std::isnan(p[b]));
        if (scores[start + b] == -kInf) {
          ASSERT_EQ(p[b], 0.0F);
        }
      }
      for (auto& a : acc) a *= factor;
      for (std::size_t b = 0; b < n; ++b) {
        for (std::size_t d = 0; d < kDim; ++d) {
          acc[d] += p[b] * values[(start + b) * kDim + d];
        }
      }
    }
    EXPECT_EQ(row.max, static_cast<float>(max));
    EXPECT_NEAR(row.sum, sum, 1e-5 * sum);
    for (std::size_t d = 0; d < kDim; ++d) {
      EXPECT_NEAR(acc[d] / row.sum, expected[d] / sum,
                  1e-5 * (1 + std::abs(expected[d] / sum)))
          << "block " << block;
    }
  }
}

TEST(BuildingBlocksTest, OnlineSoftmaxOfAFullyMaskedBlockIsZero) {
  SoftmaxRow row;
  std::vector<float> scores(13, -kInf);
  EXPECT_EQ(OnlineSoftmaxUpdate(&row, scores.data(), scores.size()), 0.0F);
  EXPECT_EQ(row.sum, 0.0F);
  EXPECT_EQ(row.max, -kInf);
  for (const float p : scores) EXPECT_EQ(p, 0.0F);
  // After a real key, a masked block changes nothing: factor 1, p 0.
  float one = 2.0F;
  OnlineSoftmaxUpdate(&row, &one, 1);
  std::fill(scores.begin(), scores.end(), -kInf);
  EXPECT_EQ(OnlineSoftmaxUpdate(&row, scores.data(), scores.size()), 1.0F);
  EXPECT_EQ(row.sum, 1.0F);
  for (const float p : scores) EXPECT_EQ(p, 0.0F);
}

// Splitting the keys, computing a partial state per split and merging gives
// the unsplit result (and an empty split contributes nothing).
TEST(BuildingBlocksTest, MergeOfSplitsEqualsUnsplit) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0F, 2.0F);
  constexpr std::uint32_t kDim = 12;
  constexpr std::size_t kKeys = 50;
  std::vector<float> scores(kKeys);
  std::vector<float> values(kKeys * kDim);
  for (auto& s : scores) s = normal(rng);
  for (auto& v : values) v = normal(rng);
  scores[37] = 25.0F;
  constexpr float kVScale = 0.75F;

  double max = -1e300;
  for (const float s : scores) max = std::max(max, static_cast<double>(s));
  double sum = 0;
  std::vector<double> expected(kDim, 0.0);
  for (std::size_t b = 0; b < kKeys; ++b) {
    const double p = std::exp(static_cast<double>(scores[b]) - max);
    sum += p;
    for (std::size_t d = 0; d < kDim; ++d) {
      expected[d] += p * static_cast<double>(values[b * kDim + d]);
    }
  }

  // Splits [0,16) [16,16) (empty) [16,32) [32,50); slots 3 floats apart
  // beyond the {max, sum, acc} layout to test the stride.
  const std::vector<std::size_t> bounds = {0, 16, 16, 32, 50};
  const std::size_t stride = kDim + 2 + 3;
  std::vector<float> partials((bounds.size() - 1) * stride, 99.0F);
  for (std::size_t j = 0; j + 1 < bounds.size(); ++j) {
    float* slot = partials.data() + j * stride;
    SoftmaxRow row;
    std::vector<float> acc(kDim, 0.0F);
    std::vector<float> p(scores.begin() + static_cast<long>(bounds[j]),
                         scores.begin() + static_cast<long>(bounds[j + 1]));
    OnlineSoftmaxUpdate(&row, p.data(), p.size());
    for (std::size_t b = 0; b < p.size(); ++b) {
      Axpy(p[b], values.data() + (bounds[j] + b) * kDim, acc.data(), kDim);
    }
    slot[0] = row.max;
    slot[1] = row.sum;
    std::copy(acc.begin(), acc.end(), slot + 2);
  }
  std::vector<float> out(kDim, -1.0F);
  MergePartialRows(partials.data(), bounds.size() - 1, stride, kDim, kVScale,
                   out.data());
  for (std::size_t d = 0; d < kDim; ++d) {
    const double want = expected[d] / sum * static_cast<double>(kVScale);
    EXPECT_NEAR(out[d], want, 1e-5 * (1 + std::abs(want))) << d;
  }
}

TEST(BuildingBlocksTest, DotAxpyScaleMatchDouble) {
  for (const std::size_t n : {0UL, 1UL, 7UL, 8UL, 16UL, 23UL, 128UL}) {
    std::vector<float> a(n);
    std::vector<float> b(n);
    for (std::size_t i = 0; i < n; ++i) {
      a[i] = static_cast<float>(i % 7) - 2.5F;
      b[i] = 0.25F * static_cast<float>(i % 5) + 1.0F;
    }
    double dot = 0;
    for (std::size_t i = 0; i < n; ++i) {
      dot += static_cast<double>(a[i]) * static_cast<double>(b[i]);
    }
    EXPECT_NEAR(Dot(a.data(), b.data(), n), dot, 1e-5 * (1 + std::abs(dot)));
    std::vector<float> y = b;
    Axpy(0.5F, a.data(), y.data(), n);
    for (std::size_t i = 0; i < n; ++i)
      EXPECT_FLOAT_EQ(y[i], b[i] + 0.5F * a[i]);
    ScaleInPlace(y.data(), n, 2.0F);
    for (std::size_t i = 0; i < n; ++i) {
      EXPECT_FLOAT_EQ(y[i], 2.0F * (b[i] + 0.5F * a[i]));
    }
  }
}

}  // namespace
}  // namespace rpa::attention::internal
