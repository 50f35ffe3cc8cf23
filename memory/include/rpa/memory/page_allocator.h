#pragma once

// PageAllocator: a lock-free allocator of fixed-size page ids [0, num_pages).
//
// Each thread that uses an allocator gets a small private cache of free page
// ids, so Allocate/Free touch only that thread's cache line in the common case;
// a global lock-free pool (a tagged-index Treiber stack) stands behind the
// caches and exchanges pages with them in batches. Allocate returns an empty
// optional only when no page is free anywhere: pages parked in other threads'
// caches are reclaimed (stolen) before it says so. memory/README.md explains
// the protocol.
//
// Misuse is reported, never silently absorbed: freeing a page twice, freeing a
// page that was never allocated, or an id >= num_pages returns
// InvalidArgument and leaves the allocator unchanged.
//
// When the allocator is given the page memory (PageMemory), freed pages are
// poisoned for AddressSanitizer and unpoisoned on allocation, so a stale page
// table entry crashes a test instead of reading another sequence's keys.
//
// Thread-safety: every member function may be called from any number of
// threads concurrently. Allocate/Free never block, never throw and never
// allocate memory after construction, except on a thread's first use (which
// claims a cache slot and registers its release at thread exit) and to build
// an error Status.
// Memory ordering: a Free happens-before the Allocate that returns the same
// page, so data written to a page before freeing it is visible to (and may be
// overwritten by) its next owner.
//
// Example:
//   auto allocator = rpa::memory::PageAllocator::Create({.num_pages = 1024});
//   if (!allocator.ok()) return allocator.status();
//   std::optional<PageId> page = (*allocator)->Allocate();
//   if (!page) { /* no page anywhere: preempt a request */ }
//   RPA_RETURN_IF_ERROR((*allocator)->Free(*page));

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <memory_resource>
#include <optional>
#include <span>

#include "rpa/memory/page_id.h"
#include "rpa/runtime/status.h"

namespace rpa::memory {

namespace internal {
template <template <typename> class Atom>
class PagePool;
}  // namespace internal

// Where the pages live, for ASan poisoning. Page p occupies, in each of
// `num_planes` planes, the bytes [base + plane * plane_stride_bytes +
// p * page_bytes, ... + page_bytes) (a KV cache has one plane per layer).
struct PageMemory {
  std::byte* base = nullptr;  // nullptr: no poisoning
  std::size_t page_bytes = 0;
  std::uint32_t num_planes = 1;
  std::size_t plane_stride_bytes = 0;
};

struct PageAllocatorOptions {
  std::uint32_t num_pages = 0;  // > 0, < 2^31
  // Capacity of each thread's cache, in pages. 0 disables the caches (every
  // operation goes to the global pool); otherwise at least 2.
  std::uint32_t thread_cache_pages = 128;
  // How many threads can own a cache at once; further threads use the global
  // pool directly (correct, slower). A cache slot is released when its thread
  // exits.
  std::uint32_t max_thread_caches = 64;
  PageMemory memory;
  // Where the allocator's own bookkeeping lives (the KV cache passes its
  // arena's metadata heap). Used only in Create and the destructor.
  std::pmr::memory_resource* metadata = std::pmr::get_default_resource();
};

struct PageAllocatorStats {
  std::uint32_t num_pages = 0;
  std::uint32_t free_pages = 0;  // in the global pool and in thread caches
  std::uint32_t used_pages = 0;  // allocated and not yet freed
  // The most pages ever allocated at once. Exact when one thread uses the
  // allocator. With several threads it is sampled whenever a cache exchanges
  // a batch with the global pool and when Stats() runs, from per-thread
  // counts published lazily, so it can be off from the true peak by at most
  // threads x thread_cache_pages (rounded up to a power of two), in either
  // direction; never above num_pages. free_pages and used_pages are exact
  // whenever no call is in progress.
  std::uint32_t high_water_pages = 0;
};

class PageAllocator {
 public:
  // Fails with InvalidArgument on a bad option (naming it) and with
  // ResourceExhausted if the metadata resource cannot supply the bookkeeping.
  static StatusOr<std::unique_ptr<PageAllocator>> Create(
      const PageAllocatorOptions& options);

  ~PageAllocator();
  PageAllocator(const PageAllocator&) = delete;
  PageAllocator& operator=(const PageAllocator&) = delete;

  // One free page, or nullopt when no page is free anywhere: before saying so
  // it takes pages from the global pool and steals from every other thread's
  // cache (live or exited), and it says so only after a scan that found them
  // all empty while no batch was moving between them. A page freed by another
  // thread during that scan may be missed (the caller retries later anyway).
  [[nodiscard]] std::optional<PageId> Allocate() noexcept;

  // Fills `pages` with distinct free pages, all or nothing: returns false (and
  // allocates nothing; the contents of `pages` are then unspecified) when
  // fewer than pages.size() are free, with the same reclaiming as Allocate.
  [[nodiscard]] bool AllocateN(std::span<PageId> pages) noexcept;

  // Returns a page. InvalidArgument (nothing changes) for an id out of range
  // or a page that is not currently allocated (double free, never allocated).
  Status Free(PageId page) noexcept;

  // Frees every page, all or nothing: if any id is bad or repeated, none is
  // freed.
  Status FreeN(std::span<const PageId> pages) noexcept;

  // True if `page` is currently allocated (a snapshot under concurrency).
  bool IsAllocated(PageId page) const noexcept;

  PageAllocatorStats Stats() const noexcept;
  std::uint32_t num_pages() const noexcept;

 private:
  explicit PageAllocator(std::unique_ptr<internal::PagePool<std::atomic>> pool);
  std::unique_ptr<internal::PagePool<std::atomic>> pool_;
};

}  // namespace rpa::memory
