// Automatic prefix caching: reuse gives the same results as no reuse, hits
// are reported, the whole-prompt hit copies its last page on write, eviction
// is LRU and only on demand, and a hash collision is a miss.

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "prefix_cache.h"
#include "scheduler/engine_test_util.h"

#include "rpa/memory/kv_cache.h"
#include "rpa/scheduler/engine.h"

namespace rpa::scheduler {
namespace {

using namespace ::rpa::scheduler::testing_util;  // NOLINT: test helpers

// Requests sharing a 17-token system prompt (4 full pages of 4), arriving
// after the first has been prefilled.
std::vector<TestRequest> SharedPrefixWorkload() {
  const std::vector<std::int32_t> system = Prompt(17, 99);
  std::vector<TestRequest> requests;
  for (std::uint32_t i = 0; i < 5; ++i) {
    std::vector<std::int32_t> prompt = system;
    const std::vector<std::int32_t> suffix = Prompt(2 + 3 * i, i);
    prompt.insert(prompt.end(), suffix.begin(), suffix.end());
    requests.push_back({.id = 10 + i,
                        .prompt = prompt,
                        .max_new = 6,
                        .add_at_step = i == 0 ? 0 : static_cast<int>(4 + i)});
  }
  return requests;
}

TEST(EnginePrefixTest, ReuseGivesTheSameResultsAsNoReuse) {
  EngineOptions with = TinyOptions();
  with.enable_prefix_caching = true;
  EngineOptions without = with;
  without.enable_prefix_caching = false;
  const std::vector<TestRequest> requests = SharedPrefixWorkload();
  const RunResult a = Driver::Run(with, requests);
  const RunResult b = Driver::Run(without, requests);
  ASSERT_EQ(a.failure, "");
  ASSERT_EQ(b.failure, "");
  EXPECT_EQ(CompareTokensAndKv(a, b), "");
  EXPECT_EQ(CompareOutputs(a, b), "");
  // The four later requests each reused the 4 full pages of the system
  // prompt (16 tokens).
  EXPECT_EQ(a.stats.prefix_lookups, 5u);
  EXPECT_EQ(a.stats.prefix_hits, 4u);
  EXPECT_EQ(a.stats.prefix_hit_tokens, 4u * 16u);
  EXPECT_GT(a.stats.prefix_hit_rate, 0.5);
  EXPECT_LT(a.stats.prefill_tokens, b.stats.prefill_tokens);
  EXPECT_EQ(b.stats.prefix_lookups, 0u);
}

// The same 8-token prompt twice: the second request finds both pages
// cached, computes only its last token (its last page is shared, so it is
// copied before the write) and gets the same outputs.
TEST(EnginePrefixTest, WholePromptHitRecomputesTheLastTokenOnACopy) {
  const std::vector<std::int32_t> prompt = Prompt(8, 5);
  const std::vector<TestRequest> requests = {
      {.id = 1, .prompt = prompt, .max_new = 3, .add_at_step = 0},
      {.id = 2, .prompt = prompt, .max_new = 3, .add_at_step = 4}};
  EngineOptions without = TinyOptions();
  without.enable_prefix_caching = false;
  const RunResult a = Driver::Run(TinyOptions(), requests);
  const RunResult b = Driver::Run(without, requests);
  ASSERT_EQ(a.failure, "");
  ASSERT_EQ(b.failure, "");
  EXPECT_EQ(CompareTokensAndKv(a, b), "");
  EXPECT_EQ(CompareOutputs(a, b), "");
  EXPECT_EQ(a.stats.prefix_hits, 1u);
  EXPECT_EQ(a.stats.prefix_hit_tokens, 7u);
  // Request 2 computed 1 prompt token instead of 8.
  EXPECT_EQ(a.stats.prefill_tokens + 7, b.stats.prefill_tokens);
}

TEST(EnginePrefixTest, HitReportedPerRequest) {
  auto engine = Engine::Create(TinyOptions());
  ASSERT_TRUE(engine.ok());
  const std::vector<std::int32_t> prompt = Prompt(12, 3);
  ASSERT_TRUE((*engine)->AddRequest(1, prompt, 2).ok());
  Driver driver(engine->get());
  RunResult result;
  result.tokens[1] = prompt;
  while ((*engine)->HasWork())
    ASSERT_TRUE(driver.Step(&result)) << result.failure;
  std::vector<std::int32_t> longer = prompt;
  longer.push_back(7);
  ASSERT_TRUE((*engine)->AddRequest(2, longer, 2).ok());
  result.tokens[2] = longer;
  ASSERT_TRUE(driver.Step(&result)) << result.failure;
  EXPECT_EQ((*engine)->GetRequest(2)->prefix_hit_tokens, 12u);
}

// Cached pages stay as long as nobody needs room; when a request needs
// pages they are evicted least recently used first.
TEST(EnginePrefixTest, EvictsLeastRecentlyUsedOnlyWhenPagesRunOut) {
  EngineOptions options = TinyOptions();
  options.num_pages = 12;
  auto engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok());
  Driver driver(engine->get());
  RunResult result;
  const auto run = [&](RequestId id, std::vector<std::int32_t> prompt,
                       std::uint32_t max_new) {
    result.tokens[id] = prompt;
    ASSERT_TRUE((*engine)->AddRequest(id, prompt, max_new).ok());
    while ((*engine)->HasWork()) {
      ASSERT_TRUE(driver.Step(&result)) << result.failure;
    }
  };
  const std::vector<std::int32_t> old_prompt = Prompt(16, 1);
  const std::vector<std::int32_t> new_prompt = Prompt(16, 2);
  run(1, old_prompt, 1);  // 4 full pages cached
  run(2, new_prompt, 1);  // 4 more: 8 cached, 4 free
  EXPECT_EQ((*engine)->Stats().cached_pages, 8u);
  EXPECT_EQ((*engine)->Stats().prefix_evictions, 0u);
  // 2 pages fit in the free ones: nothing evicted.
  run(3, Prompt(7, 3), 1);
  EXPECT_EQ((*engine)->Stats().prefix_evictions, 0u);
  EXPECT_EQ((*engine)->Stats().cached_pages, 9u);
  // 32 tokens = 8 pages: 3 free + 5 evicted, least recently used first:
  // request 1's 4 pages, then request 2's last page (a sequence's pages are
  // queued tail first, so its shareable head stays longest).
  run(4, Prompt(32, 4), 1);
  EXPECT_EQ((*engine)->Stats().prefix_evictions, 5u);
  EXPECT_EQ((*engine)->Stats().prefix_hit_tokens, 0u);
  run(5, new_prompt, 1);  // request 2's first 3 pages are still there
  EXPECT_EQ((*engine)->Stats().prefix_hit_tokens, 12u);
  run(6, old_prompt, 1);  // request 1's are gone
  EXPECT_EQ((*engine)->Stats().prefix_hit_tokens, 12u);
  EXPECT_EQ((*engine)->Stats().prefix_hits, 1u);
}

// The prefix cache itself: a hash collision (same hash, other tokens or
// another parent) is never a hit.
TEST(PrefixCacheTest, CollisionIsAMiss) {
  auto cache = memory::KvCache::Create({.num_pages = 8,
                                        .page_size_tokens = 2,
                                        .num_kv_heads = 1,
                                        .head_dim = 4,
                                        .storage = memory::StorageType::kF32,
                                        .num_layers = 1});
  ASSERT_TRUE(cache.ok());
  internal::PrefixCache prefix(cache->get(), 2);
  auto seq = (*cache)->CreateSequence();
  ASSERT_TRUE(seq.ok());
  ASSERT_TRUE((*cache)->Reserve(*seq, 6).ok());
  const auto table = *(*cache)->PageTable(*seq);
  const std::vector<memory::PageId> pages(table.begin(), table.end());
  const std::vector<std::int32_t> a = {1, 2};
  const std::vector<std::int32_t> b = {3, 4};
  const std::uint64_t h = 42;  // a forced collision: the same hash for both
  const internal::CachedPageRef ra = prefix.Insert(pages[0], h, {}, a);
  ASSERT_NE(ra.epoch, 0u);
  std::vector<internal::CachedPageRef> refs(4);
  const std::vector<std::uint64_t> hashes = {h};
  EXPECT_EQ(prefix.Lookup(hashes, b, refs), 0u);  // same hash, other tokens
  EXPECT_EQ(prefix.Lookup(hashes, a, refs), 1u);
  EXPECT_EQ(refs[0].page, pages[0]);
  // Both contents cached under one hash.
  const internal::CachedPageRef rb = prefix.Insert(pages[1], h, {}, b);
  ASSERT_NE(rb.epoch, 0u);
  EXPECT_EQ(prefix.Lookup(hashes, b, refs), 1u);
  EXPECT_EQ(refs[0].page, pages[1]);
  // A child under parent a does not match under parent b.
  const std::vector<std::int32_t> ab = {1, 2, 5, 6};
  const std::vector<std::int32_t> bb = {3, 4, 5, 6};
  ASSERT_NE(prefix.Insert(pages[2], 7, ra, {ab.data() + 2, 2}).epoch, 0u);
  const std::vector<std::uint64_t> chain = {h, 7};
  EXPECT_EQ(prefix.Lookup(chain, ab, refs), 2u);
  EXPECT_EQ(prefix.Lookup(chain, bb, refs), 1u);
  // The same contents offered twice: the first entry represents both.
  const internal::CachedPageRef again = prefix.Insert(pages[1], h, {}, b);
  EXPECT_EQ(again.page, pages[1]);
  EXPECT_EQ(prefix.num_cached(), 3u);
  // Nothing is evictable while the sequence holds the pages.
  EXPECT_EQ(prefix.Evict(10), 0u);
  ASSERT_TRUE((*cache)->FreeSequence(*seq).ok());
  for (memory::PageId page : pages) prefix.OnReleased(page);
  EXPECT_EQ(prefix.num_evictable(), 3u);
  EXPECT_EQ(prefix.Evict(1), 1u);
  // The evicted page was the first released (LRU): page 0, the chain root,
  // so the chain is unreachable past it.
  EXPECT_EQ(prefix.Lookup(chain, ab, refs), 0u);
  EXPECT_FALSE(prefix.Valid(ra));
  prefix.Clear();
  EXPECT_EQ((*cache)->Stats().used_pages, 0u);
}

}  // namespace
}  // namespace rpa::scheduler
