// Page-level sharing of the KvCache (CreateSequenceFromPages, RetainPage,
// ReleasePage): what the scheduler's prefix cache is built on.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "memory/kv_cache_test_util.h"

#include "rpa/memory/kv_cache.h"
#include "rpa/runtime/sanitizers.h"

namespace rpa::memory {
namespace {

using namespace ::rpa::memory::testing_util;  // NOLINT: test helpers
using ::testing::HasSubstr;

TEST(KvCacheSharingTest, RetainKeepsAPageAfterItsSequenceIsFreed) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  const SequenceId seq = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(seq, 8).ok());
  for (std::uint32_t t = 0; t < 8; ++t) WriteToken(*cache, seq, t, 5);
  const std::vector<PageId> pages = Table(*cache, seq);
  ASSERT_EQ(pages.size(), 2u);
  ASSERT_TRUE(cache->RetainPage(pages[0]).ok());
  EXPECT_EQ(cache->RefCount(pages[0]), 2u);
  EXPECT_EQ(cache->Stats().shared_pages, 1u);
  ASSERT_TRUE(cache->FreeSequence(seq).ok());
  EXPECT_EQ(cache->RefCount(pages[0]), 1u);
  EXPECT_EQ(cache->RefCount(pages[1]), 0u);
  EXPECT_EQ(cache->Stats().used_pages, 1u);
  // The retained page still holds the sequence's tokens.
  for (std::uint32_t t = 0; t < 4; ++t) {
    EXPECT_TRUE(TokenIs(*cache, pages[0], t, t, 5)) << t;
  }
  ASSERT_TRUE(cache->ReleasePage(pages[0]).ok());
  EXPECT_EQ(cache->RefCount(pages[0]), 0u);
  EXPECT_EQ(cache->Stats().used_pages, 0u);
  EXPECT_EQ(cache->Stats().free_pages, 16u);
}

TEST(KvCacheSharingTest, RetainAndReleaseRejectFreeAndOutOfRangePages) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  const SequenceId seq = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(seq, 4).ok());
  const PageId used = Table(*cache, seq)[0];
  const PageId unused = MakePageId(PageIndex(used) == 0 ? 1 : 0);
  const Snapshot before = Take(*cache, {seq});
  for (PageId bad : {unused, MakePageId(16), MakePageId(1u << 30)}) {
    const Status retain = cache->RetainPage(bad);
    EXPECT_EQ(retain.code(), StatusCode::kInvalidArgument) << retain;
    EXPECT_THAT(retain.message(), HasSubstr(std::to_string(PageIndex(bad))));
    const Status release = cache->ReleasePage(bad);
    EXPECT_EQ(release.code(), StatusCode::kInvalidArgument) << release;
  }
  EXPECT_EQ(Take(*cache, {seq}), before);
  // A released page cannot be released again.
  ASSERT_TRUE(cache->RetainPage(used).ok());
  ASSERT_TRUE(cache->ReleasePage(used).ok());
  ASSERT_TRUE(cache->FreeSequence(seq).ok());
  EXPECT_EQ(cache->ReleasePage(used).code(), StatusCode::kInvalidArgument);
}

TEST(KvCacheSharingTest, CreateFromPagesSharesFullPages) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  const SequenceId owner = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(owner, 10).ok());
  for (std::uint32_t t = 0; t < 10; ++t) WriteToken(*cache, owner, t, 9);
  const std::vector<PageId> owner_pages = Table(*cache, owner);
  const std::vector<PageId> prefix(owner_pages.begin(),
                                   owner_pages.begin() + 2);

  auto shared = cache->CreateSequenceFromPages(prefix, 8);
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_EQ(Length(*cache, *shared), 8u);
  EXPECT_EQ(Table(*cache, *shared), prefix);
  EXPECT_EQ(cache->RefCount(prefix[0]), 2u);
  EXPECT_EQ(cache->RefCount(prefix[1]), 2u);
  EXPECT_EQ(cache->Stats().shared_pages, 2u);
  EXPECT_EQ(cache->Stats().num_sequences, 2u);

  // Appending starts a fresh page: the shared ones are full.
  ASSERT_TRUE(cache->Reserve(*shared, 3).ok());
  const std::vector<PageId> grown = Table(*cache, *shared);
  ASSERT_EQ(grown.size(), 3u);
  EXPECT_EQ(grown[0], prefix[0]);
  EXPECT_EQ(grown[1], prefix[1]);
  EXPECT_NE(grown[2], owner_pages[2]);

  ASSERT_TRUE(cache->FreeSequence(owner).ok());
  EXPECT_EQ(cache->RefCount(prefix[0]), 1u);
  EXPECT_EQ(cache->RefCount(owner_pages[2]), 0u);
  for (std::uint32_t t = 0; t < 8; ++t) {
    EXPECT_TRUE(TokenIs(*cache, grown[t / 4], t % 4, t, 9)) << t;
  }
  ASSERT_TRUE(cache->FreeSequence(*shared).ok());
  EXPECT_EQ(cache->Stats().used_pages, 0u);
}

