#pragma once

// The batch calls of PagePool<Atom>, declared in page_pool.h: AllocateN (one
// CAS on the local cache, else gathering from every source inside one
// transfer bracket) and FreeN (all or nothing: a failed call changes
// nothing). Out-of-line members like those of page_pool_impl.h. Included at
// the end of page_pool.h only.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "page_pool.h"  // IWYU pragma: keep

#include "rpa/memory/page_id.h"
#include "rpa/runtime/check.h"
#include "rpa/runtime/status.h"

namespace rpa::memory::internal {

template <template <typename> class Atom>
bool PagePool<Atom>::AllocateN(std::span<PageId> pages) noexcept {
  const std::size_t n = pages.size();
  if (n == 0) return true;
  if (n > num_pages_) return false;
  Cache* cache = LocalCache();
  // Fast path: all from the local cache with one CAS, nothing in transit.
  if (cache != nullptr && TakeTop(*cache, n, /*exactly=*/true,
                                  [&](std::uint32_t i, std::uint32_t page) {
                                    pages[i] = MakePageId(page);
                                  }) == n) {
    for (const PageId page : pages) Commit(PageIndex(page));
    CountAllocations(*cache, static_cast<std::int64_t>(n));
    return true;
  }
  return AllocateNSlow(pages, cache);
}

// Gathers pages from the local cache, the global stack (in chunks), then by
// stealing, inside one transfer bracket (the pages are in transit until
// committed or given back), with the same rescan rule as Reclaim except that
// our own transfer is expected to be in progress.
template <template <typename> class Atom>
bool PagePool<Atom>::AllocateNSlow(std::span<PageId> pages,
                                   Cache* cache) noexcept {
  const std::size_t n = pages.size();
  std::size_t got = 0;
  auto sink = [&](std::uint32_t i, std::uint32_t page) {
    pages[got + i] = MakePageId(page);
  };
  BeginTransfer();
  if (cache != nullptr) got += TakeTop(*cache, n, /*exactly=*/false, sink);
  for (int scan = 0; got < n && scan < kMaxReclaimScans; ++scan) {
    const std::uint64_t before = transfers_.load(std::memory_order_seq_cst);
    while (got < n) {
      const auto chunk = static_cast<std::uint32_t>(
          std::min<std::size_t>(n - got, kMaxPopChunk));
      const std::uint32_t popped = PopBatch(chunk, sink);
      if (popped == 0) break;
      got += popped;
    }
    while (got < n) {
      const std::uint32_t page = StealFromAny(cache);
      if (page == kNilPage) break;
      pages[got++] = MakePageId(page);
    }
    const std::uint64_t after = transfers_.load(std::memory_order_seq_cst);
    if (after == before && static_cast<std::uint32_t>(after) == 1)
      break;  // only ours
  }
  if (got < n) {
    ReturnToGlobal(pages.first(got));
    EndTransfer();
    return false;
  }
  EndTransfer();
  for (const PageId page : pages) Commit(PageIndex(page));
  if (cache != nullptr) {
    CountAllocations(*cache, static_cast<std::int64_t>(n));
    Publish(*cache);
  } else {
    CountUncached(static_cast<std::int64_t>(n));
  }
  return true;
}

// Validates every id, then flips every state with a CAS, undoing the flipped
// ones at the first failure (which also catches an id repeated in `pages`):
// a failed call changes nothing. Only then are the pages published.
template <template <typename> class Atom>
Status PagePool<Atom>::FreeN(std::span<const PageId> pages) noexcept {
  const std::size_t n = pages.size();
  auto where = [](std::size_t i) {
    return "pages[" + std::to_string(i) + "]: ";
  };
  for (std::size_t i = 0; i < n; ++i) {
    if (PageIndex(pages[i]) >= num_pages_)
      return OutOfRangeError(PageIndex(pages[i]), where(i));
  }
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t index = PageIndex(pages[i]);
    std::uint8_t expected = kAllocated;
    if (state_[index].compare_exchange_strong(expected, kFree,
                                              std::memory_order_relaxed,
                                              std::memory_order_relaxed)) {
      continue;
    }
    // Undo: these pages were never published, so they are still ours.
    for (std::size_t j = 0; j < i; ++j) {
      state_[PageIndex(pages[j])].store(kAllocated, std::memory_order_relaxed);
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (pages[j] == pages[i]) {
        return InvalidArgumentError(where(i) + "page " + std::to_string(index) +
                                    " is repeated (also pages[" +
                                    std::to_string(j) + "])");
      }
    }
    return NotAllocatedError(index, where(i));
  }
  if (n == 0) return OkStatus();
  for (const PageId page : pages) Poison(PageIndex(page));
  Cache* cache = LocalCache();
  if (cache != nullptr && n <= batch_) {
    const bool flush = !HasRoom(*cache, n);
    if (flush) Flush(*cache);  // leaves >= batch_ >= n free slots
    RPA_DCHECK(HasRoom(*cache, n));
    PushN(*cache, pages);
    CountFrees(*cache, static_cast<std::int64_t>(n));
    if (flush) Publish(*cache);
  } else {
    ReturnToGlobal(pages);  // a big batch goes where every thread can reach it
    if (cache != nullptr) {
      CountFrees(*cache, static_cast<std::int64_t>(n));
      Publish(*cache);
    } else {
      CountUncached(-static_cast<std::int64_t>(n));
    }
  }
  return OkStatus();
}

}  // namespace rpa::memory::internal
