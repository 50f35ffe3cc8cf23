// The rules of SPEC section 3 on the batch's shapes, metadata arrays and
// parameters: the error code, a message that names the field and the value,
// and that a rejected AttentionPlan::Create / Attend / Run changes nothing
// (cache bytes and out identical). Also the plan's filled-in ValidatedBatch
// (its cost: cost_test.cc). The rules on the processed sequences:
// validation_sequences_test.cc.

#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "attention/batch_builder.h"
#include "attention/validation_fixture.h"
#include "validate.h"

#include "rpa/attention/plan.h"

namespace rpa::attention {
namespace {

using namespace ::rpa::attention::validation_fixture;  // NOLINT: test helpers
using memory::StorageType;

TEST_F(ValidationTest, BaseBatchIsValidAndFullyResolved) {
  params_.sm_scale = 0.5F;
  params_.k_scale = 3.0F;
  params_.v_scale = 0.25F;
  params_.soft_cap = 20.0F;
  params_.sliding_window = 7;
  options_.mixed_range_kernel = KernelKind::kPrefill;
  const auto validated = ValidateBatch(Metadata(), cache_, params_, options_);
  ASSERT_TRUE(validated.ok()) << validated.status();
  const internal::ValidatedBatch& batch = *validated;
  EXPECT_EQ(batch.group_size, 2U);
  EXPECT_EQ(batch.num_used_tokens, cu_q_lens_[6]);
  EXPECT_EQ(batch.pages_per_sequence, batch_.pages_per_sequence);
  EXPECT_EQ(batch.page_indices, page_indices_);
  EXPECT_EQ(batch.distribution, (std::array<std::int32_t, 3>{2, 4, 6}));
  EXPECT_EQ(batch.cache.num_pages, cache_.num_pages);
  EXPECT_EQ(batch.cache.page_size_tokens, 4U);
  EXPECT_EQ(batch.cache.num_combined_heads, 4U);
  EXPECT_EQ(batch.cache.head_dim, 8U);
  EXPECT_FLOAT_EQ(batch.params.score_scale, 1.5F);
  EXPECT_FLOAT_EQ(batch.params.v_scale, 0.25F);
  EXPECT_FLOAT_EQ(batch.params.soft_cap, 20.0F);
  EXPECT_EQ(batch.params.sliding_window, 7);
  EXPECT_TRUE(batch.params.causal);
  ASSERT_EQ(batch.sequences.size(), 6U);
  const KernelKind kernels[] = {KernelKind::kDecode,  KernelKind::kDecode,
                                KernelKind::kPrefill, KernelKind::kPrefill,
                                KernelKind::kPrefill, KernelKind::kPrefill};
  for (std::size_t i = 0; i < 6; ++i) {
    const internal::SequenceSpan& seq = batch.sequences[i];
    EXPECT_EQ(seq.q_begin, cu_q_lens_[i]) << i;
    EXPECT_EQ(seq.q_len, cu_q_lens_[i + 1] - cu_q_lens_[i]) << i;
    EXPECT_EQ(seq.kv_len, kv_lens_[i]) << i;
    EXPECT_EQ(seq.page_row,
              static_cast<std::int32_t>(i * batch.pages_per_sequence))
        << i;
    EXPECT_EQ(seq.kernel, kernels[i]) << i;
    EXPECT_EQ(seq.range, i < 2 ? 0 : (i < 4 ? 1 : 2)) << i;
  }
}

TEST_F(ValidationTest, DefaultParamsResolveToNone) {
  params_ = AttentionParams{};
  params_.chunk_prefill_size = 4;
  const auto validated = ValidateBatch(Metadata(), cache_, params_, options_);
  ASSERT_TRUE(validated.ok()) << validated.status();
  EXPECT_EQ(validated->params.score_scale, 1.0F);
  EXPECT_EQ(validated->params.v_scale, 1.0F);
  EXPECT_EQ(validated->params.soft_cap, 0.0F);
  EXPECT_EQ(validated->params.sliding_window, 0);
}

// --- Shapes -----------------------------------------------------------------

TEST_F(ValidationTest, ZeroQHeads) {
  shape_.num_q_heads = 0;
  ExpectInvalid({"num_q_heads", "0"});
}

TEST_F(ValidationTest, ZeroKvHeads) {
  shape_.num_kv_heads = 0;
  ExpectInvalid({"num_kv_heads", "0"});
}

TEST_F(ValidationTest, ZeroHeadDim) {
  shape_.head_dim = 0;
  ExpectInvalid({"head_dim", "0"});
}

TEST_F(ValidationTest, QHeadsNotAMultipleOfKvHeads) {
  shape_.num_q_heads = 3;
  ExpectInvalid({"num_q_heads = 3", "num_kv_heads = 2"});
}

TEST_F(ValidationTest, ZeroPages) {
  cache_.num_pages = 0;
  ExpectInvalid({"num_pages", "0"});
}

TEST_F(ValidationTest, ZeroPageSize) {
  cache_.page_size_tokens = 0;
  cache_.page_bytes = 0;
  ExpectInvalid({"page_size_tokens", "0"});
}

TEST_F(ValidationTest, CacheHeadsDisagreeWithKvHeads) {
  shape_.num_kv_heads = 1;
  shape_.num_q_heads = 2;
  ExpectInvalid({"num_combined_heads = 4", "2 * shape.num_kv_heads = 2"});
}

TEST_F(ValidationTest, CacheHeadDimDisagrees) {
  shape_.head_dim = 16;
  ExpectInvalid({"cache.head_dim = 8", "shape.head_dim = 16"});
}

TEST_F(ValidationTest, CacheStridesDisagreeWithGeometry) {
  cache_.token_bytes += 4;
  ExpectInvalid({"token_bytes"});
}

TEST_F(ValidationTest, HugeShapeIsRejectedWithoutOverflow) {
  shape_.num_tokens = std::numeric_limits<std::uint32_t>::max();
  shape_.num_q_heads = 1U << 30;
  shape_.num_kv_heads = 1U << 30;
  cache_.num_combined_heads = 1U << 31;
  cache_.token_bytes = std::size_t{1} << 36;  // 2^31 x 8 x 4 bytes
  cache_.page_bytes = cache_.token_bytes * cache_.page_size_tokens;
  ExpectInvalid({"q of 4294967295 tokens", "too large"});
}

TEST_F(ValidationTest, HugeCacheIsRejectedWithoutOverflow) {
  cache_.num_pages = std::numeric_limits<std::uint32_t>::max();
  cache_.page_size_tokens = std::numeric_limits<std::uint32_t>::max();
  ExpectInvalid({"too large"});
}

TEST_F(ValidationTest, TensorShapesAreCheckedByRun) {
  const BatchMetadata meta = Metadata();
  BatchTensors tensors = batch_.tensors();
  tensors.q = tensors.q.first(tensors.q.size() - 1);
  EXPECT_EQ(Attend(meta, tensors, params_).code(),
            StatusCode::kInvalidArgument);
  tensors = batch_.tensors();
  tensors.k = tensors.k.first(tensors.k.size() - 8);
  EXPECT_EQ(Attend(meta, tensors, params_).code(),
            StatusCode::kInvalidArgument);
  tensors = batch_.tensors();
  tensors.v = tensors.v.first(tensors.v.size() - 8);
  EXPECT_EQ(Attend(meta, tensors, params_).code(),
            StatusCode::kInvalidArgument);
  tensors = batch_.tensors();
  tensors.out = tensors.out.first(tensors.out.size() - 1);
  EXPECT_EQ(Attend(meta, tensors, params_).code(),
            StatusCode::kInvalidArgument);
  // A cache other than the planned one.
  auto plan = AttentionPlan::Create(meta, cache_, params_);
  ASSERT_TRUE(plan.ok()) << plan.status();
  tensors = batch_.tensors();
  tensors.cache.num_pages -= 1;
  EXPECT_EQ(attention::Run(*plan, tensors).code(),
            StatusCode::kInvalidArgument);
  tensors = batch_.tensors();
  tensors.cache.storage = StorageType::kBf16;
  EXPECT_EQ(attention::Run(*plan, tensors).code(),
            StatusCode::kInvalidArgument);
  tensors = batch_.tensors();
  tensors.cache.data = nullptr;
  EXPECT_EQ(attention::Run(*plan, tensors).code(),
            StatusCode::kInvalidArgument);
  ExpectUnchanged();
}

// --- Metadata arrays --------------------------------------------------------

TEST_F(ValidationTest, PageIndicesNotAMultipleOfSequences) {
  page_indices_.pop_back();
  ExpectInvalid(
      {"page_indices", std::to_string(page_indices_.size()), "S", "7"});
}

TEST_F(ValidationTest, CuQLensWrongLength) {
  cu_q_lens_.pop_back();
  ExpectInvalid({"cu_q_lens has 7 entries", "8"});
}

TEST_F(ValidationTest, CuQLensMustStartAtZero) {
  cu_q_lens_[0] = 1;
  ExpectInvalid({"cu_q_lens[0] = 1"});
}

TEST_F(ValidationTest, CuQLensMustNotDecrease) {
  // {0, 1, 2, 6, 10, 13, 18, 20}: make entry 3 smaller than entry 2.
  cu_q_lens_[3] = 1;
  ExpectInvalid({"cu_q_lens[3] = 1 < cu_q_lens[2] = 2"});
}

TEST_F(ValidationTest, CuQLensDecreasingPastProcessedSequences) {
  cu_q_lens_[7] = cu_q_lens_[6] - 1;
  ExpectInvalid({"cu_q_lens[7]"});
}

TEST_F(ValidationTest, DistributionWrongLength) {
  distribution_.push_back(7);
  ExpectInvalid({"distribution has 4 entries"});
}

TEST_F(ValidationTest, DistributionNegative) {
  distribution_ = {-1, 4, 6};
  ExpectInvalid({"distribution = (-1, 4, 6)"});
}

TEST_F(ValidationTest, DistributionNotOrdered) {
  distribution_ = {4, 2, 6};
  ExpectInvalid({"distribution = (4, 2, 6)"});
}

TEST_F(ValidationTest, DistributionPastSequences) {
  distribution_ = {2, 4, 8};
  ExpectInvalid({"distribution = (2, 4, 8)", "S = 7"});
}

TEST_F(ValidationTest, UsedTokensBeyondTensor) {
  shape_.num_tokens = static_cast<std::uint32_t>(cu_q_lens_[6] - 1);
  ExpectInvalid({"cu_q_lens[6] = 18", "num_tokens = 17"});
}

// --- Parameters -------------------------------------------------------------

TEST_F(ValidationTest, SlidingWindowMustBePositive) {
  params_.sliding_window = 0;
  ExpectInvalid({"sliding_window must be positive", "0"});
  params_.sliding_window = -3;
  ExpectInvalid({"sliding_window must be positive", "-3"});
}

TEST_F(ValidationTest, SoftCapMustNotBeZero) {
  params_.soft_cap = 0.0F;
  ExpectInvalid({"soft_cap must not be 0"});
  params_.soft_cap = -0.0F;
  ExpectInvalid({"soft_cap must not be 0"});
}

TEST_F(ValidationTest, SoftCapMustBeFinite) {
  params_.soft_cap = std::numeric_limits<float>::infinity();
  ExpectInvalid({"soft_cap", "inf"});
  params_.soft_cap = std::numeric_limits<float>::quiet_NaN();
  ExpectInvalid({"soft_cap", "nan"});
}

TEST_F(ValidationTest, ScalesMustBePositiveAndFinite) {
  for (const float bad : {0.0F, -1.0F, std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN()}) {
    params_ = batch_.params;
    params_.k_scale = bad;
    ExpectInvalid({"k_scale"});
    params_ = batch_.params;
    params_.v_scale = bad;
    ExpectInvalid({"v_scale"});
  }
  params_ = batch_.params;
  params_.k_scale = -2.5F;
  ExpectInvalid({"k_scale", "-2.5"});
}

TEST_F(ValidationTest, SmScaleMustBeFinite) {
  params_.sm_scale = std::numeric_limits<float>::infinity();
  ExpectInvalid({"sm_scale must be finite", "inf"});
  params_.sm_scale = std::numeric_limits<float>::quiet_NaN();
  ExpectInvalid({"sm_scale must be finite", "nan"});
}

TEST_F(ValidationTest, ScoreScaleMustNotOverflow) {
  params_.sm_scale = 1e30F;
  params_.k_scale = 1e30F;
  ExpectInvalid({"sm_scale * k_scale"});
}

TEST_F(ValidationTest, ChunkPrefillSizeMustBePositive) {
  params_.chunk_prefill_size = 0;
  ExpectInvalid({"chunk_prefill_size must be positive", "0"});
}

TEST_F(ValidationTest, ParallelismMustBePositive) {
  options_.parallelism = 0;
  ExpectInvalid({"parallelism", "0"});
}

}  // namespace
}  // namespace rpa::attention
