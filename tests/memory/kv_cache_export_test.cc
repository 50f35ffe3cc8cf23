// KvCache::ExportBatch: the SPEC page tables of a batch of sequences.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "memory/kv_cache_test_util.h"

#include "rpa/memory/kv_cache.h"

namespace rpa::memory {
namespace {

using namespace ::rpa::memory::testing_util;  // NOLINT: test helpers
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------
// ExportBatch

TEST(KvCacheTest, ExportBatchWritesSpecPageTables) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  SequenceId a = MustCreateSequence(*cache);
  SequenceId empty = MustCreateSequence(*cache);
  SequenceId b = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(a, 5).ok());   // 2 pages
  ASSERT_TRUE(cache->Reserve(b, 17).ok());  // 5 pages
  const std::vector<PageId> ta = Table(*cache, a);
  const std::vector<PageId> tb = Table(*cache, b);
  const auto idx = [](PageId page) {
    return static_cast<std::int32_t>(PageIndex(page));
  };

  BatchPageTable out;
  const SequenceId seqs[] = {a, empty, b};
  ASSERT_TRUE(cache->ExportBatch(seqs, 0, &out).ok());
  EXPECT_EQ(out.pages_per_sequence, 5u);  // the longest table
  EXPECT_THAT(out.kv_lens, ElementsAre(5, 0, 17));
  EXPECT_THAT(out.page_indices, ElementsAre(idx(ta[0]), idx(ta[1]), 0, 0, 0,  //
                                            0, 0, 0, 0, 0,                    //
                                            idx(tb[0]), idx(tb[1]), idx(tb[2]),
                                            idx(tb[3]), idx(tb[4])));

  // An explicit, larger pps pads with zeros; the vectors' capacity is reused.
  ASSERT_TRUE(cache->ExportBatch(seqs, 8, &out).ok());
  EXPECT_EQ(out.pages_per_sequence, 8u);
  ASSERT_EQ(out.page_indices.size(), 24u);
  EXPECT_EQ(out.page_indices[16], idx(tb[0]));
  EXPECT_EQ(out.page_indices[20], idx(tb[4]));
  EXPECT_EQ(out.page_indices[21], 0);
  const std::int32_t* data = out.page_indices.data();
  ASSERT_TRUE(cache->ExportBatch(seqs, 6, &out).ok());
  EXPECT_EQ(out.page_indices.data(), data);

  // Page p of sequence i is page_indices[i * pps + p] (SPEC section 2).
  for (std::uint32_t t = 0; t < 17; ++t) {
    EXPECT_EQ(out.page_indices[2 * 6 + t / 4], idx(tb[t / 4]));
  }
}

TEST(KvCacheTest, ExportBatchDefaults) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  BatchPageTable out;
  ASSERT_TRUE(cache->ExportBatch({}, 0, &out).ok());
  EXPECT_EQ(out.pages_per_sequence, 1u);
  EXPECT_TRUE(out.kv_lens.empty());
  EXPECT_TRUE(out.page_indices.empty());

  SequenceId empty = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->ExportBatch({&empty, 1}, 0, &out).ok());
  EXPECT_EQ(out.pages_per_sequence, 1u);  // at least 1
  EXPECT_THAT(out.kv_lens, ElementsAre(0));
  EXPECT_THAT(out.page_indices, ElementsAre(0));
}

TEST(KvCacheTest, ExportBatchErrorsLeaveTheOutputAlone) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  SequenceId a = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(a, 9).ok());  // 3 pages
  BatchPageTable out{
      .kv_lens = {42}, .page_indices = {7, 7}, .pages_per_sequence = 2};

  Status status = cache->ExportBatch({&a, 1}, 2, &out);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr("pages_per_sequence 2"), HasSubstr("3 pages"),
                    HasSubstr(IdText(a))));
  EXPECT_THAT(out.kv_lens, ElementsAre(42));
  EXPECT_THAT(out.page_indices, ElementsAre(7, 7));
  EXPECT_EQ(out.pages_per_sequence, 2u);

  EXPECT_EQ(cache->ExportBatch({&a, 1}, 0, nullptr).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rpa::memory
