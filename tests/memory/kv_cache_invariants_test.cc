// Whole-cache invariants of the KvCache: random operations against reference
// counts and counters, and ASan poisoning of freed pages in every layer.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "memory/kv_cache_test_util.h"

#include "rpa/memory/kv_cache.h"
#include "rpa/runtime/sanitizers.h"

namespace rpa::memory {
namespace {

using namespace ::rpa::memory::testing_util;  // NOLINT: test helpers

// ---------------------------------------------------------------------------
// Whole-cache invariants

TEST(KvCacheTest, RandomOperationsKeepTheInvariantsAndReturnEveryPage) {
  KvCacheConfig config = SmallConfig();
  config.num_pages = 48;
  config.page_size_tokens = 3;
  config.max_sequences = 12;
  auto cache = MustCreate(config);
  ASSERT_NE(cache, nullptr);
  std::mt19937 rng(20240607);
  std::vector<SequenceId> live;
  std::uint32_t max_used = 0;
  for (int step = 0; step < 4000; ++step) {
    const int op = static_cast<int>(rng() % 8);
    if (op == 0 || live.empty()) {
      auto seq = cache->CreateSequence();
      if (seq.ok()) live.push_back(*seq);
    } else if (op == 1) {
      auto seq = cache->Fork(live[rng() % live.size()]);
      if (seq.ok()) live.push_back(*seq);
    } else if (op == 2 && live.size() > 2) {
      const std::size_t i = rng() % live.size();
      ASSERT_TRUE(cache->FreeSequence(live[i]).ok());
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      const SequenceId seq = live[rng() % live.size()];
      const Snapshot before = Take(*cache, live);
      const Status status =
          cache->Reserve(seq, static_cast<std::uint32_t>(rng() % 7));
      if (!status.ok()) {
        ASSERT_EQ(status.code(), StatusCode::kResourceExhausted) << status;
        ASSERT_EQ(Take(*cache, live), before);
      }
    }
    // Invariants: tables match lengths; reference counts are the number of
    // tables holding a page; the counters agree with the counts.
    std::map<PageId, std::uint32_t> references;
    for (SequenceId seq : live) {
      const std::vector<PageId> table = Table(*cache, seq);
      ASSERT_EQ(table.size(), (Length(*cache, seq) + 2) / 3);
      ASSERT_EQ(std::set<PageId>(table.begin(), table.end()).size(),
                table.size());
      for (PageId page : table) ++references[page];
    }
    std::uint32_t used = 0;
    std::uint32_t shared = 0;
    for (std::uint32_t p = 0; p < config.num_pages; ++p) {
      const auto it = references.find(MakePageId(p));
      const std::uint32_t expected = it == references.end() ? 0 : it->second;
      ASSERT_EQ(cache->RefCount(MakePageId(p)), expected)
          << "page " << p << " step " << step;
      used += expected > 0 ? 1 : 0;
      shared += expected > 1 ? 1 : 0;
    }
    const KvCacheStats stats = cache->Stats();
    ASSERT_EQ(stats.used_pages, used);
    ASSERT_EQ(stats.free_pages, config.num_pages - used);
    ASSERT_EQ(stats.shared_pages, shared);
    ASSERT_EQ(stats.num_sequences, live.size());
    max_used = std::max(max_used, used);
    ASSERT_EQ(stats.high_water_pages, max_used);
  }
  for (SequenceId seq : live) ASSERT_TRUE(cache->FreeSequence(seq).ok());
  const KvCacheStats stats = cache->Stats();
  EXPECT_EQ(stats.used_pages, 0u);
  EXPECT_EQ(stats.free_pages, config.num_pages);
  EXPECT_EQ(stats.shared_pages, 0u);
  EXPECT_EQ(stats.num_sequences, 0u);
  for (std::uint32_t p = 0; p < config.num_pages; ++p) {
    EXPECT_EQ(cache->RefCount(MakePageId(p)), 0u);
  }
}

TEST(KvCacheTest, FreedPagesArePoisonedInEveryLayer) {
#if !RPA_HAS_ASAN
  GTEST_SKIP() << "needs AddressSanitizer";
#else
  KvCacheConfig config = SmallConfig();
  config.num_layers = 3;
  auto cache = MustCreate(config);
  ASSERT_NE(cache, nullptr);
  SequenceId seq = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(seq, 8).ok());
  const std::vector<PageId> pages = Table(*cache, seq);
  const auto poisoned = [&](PageId page, std::uint32_t layer) {
    const KvLayerView view = cache->Layer(layer);
    const std::byte* first = view.SlotAddress(page, 0);
    const std::byte* last = first + view.page_bytes - 1;
    return RPA_ASAN_IS_POISONED(first) != 0 && RPA_ASAN_IS_POISONED(last) != 0;
  };
  const auto addressable = [&](PageId page, std::uint32_t layer) {
    const KvLayerView view = cache->Layer(layer);
    const std::byte* first = view.SlotAddress(page, 0);
    const std::byte* last = first + view.page_bytes - 1;
    return RPA_ASAN_IS_POISONED(first) == 0 && RPA_ASAN_IS_POISONED(last) == 0;
  };
  for (PageId page : pages) {
    for (std::uint32_t layer = 0; layer < 3; ++layer)
      EXPECT_TRUE(addressable(page, layer));
  }
  ASSERT_TRUE(cache->FreeSequence(seq).ok());
  for (PageId page : pages) {
    for (std::uint32_t layer = 0; layer < 3; ++layer) {
      EXPECT_TRUE(poisoned(page, layer))
          << PageIndex(page) << " layer " << layer;
    }
  }
  // A stale page-table entry now crashes instead of reading another
  // sequence's keys.
  const std::byte* stale = cache->Layer(2).SlotAddress(pages[1], 1);
  EXPECT_DEATH((void)*static_cast<const volatile std::byte*>(stale),
               "use-after-poison");
#endif
}

}  // namespace
}  // namespace rpa::memory
