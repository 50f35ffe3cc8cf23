#pragma once

// Shared helpers of the KvCache tests (kv_cache*_test.cc).

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

#include "rpa/memory/kv_cache.h"
#include "rpa/runtime/sanitizers.h"

namespace rpa::memory::testing_util {

// P = 16 pages of ps = 4 tokens, 2 kv heads of dim 4, f32, 2 layers:
// token_bytes = 2 * 2 * 4 * 4 = 64, page_bytes = 256.
inline KvCacheConfig SmallConfig() {
  return {.num_pages = 16,
          .page_size_tokens = 4,
          .num_kv_heads = 2,
          .head_dim = 4,
          .storage = StorageType::kF32,
          .num_layers = 2,
          .max_sequences = 64};
}

inline std::unique_ptr<KvCache> MustCreate(const KvCacheConfig& config) {
  auto cache = KvCache::Create(config);
  EXPECT_TRUE(cache.ok()) << cache.status();
  return cache.ok() ? std::move(*cache) : nullptr;
}

inline SequenceId MustCreateSequence(KvCache& cache) {
  auto seq = cache.CreateSequence();
  EXPECT_TRUE(seq.ok()) << seq.status();
  return seq.ok() ? *seq : SequenceId{};
}

inline SequenceId MustFork(KvCache& cache, SequenceId parent) {
  auto seq = cache.Fork(parent);
  EXPECT_TRUE(seq.ok()) << seq.status();
  return seq.ok() ? *seq : SequenceId{};
}

inline std::vector<PageId> Table(const KvCache& cache, SequenceId seq) {
  auto table = cache.PageTable(seq);
  EXPECT_TRUE(table.ok()) << table.status();
  if (!table.ok()) return {};
  return {table->begin(), table->end()};
}

inline std::uint32_t Length(const KvCache& cache, SequenceId seq) {
  auto length = cache.SequenceLength(seq);
  EXPECT_TRUE(length.ok()) << length.status();
  return length.ok() ? *length : 0;
}

inline std::string IdText(SequenceId seq) {
  return std::to_string(static_cast<std::uint64_t>(seq));
}

inline std::uint8_t Pattern(std::uint8_t tag, std::uint32_t layer,
                            std::uint32_t token, std::size_t byte) {
  return static_cast<std::uint8_t>(tag * 131u + layer * 31u + token * 7u +
                                   byte);
}

// Writes token `token` of a sequence (through its page table) in every layer.
inline void WriteToken(const KvCache& cache, SequenceId seq,
                       std::uint32_t token, std::uint8_t tag) {
  const std::vector<PageId> table = Table(cache, seq);
  const std::uint32_t ps = cache.config().page_size_tokens;
  ASSERT_LT(token / ps, table.size());
  for (std::uint32_t layer = 0; layer < cache.config().num_layers; ++layer) {
    const KvLayerView view = cache.Layer(layer);
    std::byte* slot = view.SlotAddress(table[token / ps], token % ps);
    for (std::size_t b = 0; b < view.token_bytes; ++b) {
      slot[b] = static_cast<std::byte>(Pattern(tag, layer, token, b));
    }
  }
}

inline bool TokenIs(const KvCache& cache, PageId page, std::uint32_t slot_index,
                    std::uint32_t token, std::uint8_t tag) {
  for (std::uint32_t layer = 0; layer < cache.config().num_layers; ++layer) {
    const KvLayerView view = cache.Layer(layer);
    const std::byte* slot = view.SlotAddress(page, slot_index);
    for (std::size_t b = 0; b < view.token_bytes; ++b) {
      if (slot[b] != static_cast<std::byte>(Pattern(tag, layer, token, b)))
        return false;
    }
  }
  return true;
}

// Everything a failed call must leave alone.
struct Snapshot {
  std::vector<std::vector<PageId>> tables;
  std::vector<std::uint32_t> lengths;
  std::vector<std::uint32_t> refcounts;
  std::tuple<std::uint32_t, std::uint32_t, std::uint32_t, std::uint32_t,
             std::uint32_t, std::uint32_t, std::size_t>
      stats;

  bool operator==(const Snapshot&) const = default;
};

inline Snapshot Take(const KvCache& cache,
                     const std::vector<SequenceId>& seqs) {
  Snapshot snapshot;
  for (SequenceId seq : seqs) {
    snapshot.tables.push_back(Table(cache, seq));
    snapshot.lengths.push_back(Length(cache, seq));
  }
  for (std::uint32_t p = 0; p < cache.config().num_pages; ++p) {
    snapshot.refcounts.push_back(cache.RefCount(MakePageId(p)));
  }
  const KvCacheStats s = cache.Stats();
  snapshot.stats = {s.num_pages,          s.free_pages,   s.used_pages,
                    s.high_water_pages,   s.shared_pages, s.num_sequences,
                    s.metadata_used_bytes};
  return snapshot;
}

}  // namespace rpa::memory::testing_util
