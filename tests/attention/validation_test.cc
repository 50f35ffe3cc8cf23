// Every rule of SPEC section 3: the error code, a message that names the
// field and the value, and that a rejected AttentionPlan::Create / Attend /
// Run changes nothing (cache bytes and out identical). Also the plan's
// filled-in ValidatedBatch (its cost: cost_test.cc).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/oracle.h"
#include "validate.h"

#include "rpa/attention/plan.h"

namespace rpa::attention {
namespace {

using internal::ValidateBatch;
using memory::StorageType;
using testutil::BatchSpec;
using testutil::BuildBatch;
using testutil::TestBatch;

constexpr std::int32_t kInt32Max = std::numeric_limits<std::int32_t>::max();

// Seven sequences: 2 decode, 2 prefill (chunk 4), 2 mixed, 1 not processed.
BatchSpec BaseSpec() {
  BatchSpec spec;
  spec.sequences = {{1, 9}, {1, 1}, {4, 12}, {4, 4}, {3, 20}, {5, 5}, {2, 6}};
  spec.distribution = std::array<std::int32_t, 3>{2, 4, 6};
  spec.num_q_heads = 4;
  spec.num_kv_heads = 2;
  spec.head_dim = 8;
  spec.page_size_tokens = 4;
  spec.params.chunk_prefill_size = 4;
  spec.seed = 7;
  return spec;
}

bool AllNan(const std::vector<float>& values) {
  for (float value : values) {
    if (!std::isnan(value)) return false;
  }
  return true;
}

class ValidationTest : public ::testing::Test {
 protected:
  ValidationTest() : batch_(BuildBatch(BaseSpec())) {
    kv_lens_ = batch_.kv_lens;
    page_indices_ = batch_.page_indices;
    cu_q_lens_ = batch_.cu_q_lens;
    distribution_ = batch_.distribution;
    shape_ = batch_.shape;
    cache_ = batch_.cache();
    params_ = batch_.params;
  }

  BatchMetadata Metadata() const {
    return BatchMetadata{.shape = shape_,
                         .kv_lens = kv_lens_,
                         .page_indices = page_indices_,
                         .cu_q_lens = cu_q_lens_,
                         .distribution = distribution_};
  }

  // The batch as mutated is rejected by ValidateBatch, AttentionPlan::Create
  // and Attend with InvalidArgument and a message containing every needle,
  // and nothing was written.
  void ExpectInvalid(std::initializer_list<std::string_view> needles) {
    const BatchMetadata meta = Metadata();
    const auto check = [&](const Status& status, const char* what) {
      EXPECT_EQ(status.code(), StatusCode::kInvalidArgument)
          << what << ": " << status;
      for (std::string_view needle : needles) {
        EXPECT_THAT(status.message(), ::testing::HasSubstr(std::string(needle)))
            << what;
      }
    };
    check(ValidateBatch(meta, cache_, params_, options_).status(),
          "ValidateBatch");
    check(AttentionPlan::Create(meta, cache_, params_, options_).status(),
          "AttentionPlan::Create");
    BatchTensors tensors = batch_.tensors();
    tensors.cache = cache_;
    check(Attend(meta, tensors, params_, options_), "Attend");
    ExpectUnchanged();
  }

  void ExpectValid() {
    const auto validated = ValidateBatch(Metadata(), cache_, params_, options_);
    EXPECT_TRUE(validated.ok()) << validated.status();
  }

  void ExpectUnchanged() {
    EXPECT_EQ(
        std::memcmp(batch_.cache_bytes().data(), batch_.original_cache.data(),
                    batch_.original_cache.size()),
        0)
        << "a rejected call wrote the cache";
    EXPECT_TRUE(AllNan(batch_.out)) << "a rejected call wrote out";
  }

