#pragma once

// The deque/stack primitives of PagePool<Atom>, declared in page_pool.h and
// moved here from its class body: the bounded Chase-Lev deque of a thread
// cache and the tagged Treiber stack of the global pool, each with its
// memory-ordering argument. Defined inline, as they were in the class, so the
// hot paths in page_pool.h still inline them (the extern template there does
// not suppress inline members). Included at the end of page_pool.h only.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

#include "page_pool.h"  // IWYU pragma: keep

#include "rpa/memory/page_id.h"

namespace rpa::memory::internal {

// ---- Chase-Lev deque ------------------------------------------------------

// Owner: pushes one page at the bottom; false if the deque is full.
// Memory ordering: the release store of bottom publishes the slot (and the
// page's contents) to a thief's acquire load of bottom. top is read with
// acquire (here or when top_bound was last refreshed) so that a thief's
// read of a slot happens-before the owner overwrites it after wrapping.
template <template <typename> class Atom>
inline bool PagePool<Atom>::TryPush(Cache& cache, std::uint32_t page) noexcept {
  const std::int64_t b = cache.bottom.load(std::memory_order_relaxed);
  if (b - cache.top_bound >= static_cast<std::int64_t>(capacity_))
      [[unlikely]] {
    cache.top_bound = cache.top.load(std::memory_order_acquire);
    if (b - cache.top_bound >= static_cast<std::int64_t>(capacity_))
      return false;
  }
  Slot(cache, b).store(page, std::memory_order_relaxed);
  cache.bottom.store(b + 1, std::memory_order_release);
  return true;
}

// Owner: pops the page at the bottom, kNilPage if empty. The owner first
// reserves the slot by lowering bottom, then (after a full fence) reads top:
// the fence forbids the store->load reordering that would let the owner and
// a thief, each missing the other's write, both take the last page. If the
// reserved slot is the only one (t == b) owner and thieves race with a CAS
// on top, exactly as two thieves would.
template <template <typename> class Atom>
inline std::uint32_t PagePool<Atom>::Take(Cache& cache) noexcept {
  const std::int64_t b = cache.bottom.load(std::memory_order_relaxed) - 1;
  cache.bottom.store(b, std::memory_order_relaxed);
  Traits::ThreadFence(std::memory_order_seq_cst);
  std::int64_t t = cache.top.load(std::memory_order_acquire);
  if (t > b) [[unlikely]] {  // empty
    cache.bottom.store(b + 1, std::memory_order_relaxed);
    cache.top_bound = t;
    return kNilPage;
  }
  std::uint32_t page = Slot(cache, b).load(std::memory_order_relaxed);
  if (t == b) {
    if (cache.top.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst,
                                          std::memory_order_relaxed)) {
      ++t;
    } else {
      page = kNilPage;  // a thief took it; t now holds the newer top
    }
    cache.bottom.store(b + 1, std::memory_order_relaxed);
    cache.top_bound = t;
  }
  // (With t < b the old top_bound is still a lower bound: not rewritten.)
  return page;
}

// Owner: takes up to max_pages (exactly max_pages or none if `exactly`)
// from the top with one CAS, then hands them to sink(i, page). Reading the
// slots after the CAS is safe: only the owner (the caller) writes slots.
template <template <typename> class Atom>
template <typename Sink>
inline std::uint32_t PagePool<Atom>::TakeTop(Cache& cache,
                                             std::size_t max_pages,
                                             bool exactly,
                                             Sink&& sink) noexcept {
  const std::int64_t b = cache.bottom.load(std::memory_order_relaxed);
  std::int64_t t = cache.top.load(std::memory_order_acquire);
  for (;;) {
    const std::int64_t n =
        std::min(b - t, static_cast<std::int64_t>(max_pages));
    if (n <= 0 || (exactly && n < static_cast<std::int64_t>(max_pages))) {
      cache.top_bound = t;
      return 0;
    }
    if (cache.top.compare_exchange_weak(t, t + n, std::memory_order_acq_rel,
                                        std::memory_order_acquire)) {
      for (std::int64_t i = 0; i < n; ++i) {
        sink(static_cast<std::uint32_t>(i),
             Slot(cache, t + i).load(std::memory_order_relaxed));
      }
      cache.top_bound = t + n;
      return static_cast<std::uint32_t>(n);
    }
  }
}

// Owner: pushes pages (room for them must have been checked) with one
// release store of bottom.
template <template <typename> class Atom>
inline void PagePool<Atom>::PushN(Cache& cache,
                                  std::span<const PageId> pages) noexcept {
  const std::int64_t b = cache.bottom.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < pages.size(); ++i) {
    Slot(cache, b + static_cast<std::int64_t>(i))
        .store(PageIndex(pages[i]), std::memory_order_relaxed);
  }
  cache.bottom.store(b + static_cast<std::int64_t>(pages.size()),
                     std::memory_order_release);
}

