#include "rpa/scheduler/attention_workloads.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace rpa::scheduler {
namespace {

using ::testing::HasSubstr;

TEST(AttentionWorkloadsTest, AzureDecodeKvLensAreSeededAndInRange) {
  std::vector<std::int32_t> a = AzureDecodeKvLens();
  ASSERT_EQ(a.size(), 24U);
  EXPECT_EQ(a, AzureDecodeKvLens());
  for (std::int32_t kv_len : a) {
    EXPECT_GE(kv_len, 300);
    EXPECT_LE(kv_len, 4000);
  }
  EXPECT_GT(std::set<std::int32_t>(a.begin(), a.end()).size(), 20U);
}

TEST(AttentionWorkloadsTest, UnknownNameListsTheKnownOnes) {
  auto w = AttentionWorkload::Create("decode_nope");
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr("decode_32x2048_f16"));
}

TEST(AttentionWorkloadsTest, MixedBatchIsItsTwoPartsAndPagesAreShuffled) {
  auto mixed = AttentionWorkload::Create("mixed_azure_f16");
  auto decode = AttentionWorkload::Create("mixed_azure_f16_decode");
  auto prefill = AttentionWorkload::Create("mixed_azure_f16_prefill");
  ASSERT_TRUE(mixed.ok() && decode.ok() && prefill.ok());
  std::vector<WorkloadSequence> parts = (*decode)->sequences();
  for (auto s : (*prefill)->sequences()) parts.push_back(s);
  ASSERT_EQ(parts.size(), (*mixed)->sequences().size());
  for (std::size_t i = 0; i < parts.size(); ++i) {
    EXPECT_EQ(parts[i].q_len, (*mixed)->sequences()[i].q_len);
    EXPECT_EQ(parts[i].kv_len, (*mixed)->sequences()[i].kv_len);
  }
  attention::BatchMetadata meta = (*mixed)->metadata();
  EXPECT_EQ(std::vector<std::int32_t>(meta.distribution.begin(),
                                      meta.distribution.end()),
            (std::vector<std::int32_t>{24, 26, 26}));
  EXPECT_EQ((*mixed)->params().chunk_prefill_size, 512);
  EXPECT_EQ(meta.shape.num_q_heads, 32U);
  EXPECT_EQ(meta.shape.num_kv_heads, 8U);
  EXPECT_EQ(meta.shape.head_dim, 128U);
  EXPECT_EQ((*mixed)->cache().page_size_tokens, 16U);
  // Shuffled: the first sequence's pages are not consecutive.
  int consecutive = 0;
  for (std::size_t p = 1; p < 10; ++p) {
    consecutive += meta.page_indices[p] == meta.page_indices[p - 1] + 1 ? 1 : 0;
  }
  EXPECT_LT(consecutive, 5);
  // Every used page index is distinct.
  std::set<std::int32_t> used;
  std::size_t pps = meta.page_indices.size() / meta.kv_lens.size();
  for (std::size_t i = 0; i < meta.kv_lens.size(); ++i) {
    for (std::size_t p = 0;
         p < static_cast<std::size_t>((meta.kv_lens[i] + 15) / 16); ++p) {
      EXPECT_TRUE(used.insert(meta.page_indices[i * pps + p]).second);
    }
  }
  EXPECT_EQ(used.size(), (*mixed)->cache().num_pages);
}

}  // namespace
}  // namespace rpa::scheduler
