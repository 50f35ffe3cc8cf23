// Arena: a page region and a metadata heap in one exclusive mimalloc arena.
// memory/README.md ("The Arena") describes the layout and the limits of
// mimalloc 2.0.9 that this file works around; the comments here say why each
// step is done the way it is.

#include "rpa/memory/arena.h"

#include <fmt/format.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "mimalloc_api.h"

#include "rpa/runtime/check.h"
#include "rpa/runtime/int_math.h"
#include "rpa/runtime/sanitizers.h"

namespace rpa::memory {
namespace {

using internal::MimallocApi;

// mimalloc 2.x allocates arena memory in blocks of one segment
// (MI_ARENA_BLOCK_SIZE == MI_SEGMENT_SIZE == 32 MiB). A block serves one
// segment; an object above 16 MiB gets a dedicated ("huge") segment of whole
// blocks, the segment header in front of it.
constexpr std::size_t kSegmentBytes = std::size_t{32} << 20;
// Room left in the region's huge segment for mimalloc's segment header
// (64 KiB measured) and the over-allocation of aligned allocation.
constexpr std::size_t kHugeSegmentOverheadBytes = std::size_t{1} << 20;
// Every thread that allocates metadata gets its own heap, and each heap takes
// whole segments; these segments leave room for a few such threads beyond
// the budget itself.
constexpr std::uint64_t kMetadataSlackSegments = 4;
// mimalloc 2.0.9 accepts at most MI_MAX_ARENAS (64) arenas per process and
// cannot release one.
constexpr std::size_t kMaxMimallocArenas = 64;
constexpr std::size_t kMaxRegionBytes = std::size_t{1} << 62;
constexpr std::size_t kMaxMetadataBytes = std::size_t{1} << 60;
constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;
constexpr std::size_t kOsPageBytes = 4096;

// Rounds a block count up to a number with at most 3 significant bits (1..8,
// 10, 12, 14, 16, 20, ...): at most 25% more address space, and the pool
// meets far fewer distinct shapes, so a growing series of requests reuses
// arenas instead of burning through the process's 64.
std::uint64_t RoundToSizeClass(std::uint64_t blocks) {
  if (blocks <= 8) return blocks;
  const auto shift = static_cast<unsigned>(std::bit_width(blocks)) - 3;
  const std::uint64_t step = std::uint64_t{1} << shift;
  return DivideRoundUp(blocks, step) * step;
}

std::size_t RegionAlignment(bool huge_pages) {
  // A 2 MiB aligned region lets transparent huge pages back it from the
  // first byte.
  return huge_pages ? kHugePageBytes : kOsPageBytes;
}

// The region of an arena whose first `region_blocks` blocks hold it: the
// largest allocation that still fits them with the segment header and the
// alignment slack.
std::size_t RegionSlotBytes(std::uint64_t region_blocks, bool huge_pages) {
  return region_blocks * kSegmentBytes - kHugeSegmentOverheadBytes -
         RegionAlignment(huge_pages);
}

// ---------------------------------------------------------------------------
// The process-wide pool of reserved mimalloc arenas.

struct PooledArena {
  mi_arena_id_t id = 0;
  std::byte* start = nullptr;
  std::size_t reserved_bytes = 0;
  std::uint64_t region_blocks =
      0;  // the region always takes a slot of this many blocks
  std::uint64_t metadata_blocks =
      0;  // blocks beyond the region, for metadata segments
  bool huge_pages = false;
  bool in_use = false;
  bool retired =
      false;  // its region slot could not be placed again; never reused
};

class ArenaPool {
 public:
  // Leaked on purpose: Arenas destroyed by static destructors after this
  // translation unit's must still find the pool.
  static ArenaPool& Get() {
    static ArenaPool* const pool = new ArenaPool();
    return *pool;
  }

