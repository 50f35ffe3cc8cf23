#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "memory/kv_cache_test_util.h"

#include "rpa/memory/kv_cache.h"
#include "rpa/runtime/sanitizers.h"

namespace rpa::memory {
namespace {

using namespace ::rpa::memory::testing_util;  // NOLINT: test helpers
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(KvCacheTest, ForkSharesEveryPage) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  SequenceId parent = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(parent, 10).ok());
  SequenceId child = MustFork(*cache, parent);
  EXPECT_NE(child, parent);
  EXPECT_EQ(Length(*cache, child), 10u);
  EXPECT_EQ(Table(*cache, child), Table(*cache, parent));
  for (PageId page : Table(*cache, parent))
    EXPECT_EQ(cache->RefCount(page), 2u);
  const KvCacheStats stats = cache->Stats();
  EXPECT_EQ(stats.used_pages, 3u);
  EXPECT_EQ(stats.shared_pages, 3u);
  EXPECT_EQ(stats.num_sequences, 2u);
}

TEST(KvCacheTest, ForkOfAnEmptySequence) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  SequenceId parent = MustCreateSequence(*cache);
  SequenceId child = MustFork(*cache, parent);
  EXPECT_EQ(Length(*cache, child), 0u);
  EXPECT_TRUE(Table(*cache, child).empty());
  ASSERT_TRUE(cache->Reserve(child, 3).ok());
  ASSERT_TRUE(cache->Reserve(parent, 3).ok());
  EXPECT_NE(Table(*cache, child), Table(*cache, parent));
  EXPECT_EQ(cache->Stats().shared_pages, 0u);
}

// Forks a sequence of 10 tokens (pages: full, full, half full), lets `writer`
// (the child or the parent) reserve one more token, and checks the copy.
void CheckCopyOnWrite(bool child_writes) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  SequenceId parent = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(parent, 10).ok());
  for (std::uint32_t t = 0; t < 10; ++t) WriteToken(*cache, parent, t, 1);
  SequenceId child = MustFork(*cache, parent);
  const std::vector<PageId> original = Table(*cache, parent);
  const SequenceId writer = child_writes ? child : parent;
  const SequenceId reader = child_writes ? parent : child;

  ASSERT_TRUE(cache->Reserve(writer, 1).ok());
  const std::vector<PageId> written = Table(*cache, writer);
  ASSERT_EQ(written.size(), 3u);
  EXPECT_EQ(written[0], original[0]);
  EXPECT_EQ(written[1], original[1]);
  EXPECT_NE(written[2], original[2]);  // the private copy
  EXPECT_EQ(Table(*cache, reader), original);
  EXPECT_EQ(Length(*cache, writer), 11u);
  EXPECT_EQ(Length(*cache, reader), 10u);
  EXPECT_EQ(cache->RefCount(original[0]), 2u);
  EXPECT_EQ(cache->RefCount(original[1]), 2u);
  EXPECT_EQ(cache->RefCount(original[2]), 1u);
  EXPECT_EQ(cache->RefCount(written[2]), 1u);
  EXPECT_EQ(cache->Stats().used_pages, 4u);
  EXPECT_EQ(cache->Stats().shared_pages, 2u);

  // The filled slots were copied in every layer.
  EXPECT_TRUE(TokenIs(*cache, written[2], 0, 8, 1));
  EXPECT_TRUE(TokenIs(*cache, written[2], 1, 9, 1));
  // Writing the new token touches the copy only.
  WriteToken(*cache, writer, 10, 2);
  EXPECT_TRUE(TokenIs(*cache, written[2], 2, 10, 2));
  for (std::uint32_t t = 0; t < 10; ++t) {
    EXPECT_TRUE(TokenIs(*cache, original[t / 4], t % 4, t, 1)) << t;
  }

  // The other side now holds the original alone and writes into it in place.
  ASSERT_TRUE(cache->Reserve(reader, 1).ok());
  EXPECT_EQ(Table(*cache, reader), original);
  EXPECT_EQ(cache->Stats().used_pages, 4u);
}

TEST(KvCacheTest, ChildReserveCopiesTheSharedPartialPage) {
  CheckCopyOnWrite(true);
}

TEST(KvCacheTest, ParentReserveCopiesTheSharedPartialPage) {
  CheckCopyOnWrite(false);
}