  TestBatch batch_;
  std::vector<std::int32_t> kv_lens_;
  std::vector<std::int32_t> page_indices_;
  std::vector<std::int32_t> cu_q_lens_;
  std::vector<std::int32_t> distribution_;
  BatchShape shape_;
  memory::KvLayerView cache_;
  AttentionParams params_;
  PlanOptions options_;
};

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

// --- Processed sequences ----------------------------------------------------

TEST_F(ValidationTest, ProcessedSequenceWithoutTokens) {
  // Sequence 5 (mixed, q_len 5) gets q_len 0; sequence 6 absorbs its tokens.
  cu_q_lens_[6] = cu_q_lens_[5];
  ExpectInvalid({"sequence 5", "q_len", "= 0"});
}

TEST_F(ValidationTest, QLenLongerThanKvLen) {
  kv_lens_[4] = 2;  // q_len 3
  ExpectInvalid({"q_len = 3 > kv_lens[4] = 2"});
}

TEST_F(ValidationTest, KvLenNeedsMorePagesThanTheTableHolds) {
  const auto pps = static_cast<std::int32_t>(batch_.pages_per_sequence);
  kv_lens_[1] = pps * 4 + 1;
  ExpectInvalid({"kv_lens[1] = " + std::to_string(pps * 4 + 1) + " needs " +
                 std::to_string(pps + 1) +
                 " pages but pages_per_sequence = " + std::to_string(pps)});
}

TEST_F(ValidationTest, HugeKvLenDoesNotOverflow) {
  kv_lens_[0] = kInt32Max;
  ExpectInvalid({"kv_lens[0] = 2147483647 needs 536870912 pages"});
}

TEST_F(ValidationTest, HugeCuQLensDoNotOverflow) {
  cu_q_lens_ = {0,         kInt32Max, kInt32Max, kInt32Max,
                kInt32Max, kInt32Max, kInt32Max, kInt32Max};
  shape_.num_tokens = std::numeric_limits<std::uint32_t>::max();
  ExpectInvalid({"q_len = 2147483647 > kv_lens[0] = 9"});
}

TEST_F(ValidationTest, NegativePageIndex) {
  const std::size_t entry = 4 * batch_.pages_per_sequence + 2;
  page_indices_[entry] = -3;
  ExpectInvalid({"page_indices[" + std::to_string(entry) +
                 "] = -3 outside [0, " + std::to_string(cache_.num_pages) +
                 ")"});
}

TEST_F(ValidationTest, PageIndexPastTheCache) {
  const std::size_t entry = 0;
  page_indices_[entry] = static_cast<std::int32_t>(cache_.num_pages);
  ExpectInvalid({"page_indices[0] = " + std::to_string(cache_.num_pages) +
                 " outside [0, " + std::to_string(cache_.num_pages) + ")"});
}

TEST_F(ValidationTest, UnusedEntriesAndUnprocessedSequencesAreIgnored) {
  // The builder already put garbage in unused entries; make the sequence past
  // d2 garbage too.
  kv_lens_[6] = -5;
  page_indices_[6 * batch_.pages_per_sequence] = -100;
  ExpectValid();
}

TEST_F(ValidationTest, DecodeRangeQLenMustBeOne) {
  distribution_ = {3, 4, 6};  // sequence 2 (q_len 4) becomes decode
  ExpectInvalid({"sequence 2", "decode", "q_len = 4 != 1"});
}

TEST_F(ValidationTest, PrefillRangeQLenMustBeTheChunk) {
  params_.chunk_prefill_size = 5;
  ExpectInvalid(
      {"sequence 2", "prefill", "q_len = 4", "chunk_prefill_size = 5"});
}

TEST_F(ValidationTest, PrefillRangeNeedsAChunkSize) {
  params_.chunk_prefill_size.reset();
  ExpectInvalid({"prefill range", "[2, 4)", "chunk_prefill_size is none"});
}

TEST_F(ValidationTest, EmptyPrefillRangeNeedsNoChunkSize) {
  params_.chunk_prefill_size.reset();
  distribution_ = {2, 2, 6};
  ExpectValid();
}

TEST_F(ValidationTest, DecodeKernelRoutedToLongQueries) {
  options_.mixed_range_kernel = KernelKind::kDecode;
  ExpectInvalid({"mixed range", "decode kernel", "sequence 4", "q_len = 3"});
  options_ = PlanOptions{};
  options_.prefill_range_kernel = KernelKind::kDecode;
  ExpectInvalid({"prefill range", "decode kernel", "sequence 2"});
}

TEST_F(ValidationTest, DecodeKernelOnQLenOneIsFine) {
  distribution_ = {2, 2, 2};
  options_.mixed_range_kernel = KernelKind::kDecode;
  ExpectValid();
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

// --- Overlapping writes -----------------------------------------------------

TEST_F(ValidationTest, TwoSequencesWritingOneSlot) {
  // Sequence 5 (q_len 5 = kv_len, page 0 of its table holds positions 0-3)
  // and sequence 3 (prefill, q_len 4 = kv_len 4, one page) both write slots
  // 0-3 of one page.
  const std::uint32_t pps = batch_.pages_per_sequence;
  page_indices_[5 * pps] = page_indices_[3 * pps];
  ExpectInvalid({"sequences 3 and 5 write the same cache slot",
                 "page " + std::to_string(page_indices_[3 * pps]) + " slot 0"});
}

TEST_F(ValidationTest, OneSequenceWritingOneSlotTwice) {
  // Sequence 5 writes positions 0-4: pages 0 and 1 of its table.
  const std::uint32_t pps = batch_.pages_per_sequence;
  page_indices_[5 * pps + 1] = page_indices_[5 * pps];
  ExpectInvalid({"sequences 5 and 5 write the same cache slot", "slot 0"});
}

TEST_F(ValidationTest, PartialOverlapInTheMiddleOfAPage) {
  // Sequence 4 (kv 20, q 3) writes positions 17-19: slots 1-3 of its page 4.
  // With kv_len 10, sequence 0 writes position 9: slot 1 of its page 2; make
  // that the same page.
  const std::uint32_t pps = batch_.pages_per_sequence;
  page_indices_[0 * pps + 2] = page_indices_[4 * pps + 4];
  kv_lens_[0] = 10;
  ExpectInvalid({"sequences 0 and 4 write the same cache slot",
                 "kv position 9 of sequence 0", "kv position 17 of sequence 4",
                 "slot 1"});
}

TEST_F(ValidationTest, SharedPageWithDisjointSlotsIsValidAndCorrect) {
  // Sequence 0 writes position 8 = slot 0 of its page 2; sequence 4 writes
  // slots 1-3 of its page 4. Sharing that page is fine (no slot written
  // twice), and a correct run writes both. (Sequence 4 also reads slot 0 as
  // its cached position 16: Run writes every new token before any kernel
  // reads, and the oracle reads the cache after the writes, so both see
  // sequence 0's new token there.)
  const std::uint32_t pps = batch_.pages_per_sequence;
  page_indices_[0 * pps + 2] = page_indices_[4 * pps + 4];
  ExpectValid();
  const BatchMetadata meta = Metadata();
  testutil::OracleInput input = batch_.original_oracle_input();
  input.metadata = meta;
  const testutil::OracleOutput expected = testutil::RunOracle(input);
  const Status status = Attend(meta, batch_.tensors(), params_);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(testutil::CompareWithOracle(batch_, expected), "");
}

TEST_F(ValidationTest, SequencesPastD2MayOverlapAnything) {
  const std::uint32_t pps = batch_.pages_per_sequence;
  page_indices_[6 * pps] = page_indices_[5 * pps];
  ExpectValid();
}

// --- Edge batches -----------------------------------------------------------

TEST_F(ValidationTest, NothingProcessedIsValidAndWritesNothing) {
  distribution_ = {0, 0, 0};
  const auto validated = ValidateBatch(Metadata(), cache_, params_, options_);
  ASSERT_TRUE(validated.ok()) << validated.status();
  EXPECT_EQ(validated->num_used_tokens, 0);
  EXPECT_TRUE(validated->sequences.empty());
  EXPECT_EQ(validated->cost.bytes(), 0U);
  BatchTensors tensors = batch_.tensors();
  tensors.out = {};
  const Status status = Attend(Metadata(), tensors, params_);
  EXPECT_TRUE(status.ok()) << status;
  ExpectUnchanged();
}

TEST_F(ValidationTest, EmptyBatchIsValid) {
  kv_lens_.clear();
  page_indices_.clear();
  cu_q_lens_ = {0};
  distribution_ = {0, 0, 0};
  ExpectValid();
  BatchTensors tensors = batch_.tensors();
  tensors.out = {};
  const Status status = Attend(Metadata(), tensors, params_);
  EXPECT_TRUE(status.ok()) << status;
  ExpectUnchanged();
}

TEST_F(ValidationTest, EmptyBatchWithPageIndicesIsInvalid) {
  kv_lens_.clear();
  cu_q_lens_ = {0};
  distribution_ = {0, 0, 0};
  ExpectInvalid({"page_indices has", "kv_lens is empty"});
}

}  // namespace
}  // namespace rpa::attention