  // A free pooled arena with at least the requested blocks (the smallest such
  // one), else a newly reserved one. `*fresh` tells which.
  StatusOr<PooledArena> Acquire(const MimallocApi& mi,
                                std::uint64_t region_blocks,
                                std::uint64_t metadata_blocks, bool huge_pages,
                                bool* fresh) {
    std::lock_guard<std::mutex> lock(mutex_);
    PooledArena* best = nullptr;
    for (PooledArena& arena : arenas_) {
      if (arena.in_use || arena.retired || arena.huge_pages != huge_pages ||
          arena.region_blocks < region_blocks ||
          arena.metadata_blocks < metadata_blocks) {
        continue;
      }
      if (best == nullptr || arena.reserved_bytes < best->reserved_bytes)
        best = &arena;
    }
    if (best != nullptr) {
      best->in_use = true;
      *fresh = false;
      return *best;
    }

    const std::size_t bytes = (region_blocks + metadata_blocks) * kSegmentBytes;
    mi_arena_id_t id = 0;
    // commit = true: the reservation is one read-write mmap with
    // MAP_NORESERVE, so no physical memory is used until a page is touched.
    // Committing on demand instead (commit = false) would mprotect later, and
    // mimalloc 2.0.9 ignores a failed on-demand commit (strict overcommit),
    // then writes a segment header into inaccessible memory.
    // mimalloc 2.0.9 randomises the address hint of its first aligned OS
    // allocation with the calling thread's default heap; on a thread mimalloc
    // has not initialised (not the process allocator here, so nothing did)
    // that heap is the read-only empty heap, and the random generator's
    // write into it faults. Initialising the thread first (idempotent) makes
    // the default heap a real one.
    mi.thread_init();
    const int error = mi.reserve_os_memory_ex(bytes, /*commit=*/true,
                                              /*allow_large=*/huge_pages,
                                              /*exclusive=*/true, &id);
    if (error != 0) {
      std::size_t in_use = 0;
      for (const PooledArena& arena : arenas_) in_use += arena.in_use ? 1 : 0;
      return ResourceExhaustedError(fmt::format(
          "mimalloc could not reserve an arena of {} bytes: error {} ({}); "
          "this process has {} "
          "mimalloc arenas (at most {}, never released), {} of them in use",
          bytes, error, std::strerror(error), arenas_.size(),
          kMaxMimallocArenas, in_use));
    }
    std::size_t area_bytes = 0;
    void* area = mi.arena_area(id, &area_bytes);
    RPA_CHECK_MSG(area != nullptr && area_bytes >= bytes,
                  "mimalloc arena without its area");
    arenas_.push_back(PooledArena{.id = id,
                                  .start = static_cast<std::byte*>(area),
                                  .reserved_bytes = area_bytes,
                                  .region_blocks = region_blocks,
                                  .metadata_blocks = metadata_blocks,
                                  .huge_pages = huge_pages,
                                  .in_use = true});
    *fresh = true;
    return arenas_.back();
  }

  void Release(mi_arena_id_t id, bool retire) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (PooledArena& arena : arenas_) {
      if (arena.id == id) {
        RPA_CHECK(arena.in_use);
        arena.in_use = false;
        arena.retired = arena.retired || retire;
        return;
      }
    }
    RPA_CHECK_MSG(false, "released an arena the pool does not know");
  }

 private:
  ArenaPool() { arenas_.reserve(kMaxMimallocArenas); }

