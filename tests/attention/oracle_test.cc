// The double-precision oracle itself (tests/attention/oracle.h): what it
// computes on batches small enough to check by hand, that it reads the new
// tokens as stored, and that its f32 rounding bound covers every kernel on
// scores too large for the SPEC section 4 bound alone.

#include "attention/oracle.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "attention/batch_builder.h"

#include "rpa/attention/plan.h"

namespace rpa::attention {
namespace {

using memory::StorageType;
using testutil::BatchSpec;
using testutil::BuildBatch;
using testutil::TestBatch;

TEST(OracleTest, OneKeyGivesItsValue) {
  BatchSpec spec;
  spec.sequences = {{1, 1}};
  spec.head_dim = 4;
  spec.params.v_scale = 2.0F;
  TestBatch batch = BuildBatch(spec);
  const testutil::OracleOutput out =
      testutil::RunOracle(batch.original_oracle_input());
  for (std::size_t d = 0; d < 4; ++d) {
    EXPECT_DOUBLE_EQ(out.out[d], 2.0 * static_cast<double>(batch.v[d]));
  }
}

TEST(OracleTest, EqualScoresAverageTheVisibleValues) {
  // q = 0 gives equal scores: out = mean of the visible values. Causal with
  // window 2: query at position 2 sees keys 1 and 2 only.
  BatchSpec spec;
  spec.sequences = {{3, 3}};
  spec.head_dim = 2;
  spec.params.sliding_window = 2;
  TestBatch batch = BuildBatch(spec);
  std::fill(batch.q.begin(), batch.q.end(), 0.0F);
  const testutil::OracleOutput out =
      testutil::RunOracle(batch.original_oracle_input());
  for (std::size_t d = 0; d < 2; ++d) {
    EXPECT_DOUBLE_EQ(out.out[d], static_cast<double>(batch.v[d]));
    EXPECT_NEAR(out.out[2 * 2 + d],
                (static_cast<double>(batch.v[2 + d]) +
                 static_cast<double>(batch.v[4 + d])) /
                    2,
                1e-15);
  }
}

TEST(OracleTest, ReadsRoundedNewTokens) {
  BatchSpec spec;
  spec.sequences = {{1, 1}};
  spec.head_dim = 1;
  spec.storage = StorageType::kBf16;
  TestBatch batch = BuildBatch(spec);
  batch.v[0] = 1.0F + 0x1p-10F;  // not a bf16
  const testutil::OracleOutput out =
      testutil::RunOracle(batch.original_oracle_input());
  EXPECT_EQ(out.out[0], 1.0);
}

// Standard-normal inputs with sm_scale * k_scale ~ 10 (what the fuzzer
// draws): scores of a few hundred, whose f32 rounding alone exceeds the SPEC
// bound. Every kernel's error stays within the oracle's rounding bound.
TEST(OracleTest, RoundingBoundCoversTheKernelsOnScaledScores) {
  BatchSpec spec;
  spec.sequences = {{1, 28}, {7, 28}, {3, 30}};
  spec.distribution = std::array<std::int32_t, 3>{1, 2, 3};
  spec.params.chunk_prefill_size = 7;
  spec.num_q_heads = 6;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.page_size_tokens = 5;
  spec.params.sm_scale = 2.875F;
  spec.params.k_scale = 3.5625F;
  spec.params.v_scale = 3.5625F;
  spec.values = testutil::ValueDistribution::kNormal;
  for (const KernelKind kernel :
       {KernelKind::kDecode, KernelKind::kPrefill, KernelKind::kMixed}) {
    for (std::uint64_t seed = 1; seed <= 8; ++seed) {
      spec.seed = seed;
      TestBatch batch = BuildBatch(spec);
      const testutil::OracleOutput expected =
          testutil::RunOracle(batch.original_oracle_input());
      const double largest =
          *std::max_element(expected.f32_rounding_bound.begin(),
                            expected.f32_rounding_bound.end());
      EXPECT_GT(largest, 1e-4);  // the SPEC bound alone would not do
      PlanOptions options;
      options.decode_range_kernel = kernel;
      if (kernel != KernelKind::kDecode) {
        options.prefill_range_kernel = kernel;
        options.mixed_range_kernel = kernel;
      }
      ASSERT_TRUE(
          Attend(batch.metadata(), batch.tensors(), batch.params, options)
              .ok());
      const testutil::Comparison comparison = testutil::CompareOutputs(
          batch.out, expected.out, spec.num_q_heads, spec.head_dim, 1e-4,
          expected.f32_rounding_bound);
      EXPECT_TRUE(comparison.ok)
          << "seed " << seed << ": " << comparison.first_bad;
    }
  }
}

TEST(OracleTest, CompareOutputsAcceptsErrorsWithinTheRoundingBound) {
  const std::vector<float> actual = {1.5F, 2.0F};
  const std::vector<double> expected = {1.0, 2.0};
  // 0.5 off: outside 1e-4 * (1 + 1), inside a bound of 0.5, not of 0.4.
  EXPECT_FALSE(testutil::CompareOutputs(actual, expected, 1, 2).ok);
  const std::vector<double> wide = {0.5, 0.0};
  EXPECT_TRUE(testutil::CompareOutputs(actual, expected, 1, 2, 1e-4, wide).ok);
  const std::vector<double> narrow = {0.4, 0.0};
  const testutil::Comparison off =
      testutil::CompareOutputs(actual, expected, 1, 2, 1e-4, narrow);
  EXPECT_FALSE(off.ok);
  EXPECT_EQ(off.num_bad, 1U);
  // A NaN never passes, whatever the bound; a bound of the wrong size fails.
  const std::vector<float> nan = {std::nanf(""), 2.0F};
  EXPECT_FALSE(testutil::CompareOutputs(nan, expected, 1, 2, 1e-4, wide).ok);
  const std::vector<double> short_bound = {0.5};
  EXPECT_FALSE(
      testutil::CompareOutputs(actual, expected, 1, 2, 1e-4, short_bound).ok);
}

}  // namespace
}  // namespace rpa::attention
