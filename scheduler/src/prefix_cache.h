#pragma once

// PrefixCache: automatic prefix caching over the KvCache's pages
// (scheduler/README.md, "The engine").
//
// A full page is keyed by a 64-bit hash chain: hash(page i) = H(hash(page
// i - 1), the page's token ids). An entry also records the page's token ids
// and its parent entry (page id + epoch), and a hit is confirmed by comparing
// both, so a hash collision is a miss, never wrong KV. Epochs (a counter
// bumped on every insertion) tell a live entry from a stale reference to a
// page that was evicted and reused.
//
// References: a cached page carries one KvCache reference of the cache
// (RetainPage); requests add theirs through their page tables. A cached page
// referenced by the cache alone is "evictable" and sits in an LRU list; it is
// released (ReleasePage) only when Evict is asked for room. The owner reports
// reference changes: OnAcquired after a table took a cached page, OnReleased
// after a table dropped one.
//
// Storage: everything is sized by num_pages at construction (entries, token
// ids, an open-addressing table of 2 x num_pages slots, the LRU links), so no
// operation allocates.
//
// Thread-safety: none; the engine serializes every call.

#include <cstdint>
#include <span>
#include <vector>

#include "rpa/memory/kv_cache.h"
#include "rpa/memory/page_id.h"

namespace rpa::scheduler::internal {

// A cache entry as seen by a request: valid while the page's epoch matches.
struct CachedPageRef {
  memory::PageId page{};
  std::uint64_t epoch = 0;  // 0: no entry
};

class PrefixCache {
 public:
  // Allocates its tables (std::bad_alloc escapes; the engine catches it).
  PrefixCache(memory::KvCache* cache, std::uint32_t page_size_tokens);

  static constexpr std::uint64_t kRootHash = 0x9e3779b97f4a7c15ULL;
  // The hash of a page whose parent's hash is parent_hash.
  static std::uint64_t ChainHash(std::uint64_t parent_hash,
                                 std::span<const std::int32_t> page_tokens);

  // The longest cached prefix of `hashes` (the chain of the request's first
  // hashes.size() full pages; tokens holds at least that many pages): writes
  // refs[0, n) and returns n. Does not take references.
  std::uint32_t Lookup(std::span<const std::uint64_t> hashes,
                       std::span<const std::int32_t> tokens,
                       std::span<CachedPageRef> refs) const;

  // Offers a request's full page whose KV is computed. Returns the entry that
  // now represents its contents: an existing equal entry (the request's page
  // stays private), or `page` itself, newly cached (one reference taken).
  // Returns an invalid ref when the parent is not a live entry (the chain is
  // broken there: a lookup could never reach this page).
  CachedPageRef Insert(memory::PageId page, std::uint64_t hash,
                       CachedPageRef parent,
                       std::span<const std::int32_t> page_tokens);

  bool Valid(CachedPageRef ref) const;
  bool IsCached(memory::PageId page) const;
  // Reference changes of a page made by the owner's page tables.
  void OnAcquired(memory::PageId page);
  void OnReleased(memory::PageId page);

  // Evicts up to `count` evictable pages, least recently used first; returns
  // how many it evicted (each became a free page).
  std::uint32_t Evict(std::uint32_t count);
  // Releases every cached page (evictable or not); the entries are dropped.
  void Clear();

  std::uint32_t num_cached() const { return num_cached_; }
  std::uint32_t num_evictable() const { return num_evictable_; }
  std::uint64_t evictions() const { return evictions_; }

 private:
  static constexpr std::uint32_t kNil = 0xffffffffU;

  struct Entry {
    std::uint64_t hash = 0;
    std::uint64_t epoch = 0;  // 0: not cached
    std::uint64_t parent_epoch = 0;
    std::uint32_t parent_page = kNil;  // kNil: the first page of a prompt
    std::uint32_t lru_prev = kNil;
    std::uint32_t lru_next = kNil;
    bool in_lru = false;
  };

  bool Matches(std::uint32_t index, std::uint64_t hash, CachedPageRef parent,
               std::span<const std::int32_t> page_tokens) const;
  std::uint32_t Find(std::uint64_t hash, CachedPageRef parent,
                     std::span<const std::int32_t> page_tokens) const;
  void TableInsert(std::uint32_t index);
  void TableErase(std::uint32_t index);
  void LruPushBack(std::uint32_t index);
  void LruUnlink(std::uint32_t index);
  void Drop(std::uint32_t index);

  memory::KvCache* cache_;
  std::uint32_t num_pages_;
  std::uint32_t page_size_tokens_;
  std::vector<Entry> entries_;        // [num_pages]
  std::vector<std::int32_t> tokens_;  // [num_pages * page_size_tokens]
  std::vector<std::uint32_t> table_;  // open addressing; kNil = empty
  std::uint64_t table_mask_ = 0;
  std::uint32_t lru_head_ = kNil;
  std::uint32_t lru_tail_ = kNil;
  std::uint64_t next_epoch_ = 1;
  std::uint32_t num_cached_ = 0;
  std::uint32_t num_evictable_ = 0;
  std::uint64_t evictions_ = 0;
};

}  // namespace rpa::scheduler::internal