  std::mutex mutex_;
  std::vector<PooledArena> arenas_;  // guarded by mutex_
};

// ---------------------------------------------------------------------------
// One mimalloc heap per (thread, arena): a heap may only allocate on the
// thread that created it. Heaps are never deleted by us: mimalloc deletes a
// thread's heaps when the thread exits, and an arena's heaps stay valid
// across its lives in the pool (the arena id does not change).

struct ThreadHeaps {
  struct Entry {
    mi_arena_id_t id;
    mi_heap_t* heap;
  };
  // A process has at most kMaxMimallocArenas arena ids.
  std::array<Entry, kMaxMimallocArenas> entries;
  std::size_t count;
};
// Trivially destructible and zero-initialized: no TLS destructor ordering
// against mimalloc's own thread-exit hook.
thread_local ThreadHeaps t_heaps;

mi_heap_t* FindThreadHeap(mi_arena_id_t id) {
  for (std::size_t i = 0; i < t_heaps.count; ++i) {
    if (t_heaps.entries[i].id == id) return t_heaps.entries[i].heap;
  }
  return nullptr;
}

// nullptr only if mimalloc cannot allocate the heap structure itself.
mi_heap_t* ThreadHeap(const MimallocApi& mi, mi_arena_id_t id) {
  if (mi_heap_t* heap = FindThreadHeap(id)) return heap;
  mi_heap_t* heap = mi.heap_new_in_arena(id);
  if (heap == nullptr) return nullptr;
  RPA_CHECK(t_heaps.count < t_heaps.entries.size());
  t_heaps.entries[t_heaps.count++] = {id, heap};
  return heap;
}

// ---------------------------------------------------------------------------
// The metadata resource: the arena's heaps behind an exact byte budget.

class MetadataResource final : public std::pmr::memory_resource {
 public:
  MetadataResource(const MimallocApi* mi, mi_arena_id_t id,
                   std::size_t budget_bytes)
      : mi_(mi), id_(id), budget_bytes_(budget_bytes) {}

  std::size_t budget_bytes() const { return budget_bytes_; }
  std::size_t used_bytes() const {
    return used_bytes_.load(std::memory_order_relaxed);
  }

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    // Claim the bytes first, so concurrent allocations never overshoot the
    // budget together. The counter publishes no data: relaxed is enough.
    std::size_t used = used_bytes_.load(std::memory_order_relaxed);
    do {
      if (bytes > budget_bytes_ - used) throw std::bad_alloc();
    } while (!used_bytes_.compare_exchange_weak(used, used + bytes,
                                                std::memory_order_relaxed));

    void* p = Allocate(bytes, alignment);
    if (p == nullptr) {
      used_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
      throw std::bad_alloc();
    }
    return p;
  }

  void do_deallocate(void* p, std::size_t bytes,
                     std::size_t alignment) override {
#if RPA_SANITIZER_BUILD
    ::operator delete (p, std::align_val_t{alignment});
#else
    (void)alignment;
    mi_->free(p);  // any thread may free a mimalloc block
#endif
    used_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
  }

  bool do_is_equal(
      const std::pmr::memory_resource& other) const noexcept override {
    return this == &other;
  }

  void* Allocate(std::size_t bytes, std::size_t alignment) {
#if RPA_SANITIZER_BUILD
    // Sanitizer builds serve metadata from the instrumented global allocator:
    // mimalloc is not instrumented, so ASan would not see overflows or
    // use-after-free of metadata, and TSan would report mimalloc's reuse of a
    // block freed by another thread as a race. The budget is enforced the same.
    return ::operator new (bytes, std::align_val_t{alignment}, std::nothrow);
#else
    mi_heap_t* heap = ThreadHeap(*mi_, id_);
    if (heap == nullptr) return nullptr;
    // mimalloc's exclusive-arena heap never falls back to the OS: nullptr
    // when the arena has no room.
    return alignment <= alignof(std::max_align_t)
               ? mi_->heap_malloc(heap, bytes)
               : mi_->heap_malloc_aligned(heap, bytes, alignment);
#endif
  }

  // Unused in sanitizer builds, which serve metadata from ::operator new.
  [[maybe_unused]] const MimallocApi* mi_;
  [[maybe_unused]] mi_arena_id_t id_;
  std::size_t budget_bytes_;
  std::atomic<std::size_t> used_bytes_{0};
};