template <template <typename> class Atom>
inline bool PagePool<Atom>::HasRoom(Cache& cache, std::size_t n) noexcept {
  const std::int64_t b = cache.bottom.load(std::memory_order_relaxed);
  const auto limit = static_cast<std::int64_t>(capacity_ - n);
  if (b - cache.top_bound <= limit) return true;
  cache.top_bound = cache.top.load(std::memory_order_acquire);
  return b - cache.top_bound <= limit;
}

// Any thread: takes the page at the top. The acquire load of bottom pairs
// with the owner's release store in TryPush/PushN/Refill (slot contents and
// page data become visible); the fence between reading top and bottom is
// the thief's half of the store-buffering argument in Take.
template <template <typename> class Atom>
inline typename PagePool<Atom>::StealResult PagePool<Atom>::Steal(
    Cache& cache, std::uint32_t* page) noexcept {
  std::int64_t t = cache.top.load(std::memory_order_acquire);
  Traits::ThreadFence(std::memory_order_seq_cst);
  const std::int64_t b = cache.bottom.load(std::memory_order_acquire);
  if (t >= b) return StealResult::kEmpty;
  const std::uint32_t value = Slot(cache, t).load(std::memory_order_relaxed);
  if (!cache.top.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst,
                                         std::memory_order_relaxed)) {
    return StealResult::kLostRace;
  }
  *page = value;
  return StealResult::kStolen;
}

// ---- Global pool: a Treiber stack with a tagged head --------------------

// Pushes the private chain first -> ... -> last (already linked through
// next_) with one CAS. The release CAS publishes the links and the pages'
// contents; every successful CAS bumps the tag, so a stale head never
// compares equal (ABA).
template <template <typename> class Atom>
inline void PagePool<Atom>::PushChain(std::uint32_t first,
                                      std::uint32_t last) noexcept {
  std::uint64_t head = head_.load(std::memory_order_relaxed);
  do {
    next_[last].store(HeadIndex(head), std::memory_order_relaxed);
  } while (!head_.compare_exchange_weak(
      head, PackHead(first, HeadTag(head) + 1), std::memory_order_release,
      std::memory_order_relaxed));
}

// Takes up to max_pages from the top with one CAS, calling sink(i, page)
// for each while walking: a failed CAS walks again and overwrites, and if
// the stack is then empty the sink's values are stale; only the returned
// count says which are valid. Walking
// nodes another thread may pop meanwhile is safe: next_ entries are atomics
// that only ever hold page indices or kNilPage, the walk is bounded by
// max_pages, and if the head (with its tag) is unchanged at the CAS then no
// push or pop happened since it was read, so every node walked was in the
// stack throughout with the links we read. The acquire load/CAS of head
// synchronizes with the release of every push (all later head writes are
// RMWs, which continue each push's release sequence), so the relaxed link
// reads see the pushed values. Success is also a release: Reclaim relies on
// a thief that sees the pop also seeing the popper's BeginTransfer.
template <template <typename> class Atom>
template <typename Sink>
inline std::uint32_t PagePool<Atom>::PopBatch(std::uint32_t max_pages,
                                              Sink&& sink) noexcept {
  std::uint64_t head = head_.load(std::memory_order_acquire);
  for (;;) {
    std::uint32_t page = HeadIndex(head);
    if (page == kNilPage) return 0;
    std::uint32_t n = 0;
    for (;;) {
      sink(n++, page);
      page = next_[page].load(std::memory_order_relaxed);
      if (n == max_pages || page == kNilPage) break;
    }
    if (head_.compare_exchange_weak(head, PackHead(page, HeadTag(head) + 1),
                                    std::memory_order_acq_rel,
                                    std::memory_order_acquire)) {
      return n;
    }
  }
}

template <template <typename> class Atom>
inline std::uint32_t PagePool<Atom>::PopOne() noexcept {
  std::uint32_t page = kNilPage;
  // The sink also runs for walks whose CAS then fails: trust the count.
  return PopBatch(1, [&](std::uint32_t, std::uint32_t p) { page = p; }) == 1
             ? page
             : kNilPage;
}

template <template <typename> class Atom>
inline bool PagePool<Atom>::GlobalLooksEmpty() const noexcept {
  return HeadIndex(head_.load(std::memory_order_relaxed)) == kNilPage;
}

}  // namespace rpa::memory::internal
