// The rules of SPEC section 3 on the processed sequences: their q_len and
// kv_len by range, their page-table entries, cache slots written twice, and
// batches with nothing to process. Each rejected batch gets InvalidArgument,
// a message that names the field and the value, and changes nothing.

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "attention/batch_builder.h"
#include "attention/oracle.h"
#include "attention/validation_fixture.h"
#include "validate.h"

#include "rpa/attention/plan.h"

namespace rpa::attention {
namespace {

using namespace ::rpa::attention::validation_fixture;  // NOLINT: test helpers

constexpr std::int32_t kInt32Max = std::numeric_limits<std::int32_t>::max();

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
