#include "rpa/memory/kv_cache.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "memory/kv_cache_test_util.h"

#include "rpa/runtime/sanitizers.h"

namespace rpa::memory {
namespace {

using namespace ::rpa::memory::testing_util;  // NOLINT: test helpers
using ::testing::AllOf;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------
// Create

TEST(KvCacheTest, ZeroFieldsAreRejectedByName) {
  const std::pair<const char*, std::uint32_t KvCacheConfig::*> fields[] = {
      {"num_pages", &KvCacheConfig::num_pages},
      {"page_size_tokens", &KvCacheConfig::page_size_tokens},
      {"num_kv_heads", &KvCacheConfig::num_kv_heads},
      {"head_dim", &KvCacheConfig::head_dim},
      {"num_layers", &KvCacheConfig::num_layers},
      {"max_sequences", &KvCacheConfig::max_sequences}};
  for (const auto& [name, field] : fields) {
    KvCacheConfig config = SmallConfig();
    config.*field = 0;
    auto cache = KvCache::Create(config);
    ASSERT_FALSE(cache.ok()) << name;
    EXPECT_EQ(cache.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(cache.status().message(),
              std::string(name) + " must be positive, got 0");
  }
}

TEST(KvCacheTest, TooManyPagesForInt32IndicesIsRejected) {
  KvCacheConfig config = SmallConfig();
  config.num_pages = 1u << 31;
  auto cache = KvCache::Create(config);
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(cache.status().message(),
              AllOf(HasSubstr("num_pages"), HasSubstr("2147483648")));
}

TEST(KvCacheTest, UnknownStorageIsRejected) {
  KvCacheConfig config = SmallConfig();
  config.storage = static_cast<StorageType>(7);
  auto cache = KvCache::Create(config);
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(cache.status().message(),
              AllOf(HasSubstr("storage"), HasSubstr("7")));
}

TEST(KvCacheTest, OversizedCacheIsRejectedNamingEveryFactor) {
  KvCacheConfig config = SmallConfig();
  config.num_pages = 1u << 30;
  config.page_size_tokens = 1u << 20;
  config.num_kv_heads = 1000;
  config.head_dim = 999;
  config.num_layers = 77;
  auto cache = KvCache::Create(config);
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(
      cache.status().message(),
      AllOf(HasSubstr("num_layers 77"), HasSubstr("num_pages 1073741824"),
            HasSubstr("page_size_tokens 1048576"),
            HasSubstr("num_kv_heads 1000"), HasSubstr("head_dim 999")));
}

TEST(KvCacheTest, NewCacheHasEveryPageFree) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  const KvCacheStats stats = cache->Stats();
  EXPECT_EQ(stats.num_pages, 16u);
  EXPECT_EQ(stats.free_pages, 16u);
  EXPECT_EQ(stats.used_pages, 0u);
  EXPECT_EQ(stats.high_water_pages, 0u);
  EXPECT_EQ(stats.shared_pages, 0u);
  EXPECT_EQ(stats.num_sequences, 0u);
  EXPECT_GT(stats.metadata_used_bytes,
            0u);  // reference counts, allocator bookkeeping
  for (std::uint32_t p = 0; p < 16; ++p)
    EXPECT_EQ(cache->RefCount(MakePageId(p)), 0u);
  EXPECT_EQ(cache->RefCount(MakePageId(16)), 0u);  // out of range
  EXPECT_EQ(cache->config().num_layers, 2u);
}

TEST(KvCacheTest, ManyCachesCanBeCreatedAndDestroyed) {
  // Every cache owns an Arena; the process may reserve only 64 mimalloc arenas.
  for (int i = 0; i < 300; ++i) {
    KvCacheConfig config = SmallConfig();
    config.num_pages = 8 + static_cast<std::uint32_t>(i % 13);
    config.storage = static_cast<StorageType>(i % 3);
    auto cache = MustCreate(config);
    ASSERT_NE(cache, nullptr) << i;
    SequenceId seq = MustCreateSequence(*cache);
    ASSERT_TRUE(cache->Reserve(seq, 9).ok());
  }
}

// ---------------------------------------------------------------------------
// Storage and layout

TEST(KvCacheTest, LayerAddressesFollowTheSpecFormula) {
  const KvCacheConfig config = {.num_pages = 5,
                                .page_size_tokens = 4,
                                .num_kv_heads = 2,
                                .head_dim = 8,
                                .storage = StorageType::kF32,
                                .num_layers = 3};
  auto cache = MustCreate(config);
  ASSERT_NE(cache, nullptr);
  const std::size_t token_bytes = 2 * 2 * 8 * 4;
  const std::size_t page_bytes = 4 * token_bytes;
  std::byte* const base = cache->Layer(0).data;
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(base) % 4096, 0u);
  for (std::uint32_t layer = 0; layer < 3; ++layer) {
    const KvLayerView view = cache->Layer(layer);
    EXPECT_EQ(view.data, base + layer * 5 * page_bytes);
    EXPECT_EQ(view.num_pages, 5u);
    EXPECT_EQ(view.page_size_tokens, 4u);
    EXPECT_EQ(view.num_combined_heads, 4u);
    EXPECT_EQ(view.head_dim, 8u);
    EXPECT_EQ(view.storage, StorageType::kF32);
    EXPECT_EQ(view.token_bytes, token_bytes);
    EXPECT_EQ(view.page_bytes, page_bytes);
    for (std::uint32_t p = 0; p < 5; ++p) {
      for (std::uint32_t s = 0; s < 4; ++s) {
        // kv_cache[page, slot, combined head, d] in C order, layer-major
        // planes.
        EXPECT_EQ(view.SlotAddress(MakePageId(p), s),
                  base + ((layer * 5 + p) * 4 + s) * token_bytes);
      }
    }
  }
#if !RPA_HAS_TSAN
  EXPECT_DEATH((void)cache->Layer(3), "layer");
#endif
}

TEST(KvCacheTest, HalfPrecisionStorageHalvesTheSizes) {
  for (StorageType storage : {StorageType::kF16, StorageType::kBf16}) {
    KvCacheConfig config = SmallConfig();
    config.storage = storage;
    auto cache = MustCreate(config);
    ASSERT_NE(cache, nullptr);
    const KvLayerView view = cache->Layer(1);
    EXPECT_EQ(view.storage, storage);
    EXPECT_EQ(view.token_bytes, 2u * 2 * 4 * 2);
    EXPECT_EQ(view.page_bytes, 4u * view.token_bytes);
    EXPECT_EQ(view.data, cache->Layer(0).data + 16 * view.page_bytes);
  }
}

TEST(KvCacheTest, WholeCacheIsWritable) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  SequenceId seq = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(seq, 16 * 4).ok());  // every page
  for (std::uint32_t t = 0; t < 64; ++t) WriteToken(*cache, seq, t, 5);
  const std::vector<PageId> table = Table(*cache, seq);
  for (std::uint32_t t = 0; t < 64; ++t)
    EXPECT_TRUE(TokenIs(*cache, table[t / 4], t % 4, t, 5));
}

