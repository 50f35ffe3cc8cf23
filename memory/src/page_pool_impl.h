#pragma once

// Out-of-line members of PagePool<Atom> (the slow paths): cache slots and the
// thread memo, batch exchanges with the global pool, reclaiming and the
// counters (the batch calls are in page_pool_batch.h). Included at the end of
// page_pool.h only.

#include "page_pool.h"  // IWYU pragma: keep

#include "rpa/runtime/int_math.h"

namespace rpa::memory::internal {

namespace page_pool_detail {

inline void CheckValidated(const PageAllocatorOptions& options) {
  RPA_CHECK(options.num_pages > 0 &&
            options.num_pages < (std::uint32_t{1} << 31));
  RPA_CHECK(options.thread_cache_pages != 1 &&
            options.thread_cache_pages <= kMaxThreadCachePages);
  RPA_CHECK(options.max_thread_caches <= kMaxThreadCaches);
  RPA_CHECK(options.metadata != nullptr);
}

inline std::uint32_t CacheCapacity(const PageAllocatorOptions& options) {
  if (options.thread_cache_pages == 0 || options.max_thread_caches == 0)
    return 0;
  return std::bit_ceil(options.thread_cache_pages);
}

// Slots per cache, rounded up to whole cache lines so that two caches'
// slots never share a line.
template <typename Slot>
std::size_t SlotStride(std::uint32_t capacity) {
  const std::size_t per_line =
      std::max<std::size_t>(1, kCacheLineBytes / sizeof(Slot));
  return RoundUpToMultiple<std::size_t>(capacity, per_line);
}

}  // namespace page_pool_detail

template <template <typename> class Atom>
PagePool<Atom>::PagePool(const PageAllocatorOptions& options)
    : num_pages_(
          (page_pool_detail::CheckValidated(options), options.num_pages)),
      capacity_(page_pool_detail::CacheCapacity(options)),
      mask_(capacity_ == 0 ? 0 : capacity_ - 1),
      batch_(capacity_ / 2),
      max_caches_(capacity_ == 0 ? 0 : options.max_thread_caches),
      slot_stride_(
          page_pool_detail::SlotStride<Atom<std::uint32_t>>(capacity_)),
      memory_(options.memory),
      state_(options.metadata, num_pages_, alignof(Atom<std::uint8_t>),
             [](Atom<std::uint8_t>* where, std::size_t) {
               new (where) Atom<std::uint8_t>(kFree);
             }),
      // Initially every page is in the global stack, in order: 0 -> 1 -> ...
      next_(options.metadata, num_pages_, alignof(Atom<std::uint32_t>),
            [n = num_pages_](Atom<std::uint32_t>* where, std::size_t i) {
              new (where) Atom<std::uint32_t>(
                  i + 1 < n ? static_cast<std::uint32_t>(i + 1) : kNilPage);
            }),
      slots_(options.metadata, max_caches_ * slot_stride_, kCacheLineBytes,
             [](Atom<std::uint32_t>* where, std::size_t) {
               new (where) Atom<std::uint32_t>(kNilPage);
             }),
      caches_(options.metadata, max_caches_, kCacheLineBytes,
              [this](Cache* where, std::size_t i) {
                new (where) Cache(slots_.data() + i * slot_stride_);
              }),
      head_(PackHead(0, 0)) {
  id_ = LivePools::Register();  // last: nothing else can throw after it
#if RPA_HAS_ASAN
  ForEachPlane(0, num_pages_,
               [](std::byte* p, std::size_t n) { RPA_ASAN_POISON(p, n); });
#endif
}

template <template <typename> class Atom>
PagePool<Atom>::~PagePool() {
  // From here on no thread-exit hook touches this pool; live threads' memo
  // entries for it are never matched again (ids are not reused).
  LivePools::Unregister(id_);
#if RPA_HAS_ASAN
  // The page memory belongs to the caller and outlives us: leave it usable.
  ForEachPlane(0, num_pages_,
               [](std::byte* p, std::size_t n) { RPA_ASAN_UNPOISON(p, n); });
#endif
}

template <template <typename> class Atom>
std::size_t PagePool<Atom>::MetadataBytes(const PageAllocatorOptions& options) {
  const std::uint32_t capacity = page_pool_detail::CacheCapacity(options);
  const std::size_t caches = capacity == 0 ? 0 : options.max_thread_caches;
  const std::size_t pages = options.num_pages;
  return pages * (sizeof(Atom<std::uint8_t>) + sizeof(Atom<std::uint32_t>)) +
         caches * (sizeof(Cache) +
                   page_pool_detail::SlotStride<Atom<std::uint32_t>>(capacity) *
                       sizeof(Atom<std::uint32_t>));
}

// ---- Thread cache slots -----------------------------------------------------

template <template <typename> class Atom>
typename PagePool<Atom>::Cache* PagePool<Atom>::LocalCacheSlow() noexcept {
  for (std::uint32_t i = 0; i < memo_.num_entries; ++i) {
    if (memo_.entries[i].id == id_) {
      memo_.hot_id = id_;
      memo_.hot_cache = memo_.entries[i].cache;
      return memo_.hot_cache;
    }
  }
  Cache* cache = nullptr;
  if (capacity_ != 0 && !memo_.exiting) {
    if (memo_.num_entries == kMemoEntries &&
        memo_.purged_at != LivePools::NumUnregistered()) {
      // Drop entries of destroyed pools (their slots died with them). Only
      // when some pool died since the last purge: no lock otherwise.
      memo_.purged_at = LivePools::NumUnregistered();
      for (std::uint32_t i = 0; i < memo_.num_entries;) {
        if (LivePools::IsLive(memo_.entries[i].id)) {
          ++i;
        } else {
          memo_.entries[i] = memo_.entries[--memo_.num_entries];
        }
      }
    }
    // With kMemoEntries live pools already in use, this thread uses this
    // pool's global stack (uncached) rather than claim a slot it could not
    // remember to release.
    if (memo_.num_entries < kMemoEntries) {
      cache = ClaimCache();
      memo_.entries[memo_.num_entries++] = {id_, this, cache};
      if (cache != nullptr) exit_hook_.armed = true;
    }
  }
  memo_.hot_id = id_;
  memo_.hot_cache = cache;
  return cache;
}

template <template <typename> class Atom>
typename PagePool<Atom>::Cache* PagePool<Atom>::ClaimCache() noexcept {
  for (std::uint32_t i = 0; i < max_caches_; ++i) {
    Cache& cache = caches_[i];
    std::uint32_t state = cache.owner.load(std::memory_order_relaxed);
    if (state == kSlotOwned) continue;
    // Acquire: adopting an orphan continues its previous owner's deque, so
    // that owner's writes (bottom, slots, private fields) must be visible;
    // pairs with the release in ReleaseCache.
    if (cache.owner.compare_exchange_strong(state, kSlotOwned,
                                            std::memory_order_acquire,
                                            std::memory_order_relaxed)) {
      // Thieves and Stats scan caches_[0, slots_high_). Relaxed: the deque
      // itself carries the ordering (thieves acquire bottom).
      std::uint32_t high = slots_high_.load(std::memory_order_relaxed);
      while (high < i + 1 && !slots_high_.compare_exchange_weak(
                                 high, i + 1, std::memory_order_relaxed,
                                 std::memory_order_relaxed)) {
      }
      return &cache;
    }
  }
  return nullptr;
}

template <template <typename> class Atom>
void PagePool<Atom>::ReleaseCache(Cache& cache) noexcept {
  Publish(cache);
  cache.owner.store(kSlotOrphaned, std::memory_order_release);
}

template <template <typename> class Atom>
void PagePool<Atom>::ReleaseAllAtThreadExit() noexcept {
  memo_.exiting =
      true;  // later calls from this thread (other TLS destructors) go uncached
  memo_.hot_id = 0;
  memo_.hot_cache = nullptr;
  for (std::uint32_t i = 0; i < memo_.num_entries; ++i) {
    const typename ThreadMemo::Entry entry = memo_.entries[i];
    if (entry.cache == nullptr) continue;
    LivePools::IfLive(entry.id,
                      [&] { entry.pool->ReleaseCache(*entry.cache); });
  }
  memo_.num_entries = 0;
}

template <template <typename> class Atom>
void PagePool<Atom>::ReleaseThreadCache() noexcept {
  if (memo_.hot_id == id_) {
    memo_.hot_id = 0;
    memo_.hot_cache = nullptr;
  }
  for (std::uint32_t i = 0; i < memo_.num_entries; ++i) {
    if (memo_.entries[i].id != id_) continue;
    if (memo_.entries[i].cache != nullptr)
      ReleaseCache(*memo_.entries[i].cache);
    memo_.entries[i] = memo_.entries[--memo_.num_entries];
    return;
  }
}

template <template <typename> class Atom>
std::uint32_t PagePool<Atom>::CountSlots(std::uint32_t state) const noexcept {
  std::uint32_t count = 0;
  for (std::uint32_t i = 0; i < max_caches_; ++i) {
    if (caches_[i].owner.load(std::memory_order_relaxed) == state) ++count;
  }
  return count;
}

// ---- Moving batches, reclaiming ---------------------------------------------

// Owner, with its deque empty (Take just failed, so top == bottom): moves up
// to batch_ pages from the global stack into the deque and keeps one.
template <template <typename> class Atom>
std::uint32_t PagePool<Atom>::Refill(Cache& cache) noexcept {
  if (GlobalLooksEmpty()) return kNilPage;  // spares the transfer bracket
  BeginTransfer();
  const std::int64_t b = cache.bottom.load(std::memory_order_relaxed);
  std::uint32_t kept = kNilPage;
  // Writing slots beyond bottom during the walk is invisible to thieves: they
  // read only below the bottom they acquired, and a stale thief that reads a
  // slot being rewritten fails its CAS on top.
  const std::uint32_t n =
      PopBatch(batch_, [&](std::uint32_t i, std::uint32_t page) {
        Slot(cache, b + i).store(page, std::memory_order_relaxed);
        kept = page;
      });
  if (n > 1) cache.bottom.store(b + n - 1, std::memory_order_release);
  EndTransfer();
  return n == 0 ? kNilPage : kept;
}

// Owner, with its deque full: moves batch_ pages from the top (the coldest
// ones; the hot ones stay local) to the global stack as one chain. Links are
// written only after TakeTop's CAS made the pages ours: a page a thief stole
// meanwhile may already be back in the global stack, linked.
template <template <typename> class Atom>
void PagePool<Atom>::Flush(Cache& cache) noexcept {
  BeginTransfer();
  std::uint32_t first = kNilPage;
  std::uint32_t last = kNilPage;
  TakeTop(cache, batch_, /*exactly=*/false,
          [&](std::uint32_t, std::uint32_t page) {
            if (last == kNilPage) {
              first = page;
            } else {
              next_[last].store(page, std::memory_order_relaxed);
            }
            last = page;
          });
  if (first != kNilPage) PushChain(first, last);
  EndTransfer();
}

template <template <typename> class Atom>
std::uint32_t PagePool<Atom>::StealFromAny(const Cache* own) noexcept {
  const std::uint32_t high = slots_high_.load(std::memory_order_relaxed);
  // Start after our own slot so thieves spread over victims.
  const std::uint32_t start =
      own == nullptr ? 0 : static_cast<std::uint32_t>(own - caches_.data()) + 1;
  for (std::uint32_t k = 0; k < high; ++k) {
    Cache& victim = caches_[(start + k) % high];
    if (&victim == own) continue;
    for (;;) {
      std::uint32_t page = kNilPage;
      const StealResult result = Steal(victim, &page);
      if (result == StealResult::kStolen) return page;
      if (result == StealResult::kEmpty) break;
      // kLostRace: someone else took that page; try the new top.
    }
  }
  return kNilPage;
}

// The last resort of Allocate: the local cache (if any) is empty. Scans the
// global stack and every other cache (orphans included), and reports "none"
// only after a scan during which no transfer was in progress or completed.
// A page is invisible to a scan only while a transfer carries it between the
// global stack and a deque, and every transfer is bracketed by
// BeginTransfer/EndTransfer (seq_cst RMWs on transfers_): the removal from
// the source is a release RMW (PopBatch, TakeTop) that the scan's acquire
// load reads from or after, so a scan that missed the page also sees the
// bracket when it re-reads transfers_ and scans again. Bounded: each rescan
// means another call moved pages, so the loop never waits on anyone.
template <template <typename> class Atom>
std::uint32_t PagePool<Atom>::Reclaim(Cache* own) noexcept {
  for (int scan = 0; scan < kMaxReclaimScans; ++scan) {
    const std::uint64_t before = transfers_.load(std::memory_order_seq_cst);
    std::uint32_t page = own != nullptr ? Refill(*own) : PopOne();
    if (page == kNilPage) page = StealFromAny(own);
    if (page != kNilPage) return page;
    const std::uint64_t after = transfers_.load(std::memory_order_seq_cst);
    if (after == before && static_cast<std::uint32_t>(after) == 0) break;
  }
  return kNilPage;
}

template <template <typename> class Atom>
std::uint32_t PagePool<Atom>::AllocateRefill(Cache& cache) noexcept {
  std::uint32_t page = Refill(cache);
  if (page == kNilPage) page = Reclaim(&cache);
  if (page == kNilPage) return kNilPage;
  Commit(page);
  CountAllocations(cache, 1);
  Publish(cache);  // a sampling point for the high-water mark
  return page;
}

template <template <typename> class Atom>
std::uint32_t PagePool<Atom>::AllocateUncached() noexcept {
  std::uint32_t page = PopOne();
  if (page == kNilPage) page = Reclaim(nullptr);
  if (page == kNilPage) return kNilPage;
  Commit(page);
  CountUncached(1);
  return page;
}

// Free without a cache, or with a full one.
template <template <typename> class Atom>
void PagePool<Atom>::FreeSlow(Cache* cache, std::uint32_t page) noexcept {
  if (cache == nullptr) {
    PushChain(page, page);
    CountUncached(-1);
    return;
  }
  Flush(*cache);
  RPA_CHECK(
      TryPush(*cache, page));  // Flush left at least batch_ >= 1 free slots
  CountFrees(*cache, 1);
  Publish(*cache);
}

template <template <typename> class Atom>
void PagePool<Atom>::ReturnToGlobal(std::span<const PageId> pages) noexcept {
  if (pages.empty()) return;
  for (std::size_t i = 0; i + 1 < pages.size(); ++i) {
    next_[PageIndex(pages[i])].store(PageIndex(pages[i + 1]),
                                     std::memory_order_relaxed);
  }
  PushChain(PageIndex(pages.front()), PageIndex(pages.back()));
}

// ---- Counters ---------------------------------------------------------------

// used = published + every cache's unpublished delta: exact when no call is
// in progress. The high-water candidate adds the largest "peak since last
// publish" excess of any cache, which makes it exact with one thread (its
// peak is relative to a published value nobody else changes).
template <template <typename> class Atom>
PageAllocatorStats PagePool<Atom>::Stats() const noexcept {
  std::int64_t used = used_.load(std::memory_order_relaxed);
  std::int64_t excess = 0;
  const std::uint32_t high = slots_high_.load(std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < high; ++i) {
    const std::int64_t delta = caches_[i].delta.load(std::memory_order_relaxed);
    const std::int64_t peak = caches_[i].peak.load(std::memory_order_relaxed);
    used += delta;
    excess = std::max(excess, peak - delta);
  }
  const std::int64_t total = num_pages_;
  used = std::clamp<std::int64_t>(used, 0, total);
  RaiseHighWater(std::min(used + excess, total));
  const std::int64_t high_water = std::clamp<std::int64_t>(
      high_water_.load(std::memory_order_relaxed), used, total);
  PageAllocatorStats stats;
  stats.num_pages = num_pages_;
  stats.used_pages = static_cast<std::uint32_t>(used);
  stats.free_pages = static_cast<std::uint32_t>(total - used);
  stats.high_water_pages = static_cast<std::uint32_t>(high_water);
  return stats;
}

}  // namespace rpa::memory::internal
