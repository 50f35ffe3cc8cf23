#pragma once

// Arena: the one large, page-aligned reservation that holds KV pages (the
// simulated HBM), obtained from a dedicated, exclusive mimalloc arena. A heap
// in the same arena serves the memory module's metadata (page tables,
// reference counts, allocator bookkeeping) through a std::pmr::memory_resource.
//
// Capacity is hard: the page region is exactly num_units * unit_bytes, and the
// metadata heap never grows past metadata_bytes (an allocation that would is
// refused with std::bad_alloc from the resource, which callers turn into
// ResourceExhausted). Nothing falls back to the operating system.
// Sanitizer builds serve metadata from ::operator new instead (so ASan and TSan
// see it; mimalloc is not instrumented), counted against the same budget.
//
// mimalloc allows 64 arenas per process and never releases one, so a destroyed
// Arena returns its mimalloc arena to a process-wide pool and later Arenas
// reuse it: any number of Arenas may be created over time, at most about 64
// may be alive at once.
//
// Embedding: rpa does not replace the host's malloc/free. mimalloc is loaded
// privately (dlopen with RTLD_LOCAL) and only its mi_* entry points are used,
// unless the build option RPA_MIMALLOC_OVERRIDE links it as the process
// allocator on purpose (see memory/README.md).
//
// Thread-safety: base(), UnitAddress() and the other accessors are const and
// safe from any thread. metadata_resource() may be used from any thread (each
// thread allocates from its own mimalloc heap in this arena; blocks may be
// freed from any thread). Every thread that allocates metadata takes whole
// 32 MiB mimalloc segments of the reservation, which has room for a few such
// threads beyond the budget: with many allocating threads, an allocation can
// fail (std::bad_alloc) before the budget is used up. Create and Stats may run
// concurrently with anything; destruction must not run concurrently with other
// uses of the same Arena, and every metadata block must be freed before it.
// Memory ordering: the metadata byte counter is relaxed (it publishes no data).
//
// Example:
//   auto arena = rpa::memory::Arena::Create({.unit_bytes = 64 << 10, .num_units
//   = 4096}); if (!arena.ok()) return arena.status(); std::byte* page7 =
//   (*arena)->UnitAddress(7);

#include <cstddef>
#include <cstdint>
#include <memory>
#include <memory_resource>

#include "rpa/runtime/status.h"

namespace rpa::memory {

struct ArenaOptions {
  std::size_t unit_bytes = 0;   // size of one page; > 0
  std::uint64_t num_units = 0;  // pages in the region; > 0
  // Budget for metadata allocated through metadata_resource().
  std::size_t metadata_bytes = std::size_t{16} << 20;
  // Ask for large (2 MiB) OS pages; best effort: the region is 2 MiB aligned
  // and advised MADV_HUGEPAGE (transparent huge pages). huge_pages() says what
  // was asked, not what the kernel did. Without it the region is 4 KiB aligned.
  bool huge_pages = false;
};

struct ArenaStats {
  std::size_t region_bytes = 0;  // num_units * unit_bytes
  std::size_t reserved_bytes =
      0;  // virtual memory of the mimalloc arena (region,
          // segment headers, metadata segments)
  std::size_t metadata_budget_bytes = 0;
  std::size_t metadata_used_bytes = 0;  // live metadata allocations
};

class Arena {
 public:
  // InvalidArgument for a zero or overflowing size (naming the field), a
  // region above 2^62 bytes or a metadata budget above 2^60 bytes;
  // ResourceExhausted if the OS or mimalloc cannot supply the reservation (also
  // when 64 mimalloc arenas exist and none free in the pool fits);
  // Unavailable if mimalloc cannot be loaded.
  static StatusOr<std::unique_ptr<Arena>> Create(const ArenaOptions& options);

  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  std::byte* base() const noexcept { return base_; }
  std::size_t unit_bytes() const noexcept { return unit_bytes_; }
  std::uint64_t num_units() const noexcept { return num_units_; }
  std::size_t region_bytes() const noexcept { return unit_bytes_ * num_units_; }
  bool huge_pages() const noexcept { return huge_pages_; }

  // base() + index * unit_bytes(); index < num_units() (RPA_DCHECK).
  std::byte* UnitAddress(std::uint64_t index) const noexcept;

  // Metadata heap of this arena. Allocation beyond the budget throws
  // std::bad_alloc (the std::pmr contract); the resource is valid as long as
  // the Arena lives.
  std::pmr::memory_resource* metadata_resource() noexcept;

  ArenaStats Stats() const noexcept;

  // True when mimalloc serves the whole process's malloc/free (only with the
  // RPA_MIMALLOC_OVERRIDE build option).
  static bool MimallocIsProcessAllocator() noexcept;

 private:
  class Impl;
  explicit Arena(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  std::byte* base_ = nullptr;
  std::size_t unit_bytes_ = 0;
  std::uint64_t num_units_ = 0;
  bool huge_pages_ = false;
};

}  // namespace rpa::memory