// ---------------------------------------------------------------------------
// Reserve

TEST(KvCacheTest, ReserveAllocatesPagesAtPageBoundaries) {
  for (std::uint32_t ps : {1u, 4u, 16u}) {
    for (std::uint32_t kv_len : {1u, ps - 1, ps, ps + 1, 7 * ps + 3}) {
      if (kv_len == 0) continue;
      SCOPED_TRACE(testing::Message() << "ps " << ps << " kv_len " << kv_len);
      KvCacheConfig config = SmallConfig();
      config.num_pages = 64;
      config.page_size_tokens = ps;
      auto cache = MustCreate(config);
      ASSERT_NE(cache, nullptr);
      const std::uint32_t pages = (kv_len + ps - 1) / ps;

      // In one call.
      SequenceId whole = MustCreateSequence(*cache);
      ASSERT_TRUE(cache->Reserve(whole, kv_len).ok());
      EXPECT_EQ(Length(*cache, whole), kv_len);
      const std::vector<PageId> table = Table(*cache, whole);
      EXPECT_EQ(table.size(), pages);
      EXPECT_EQ(std::set<PageId>(table.begin(), table.end()).size(), pages);
      for (PageId page : table) EXPECT_EQ(cache->RefCount(page), 1u);
      EXPECT_EQ(cache->Stats().used_pages, pages);

      // Token by token: a page appears exactly when a token crosses into it.
      SequenceId stepwise = MustCreateSequence(*cache);
      for (std::uint32_t t = 1; t <= kv_len; ++t) {
        ASSERT_TRUE(cache->Reserve(stepwise, 1).ok());
        ASSERT_EQ(Table(*cache, stepwise).size(), (t + ps - 1) / ps) << t;
      }
      const std::vector<PageId> stepwise_table = Table(*cache, stepwise);
      for (PageId page : stepwise_table) {
        EXPECT_EQ(std::count(table.begin(), table.end(), page),
                  0);  // no page in two tables
      }
      EXPECT_EQ(cache->Stats().used_pages, 2 * pages);
      EXPECT_EQ(cache->Stats().high_water_pages, 2 * pages);
    }
  }
}

TEST(KvCacheTest, ReserveOfZeroTokensChangesNothing) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  SequenceId seq = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(seq, 0).ok());
  EXPECT_EQ(Length(*cache, seq), 0u);
  EXPECT_TRUE(Table(*cache, seq).empty());
  ASSERT_TRUE(cache->Reserve(seq, 6).ok());
  const Snapshot before = Take(*cache, {seq});
  ASSERT_TRUE(cache->Reserve(seq, 0).ok());
  EXPECT_EQ(Take(*cache, {seq}), before);
}