Status ValidateOptions(const ArenaOptions& options) {
  if (options.unit_bytes == 0) {
    return InvalidArgumentError(
        fmt::format("unit_bytes must be positive, got {}", options.unit_bytes));
  }
  if (options.num_units == 0) {
    return InvalidArgumentError(
        fmt::format("num_units must be positive, got {}", options.num_units));
  }
  std::size_t region_bytes = 0;
  if (__builtin_mul_overflow(options.unit_bytes, options.num_units,
                             &region_bytes) ||
      region_bytes > kMaxRegionBytes) {
    return InvalidArgumentError(
        fmt::format("unit_bytes * num_units = {} * {} overflows the largest "
                    "region (2^62 bytes)",
                    options.unit_bytes, options.num_units));
  }
  if (options.metadata_bytes > kMaxMetadataBytes) {
    return InvalidArgumentError(fmt::format(
        "metadata_bytes must be at most 2^60, got {}", options.metadata_bytes));
  }
  return OkStatus();
}

}  // namespace

class Arena::Impl {
 public:
  Impl(const MimallocApi* mi, const PooledArena& arena, std::byte* region,
       std::size_t region_slot_bytes, std::size_t metadata_bytes)
      : mi_(mi),
        arena_(arena),
        region_(region),
        region_slot_bytes_(region_slot_bytes),
        metadata_(mi, arena.id, metadata_bytes) {}

  ~Impl() {
    RPA_DCHECK(metadata_.used_bytes() ==
               0);  // metadata must not outlive the Arena
    // The page allocator may have left freed pages poisoned; the next life of
    // this arena must start with addressable memory.
    RPA_ASAN_UNPOISON(region_, region_slot_bytes_);
    // Give the physical pages back now (best effort): the reservation itself
    // stays in the pool and may sit idle.
    ::madvise(region_, region_slot_bytes_, MADV_DONTNEED);
    mi_->free(region_);
    // Empty pages of this thread's heap go back to the arena, so its next
    // life finds the room. Other threads' heaps are theirs to collect.
    if (mi_heap_t* heap = FindThreadHeap(arena_.id))
      mi_->heap_collect(heap, /*force=*/false);
    ArenaPool::Get().Release(arena_.id, /*retire=*/false);
  }

  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  std::pmr::memory_resource* metadata() { return &metadata_; }
  std::size_t metadata_used_bytes() const { return metadata_.used_bytes(); }
  std::size_t metadata_budget_bytes() const { return metadata_.budget_bytes(); }
  std::size_t reserved_bytes() const { return arena_.reserved_bytes; }

 private:
  const MimallocApi* mi_;
  PooledArena arena_;
  std::byte* region_;
  std::size_t region_slot_bytes_;
  MetadataResource metadata_;
};