// The prefix cache's "whole prompt cached" case: the sequence reuses a full
// page but holds one token less, so its next token lands in a shared page
// that must be copied first.
TEST(KvCacheSharingTest, PartialLastSharedPageIsCopiedOnWrite) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  const SequenceId owner = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(owner, 8).ok());
  for (std::uint32_t t = 0; t < 8; ++t) WriteToken(*cache, owner, t, 3);
  const std::vector<PageId> pages = Table(*cache, owner);
  ASSERT_TRUE(cache->RetainPage(pages[0]).ok());
  ASSERT_TRUE(cache->RetainPage(pages[1]).ok());
  ASSERT_TRUE(cache->FreeSequence(owner).ok());  // only the retains remain

  auto reader = cache->CreateSequenceFromPages(pages, 7);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(cache->RefCount(pages[1]), 2u);
  ASSERT_TRUE(cache->Reserve(*reader, 1).ok());
  const std::vector<PageId> table = Table(*cache, *reader);
  ASSERT_EQ(table.size(), 2u);
  EXPECT_EQ(table[0], pages[0]);
  EXPECT_NE(table[1], pages[1]);  // the private copy
  EXPECT_EQ(cache->RefCount(pages[1]), 1u);
  EXPECT_EQ(cache->RefCount(table[1]), 1u);
  for (std::uint32_t t = 4; t < 7; ++t) {
    EXPECT_TRUE(TokenIs(*cache, table[1], t % 4, t, 3)) << t;
  }
  // Writing the copy leaves the retained original alone.
  WriteToken(*cache, *reader, 7, 4);
  EXPECT_TRUE(TokenIs(*cache, pages[1], 3, 7, 3));
  EXPECT_TRUE(TokenIs(*cache, table[1], 3, 7, 4));
  ASSERT_TRUE(cache->FreeSequence(*reader).ok());
  ASSERT_TRUE(cache->ReleasePage(pages[0]).ok());
  ASSERT_TRUE(cache->ReleasePage(pages[1]).ok());
  EXPECT_EQ(cache->Stats().used_pages, 0u);
}

TEST(KvCacheSharingTest, CreateFromPagesValidatesFirst) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  const SequenceId owner = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(owner, 8).ok());
  const std::vector<PageId> pages = Table(*cache, owner);
  const PageId free_page = [&] {
    for (std::uint32_t p = 0; p < 16; ++p) {
      if (cache->RefCount(MakePageId(p)) == 0) return MakePageId(p);
    }
    return MakePageId(0);
  }();
  const Snapshot before = Take(*cache, {owner});
  struct Case {
    std::vector<PageId> pages;
    std::uint32_t num_tokens;
    const char* message;
  };
  const std::vector<Case> cases = {
      {pages, 9, "needs 3 pages"},
      {pages, 4, "needs 1 pages"},
      {{pages[0]}, 0, "needs 0 pages"},
      {{pages[0], free_page}, 8, "not allocated"},
      {{pages[0], MakePageId(99)}, 8, "out of range"},
      {{pages[0], pages[0]}, 8, "listed twice"},
      {pages, 0x80000000u, "above 2^31 - 1"},
  };
  for (const Case& c : cases) {
    auto seq = cache->CreateSequenceFromPages(c.pages, c.num_tokens);
    ASSERT_FALSE(seq.ok()) << c.message;
    EXPECT_EQ(seq.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(seq.status().message(), HasSubstr(c.message));
    EXPECT_EQ(Take(*cache, {owner}), before) << c.message;
  }
  // Empty is an empty sequence.
  auto empty = cache->CreateSequenceFromPages({}, 0);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(Length(*cache, *empty), 0u);
}