TEST(KvCacheTest, ReserveManyPagesAtOnce) {
  KvCacheConfig config = SmallConfig();
  config.num_pages = 1000;
  config.page_size_tokens = 1;
  auto cache = MustCreate(config);
  ASSERT_NE(cache, nullptr);
  SequenceId seq = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(seq, 300).ok());
  ASSERT_TRUE(cache->Reserve(seq, 700).ok());
  const std::vector<PageId> table = Table(*cache, seq);
  EXPECT_EQ(std::set<PageId>(table.begin(), table.end()).size(), 1000u);
  EXPECT_EQ(cache->Stats().free_pages, 0u);
}

TEST(KvCacheTest, LengthAbove2To31Minus1IsInvalid) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  SequenceId seq = MustCreateSequence(*cache);
  Status status = cache->Reserve(seq, 0x80000000u);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), AllOf(HasSubstr("num_tokens 2147483648"),
                                      HasSubstr(IdText(seq))));
  ASSERT_TRUE(cache->Reserve(seq, 5).ok());
  status = cache->Reserve(seq, 0x7fffffffu - 4);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("2147483648"));
  EXPECT_EQ(Length(*cache, seq), 5u);
}

TEST(KvCacheTest, ExhaustedReserveChangesNothing) {
  auto cache = MustCreate(SmallConfig());  // 16 pages of 4 tokens
  ASSERT_NE(cache, nullptr);
  SequenceId a = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(a, 50).ok());  // 13 pages, the last half full
  SequenceId b = MustFork(*cache, a);
  SequenceId c = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(c, 1).ok());  // 14 pages used, 2 free
  const std::vector<SequenceId> all = {a, b, c};
  const Snapshot before = Take(*cache, all);

  // 3 new pages.
  Status status = cache->Reserve(c, 12);
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr("need 3 pages, 2 free"), HasSubstr(IdText(c))));
  EXPECT_EQ(Take(*cache, all), before);

  // b's last page is shared and half full: 2 new pages plus its private copy.
  status = cache->Reserve(b, 7);
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr("need 3 pages, 2 free"));
  EXPECT_EQ(Take(*cache, all), before);

  // What fits still works afterwards: the copy and one more page.
  EXPECT_TRUE(cache->Reserve(b, 6).ok());
  EXPECT_EQ(cache->Stats().free_pages, 0u);
}

// ---------------------------------------------------------------------------
// Ids and limits

TEST(KvCacheTest, StaleAndUnknownIdsAreNotFound) {
  auto cache = MustCreate(SmallConfig());
  ASSERT_NE(cache, nullptr);
  SequenceId stale = MustCreateSequence(*cache);
  ASSERT_TRUE(cache->Reserve(stale, 5).ok());
  ASSERT_TRUE(cache->FreeSequence(stale).ok());
  SequenceId reused = MustCreateSequence(*cache);  // takes the freed slot
  EXPECT_NE(reused, stale);
  EXPECT_EQ(static_cast<std::uint32_t>(static_cast<std::uint64_t>(reused)),
            static_cast<std::uint32_t>(static_cast<std::uint64_t>(stale)));
  const Snapshot before = Take(*cache, {reused});

  const SequenceId unknown =
      static_cast<SequenceId>((std::uint64_t{1} << 32) | 999);
  for (SequenceId bad : {stale, unknown, SequenceId{}}) {
    SCOPED_TRACE(IdText(bad));
    const auto expect_not_found = [&](const Status& status) {
      EXPECT_EQ(status.code(), StatusCode::kNotFound);
      EXPECT_THAT(status.message(), HasSubstr(IdText(bad)));
    };
    expect_not_found(cache->Reserve(bad, 1));
    expect_not_found(cache->FreeSequence(bad));
    expect_not_found(cache->Fork(bad).status());
    expect_not_found(cache->SequenceLength(bad).status());
    expect_not_found(cache->PageTable(bad).status());
    BatchPageTable out;
    const SequenceId batch[] = {reused, bad};
    expect_not_found(cache->ExportBatch(batch, 0, &out));
  }
  EXPECT_EQ(Take(*cache, {reused}), before);
  EXPECT_TRUE(cache->Reserve(reused, 1).ok());
}

TEST(KvCacheTest, MaxSequencesIsEnforced) {
  KvCacheConfig config = SmallConfig();
  config.max_sequences = 3;
  auto cache = MustCreate(config);
  ASSERT_NE(cache, nullptr);
  SequenceId a = MustCreateSequence(*cache);
  MustCreateSequence(*cache);
  MustFork(*cache, a);
  auto fourth = cache->CreateSequence();
  ASSERT_FALSE(fourth.ok());
  EXPECT_EQ(fourth.status().code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(fourth.status().message(), HasSubstr("max_sequences 3"));
  EXPECT_EQ(cache->Fork(a).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(cache->Stats().num_sequences, 3u);
  ASSERT_TRUE(cache->FreeSequence(a).ok());
  EXPECT_TRUE(cache->CreateSequence().ok());
}

}  // namespace
}  // namespace rpa::memory