StatusOr<std::unique_ptr<Arena>> Arena::Create(const ArenaOptions& options) {
  RPA_RETURN_IF_ERROR(ValidateOptions(options));
  RPA_ASSIGN_OR_RETURN(const MimallocApi* mi, internal::Mimalloc());

  const std::size_t region_bytes = options.unit_bytes * options.num_units;
  const std::size_t alignment = RegionAlignment(options.huge_pages);
  // Cannot overflow: region_bytes <= 2^62 and metadata_bytes <= 2^60.
  const std::uint64_t region_blocks = RoundToSizeClass(DivideRoundUp(
      region_bytes + kHugeSegmentOverheadBytes + alignment, kSegmentBytes));
  // Twice the budget in whole segments: a metadata object above 16 MiB takes
  // a dedicated segment and can waste up to half of it.
  const std::uint64_t metadata_blocks = RoundToSizeClass(
      2 * DivideRoundUp(options.metadata_bytes, kSegmentBytes) +
      kMetadataSlackSegments);

  // A pooled arena whose region slot cannot be placed (its blocks fragmented
  // by metadata segments another thread still holds) is retired and the next
  // candidate tried; every retirement removes one candidate, so this ends.
  for (;;) {
    bool fresh = false;
    RPA_ASSIGN_OR_RETURN(
        PooledArena arena,
        ArenaPool::Get().Acquire(*mi, region_blocks, metadata_blocks,
                                 options.huge_pages, &fresh));
    // The region always takes the arena's whole slot, whatever this Arena
    // needs: every life of the arena then places the same number of blocks,
    // and the blocks freed by the previous life are always enough.
    const std::size_t slot_bytes =
        RegionSlotBytes(arena.region_blocks, options.huge_pages);
    mi_heap_t* heap = ThreadHeap(*mi, arena.id);
    void* block = heap != nullptr
                      ? mi->heap_malloc_aligned(heap, slot_bytes, alignment)
                      : nullptr;
    if (block == nullptr) {
      ArenaPool::Get().Release(arena.id, /*retire=*/!fresh);
      if (!fresh) continue;
      return ResourceExhaustedError(
          fmt::format("mimalloc could not place the {}-byte page region in a "
                      "new {}-byte arena "
                      "(unit_bytes {}, num_units {})",
                      slot_bytes, arena.reserved_bytes, options.unit_bytes,
                      options.num_units));
    }
    auto* region = static_cast<std::byte*>(block);
    if (region < arena.start ||
        region + slot_bytes > arena.start + arena.reserved_bytes) {
      mi->free(block);
      ArenaPool::Get().Release(arena.id, /*retire=*/true);
      return InternalError(fmt::format(
          "mimalloc placed the page region at {} outside its arena [{}, +{})",
          static_cast<void*>(region), static_cast<void*>(arena.start),
          arena.reserved_bytes));
    }
    if (options.huge_pages) {
      // Best effort: without transparent huge pages (or in "never" mode) the
      // region simply stays on 4 KiB pages.
      (void)::madvise(region, slot_bytes, MADV_HUGEPAGE);
    }
    std::unique_ptr<Impl> impl;
    std::unique_ptr<Arena> result;
    try {
      impl = std::make_unique<Impl>(mi, arena, region, slot_bytes,
                                    options.metadata_bytes);
      // If this allocation throws, `impl` is still ours and gives the region
      // back.
      result = std::unique_ptr<Arena>(new Arena(std::move(impl)));
    } catch (const std::bad_alloc&) {
      if (impl == nullptr && result == nullptr) {
        mi->free(block);
        ArenaPool::Get().Release(arena.id, /*retire=*/false);
      }
      return ResourceExhaustedError("no memory for the Arena object");
    }
    result->base_ = region;
    result->unit_bytes_ = options.unit_bytes;
    result->num_units_ = options.num_units;
    result->huge_pages_ = options.huge_pages;
    return result;
  }
}

Arena::Arena(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Arena::~Arena() = default;

std::byte* Arena::UnitAddress(std::uint64_t index) const noexcept {
  RPA_DCHECK(index < num_units_);
  return base_ + index * unit_bytes_;
}

std::pmr::memory_resource* Arena::metadata_resource() noexcept {
  return impl_->metadata();
}

ArenaStats Arena::Stats() const noexcept {
  return ArenaStats{.region_bytes = region_bytes(),
                    .reserved_bytes = impl_->reserved_bytes(),
                    .metadata_budget_bytes = impl_->metadata_budget_bytes(),
                    .metadata_used_bytes = impl_->metadata_used_bytes()};
}

bool Arena::MimallocIsProcessAllocator() noexcept {
  // Asked of the running process rather than of the build option: under a
  // sanitizer the sanitizer's allocator serves malloc even in an
  // RPA_MIMALLOC_OVERRIDE build.
  auto mi = internal::Mimalloc();
  if (!mi.ok()) return false;
  void* probe = std::malloc(64);
  const bool result = probe != nullptr && (*mi)->is_in_heap_region(probe);
  std::free(probe);
  return result;
}

}  // namespace rpa::memory