TEST(KvCacheTest, SharedFullPagesAreNotCopied) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  SequenceId parent = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(parent, 8).ok());
  SequenceId child = MustFork(*cache, parent);
  ASSERT_TRUE(cache->Reserve(child, 1).ok());
  const std::vector<PageId> parent_table = Table(*cache, parent);
  const std::vector<PageId> child_table = Table(*cache, child);
  ASSERT_EQ(child_table.size(), 3u);
  EXPECT_EQ(child_table[0], parent_table[0]);
  EXPECT_EQ(child_table[1], parent_table[1]);
  EXPECT_EQ(cache->RefCount(child_table[2]), 1u);
  EXPECT_EQ(cache->Stats().used_pages, 3u);
  EXPECT_EQ(cache->Stats().shared_pages, 2u);
}

TEST(KvCacheTest, ForkOfAForkCopiesOnce) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  SequenceId a = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(a, 6).ok());
  SequenceId b = MustFork(*cache, a);
  SequenceId c = MustFork(*cache, b);
  const PageId last = Table(*cache, a)[1];
  EXPECT_EQ(cache->RefCount(last), 3u);
  ASSERT_TRUE(cache->Reserve(b, 1).ok());  // copies; a and c still share
  EXPECT_EQ(cache->RefCount(last), 2u);
  ASSERT_TRUE(cache->Reserve(c, 1).ok());  // copies again; a keeps the original
  EXPECT_EQ(cache->RefCount(last), 1u);
  ASSERT_TRUE(cache->Reserve(a, 1).ok());  // in place
  EXPECT_EQ(Table(*cache, a)[1], last);
  EXPECT_EQ(cache->Stats().used_pages, 4u);
}

TEST(KvCacheTest, ForkBeyondTheMetadataBudgetChangesNothing) {
  // Forks copy page tables; the budget provides 4 x num_pages entries plus
  // headroom, so endless forks of a long sequence run out of metadata first.
  KvCacheConfig config = SmallConfig();
  config.num_pages = 256;
  config.page_size_tokens = 1;
  config.max_sequences = 1u << 16;
  auto cache = MustCreate(config);
  ASSERT_NE(cache, nullptr);
  SequenceId root = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(root, 256).ok());
  std::vector<SequenceId> forks;
  Status failure;
  for (int i = 0; i < 1000000 && failure.ok(); ++i) {
    auto fork = cache->Fork(root);
    if (fork.ok()) {
      forks.push_back(*fork);
    } else {
      failure = fork.status();
    }
  }
  ASSERT_FALSE(failure.ok());
  EXPECT_EQ(failure.code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(failure.message(), HasSubstr("metadata budget"));
  const Snapshot before = Take(*cache, {root, forks.back()});
  EXPECT_EQ(cache->Fork(root).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(Take(*cache, {root, forks.back()}), before);
  EXPECT_EQ(cache->RefCount(Table(*cache, root)[0]), forks.size() + 1);
  for (SequenceId fork : forks) ASSERT_TRUE(cache->FreeSequence(fork).ok());
  EXPECT_EQ(cache->RefCount(Table(*cache, root)[0]), 1u);
  EXPECT_EQ(cache->Stats().shared_pages, 0u);
}

// ---------------------------------------------------------------------------
// FreeSequence of shared pages

TEST(KvCacheTest, PagesReturnWithTheLastReference) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  SequenceId a = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(a, 12).ok());
  const std::vector<PageId> pages = Table(*cache, a);
  SequenceId b = MustFork(*cache, a);
  SequenceId c = MustFork(*cache, b);
  ASSERT_TRUE(cache->FreeSequence(a).ok());
  EXPECT_EQ(cache->Stats().used_pages, 3u);
  for (PageId page : pages) EXPECT_EQ(cache->RefCount(page), 2u);
  ASSERT_TRUE(cache->FreeSequence(b).ok());
  EXPECT_EQ(cache->Stats().used_pages, 3u);
  EXPECT_EQ(cache->Stats().shared_pages, 0u);
  ASSERT_TRUE(cache->FreeSequence(c).ok());
  const KvCacheStats stats = cache->Stats();
  EXPECT_EQ(stats.used_pages, 0u);
  EXPECT_EQ(stats.free_pages, 16u);
  EXPECT_EQ(stats.num_sequences, 0u);
  EXPECT_EQ(stats.high_water_pages, 3u);
  for (PageId page : pages) EXPECT_EQ(cache->RefCount(page), 0u);
  // And they can be had again: all 16.
  SequenceId d = MustCreateSequence(*cache);
  EXPECT_TRUE(cache->Reserve(d, 64).ok());
}

}  // namespace
}  // namespace rpa::memory