TEST(KvCacheSharingTest, CreateFromPagesRespectsMaxSequences) {
  KvCacheConfig config = SmallConfig();
  config.max_sequences = 2;
  auto cache = MustCreate(config);
  ASSERT_NE(cache, nullptr);
  const SequenceId owner = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(owner, 4).ok());
  const std::vector<PageId> pages = Table(*cache, owner);
  ASSERT_TRUE(cache->CreateSequenceFromPages(pages, 4).ok());
  const Snapshot before = Take(*cache, {owner});
  auto third = cache->CreateSequenceFromPages(pages, 4);
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(Take(*cache, {owner}), before);
}

// Random retains, releases, shared creations and frees against a model of
// the reference counts: every page is free exactly when nobody holds it.
TEST(KvCacheSharingTest, RandomSharingKeepsRefcountsExact) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  std::mt19937 rng(7);  // 32-bit results: the casts below are exact
  std::vector<SequenceId> seqs;
  std::vector<PageId> retained;  // one entry per retain
  for (int step = 0; step < 3000; ++step) {
    const int op = static_cast<int>(rng() % 5);
    if (op == 0 || seqs.empty()) {
      auto seq = cache->CreateSequence();
      if (seq.ok() &&
          cache->Reserve(*seq, 1 + static_cast<std::uint32_t>(rng() % 9))
              .ok()) {
        seqs.push_back(*seq);
      } else if (seq.ok()) {
        ASSERT_TRUE(cache->FreeSequence(*seq).ok());
      }
    } else if (op == 1) {
      const SequenceId from = seqs[rng() % seqs.size()];
      std::vector<PageId> table = Table(*cache, from);
      const auto keep = static_cast<std::uint32_t>(rng() % (table.size() + 1));
      table.resize(keep);
      const std::uint32_t tokens =
          keep == 0
              ? 0
              : (keep - 1) * 4 + 1 + static_cast<std::uint32_t>(rng() % 4);
      auto seq = cache->CreateSequenceFromPages(table, tokens);
      ASSERT_TRUE(seq.ok() ||
                  seq.status().code() == StatusCode::kResourceExhausted)
          << seq.status();
      if (seq.ok()) seqs.push_back(*seq);
    } else if (op == 2) {
      const SequenceId from = seqs[rng() % seqs.size()];
      const std::vector<PageId> table = Table(*cache, from);
      if (!table.empty()) {
        const PageId page = table[rng() % table.size()];
        ASSERT_TRUE(cache->RetainPage(page).ok());
        retained.push_back(page);
      }
    } else if (op == 3 && !retained.empty()) {
      const std::size_t i = rng() % retained.size();
      ASSERT_TRUE(cache->ReleasePage(retained[i]).ok());
      retained.erase(retained.begin() + static_cast<std::ptrdiff_t>(i));
    } else if (op == 4) {
      const std::size_t i = rng() % seqs.size();
      if (rng() % 2 == 0) {
        const Status grown =
            cache->Reserve(seqs[i], 1 + static_cast<std::uint32_t>(rng() % 5));
        ASSERT_TRUE(grown.ok() ||
                    grown.code() == StatusCode::kResourceExhausted)
            << grown;
      } else {
        ASSERT_TRUE(cache->FreeSequence(seqs[i]).ok());
        seqs.erase(seqs.begin() + static_cast<std::ptrdiff_t>(i));
      }
    }
    // The model: references = table entries + retains.
    std::vector<std::uint32_t> expected(16, 0);
    for (SequenceId seq : seqs) {
      for (PageId page : Table(*cache, seq)) ++expected[PageIndex(page)];
    }
    for (PageId page : retained) ++expected[PageIndex(page)];
    std::uint32_t used = 0;
    for (std::uint32_t p = 0; p < 16; ++p) {
      ASSERT_EQ(cache->RefCount(MakePageId(p)), expected[p])
          << "page " << p << " step " << step;
      used += expected[p] > 0 ? 1U : 0U;
    }
    ASSERT_EQ(cache->Stats().used_pages, used);
  }
  for (SequenceId seq : seqs) ASSERT_TRUE(cache->FreeSequence(seq).ok());
  for (PageId page : retained) ASSERT_TRUE(cache->ReleasePage(page).ok());
  EXPECT_EQ(cache->Stats().used_pages, 0u);
  EXPECT_EQ(cache->Stats().free_pages, 16u);
}

}  // namespace
}  // namespace rpa::memory
