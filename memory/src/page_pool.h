#pragma once

// PagePool<Atom>: the lock-free engine behind PageAllocator. memory/README.md
// ("Page allocator") describes the protocol; this file and
// page_pool_primitives.h (the deque and stack) carry the proofs.
//
// Templated on the atomic type so tests can run this exact code under a
// deterministic, seeded schedule (tests/support/deterministic_schedule.h);
// production uses PagePool<std::atomic>, instantiated in page_allocator.cc.
// Fences go through AtomicTraits<Atom>::ThreadFence so the schedule sees them.
//
// Where a page is, at any instant:
//   global pool   a Treiber stack of page indices linked through next_[];
//                 head_ = {index:32, tag:32} in one 64-bit word
//   thread cache  a bounded Chase-Lev deque per cache slot (Cache): the
//                 owning thread pushes/pops at `bottom`, thieves take at `top`
//   in transit    held by a call that moves pages between the two, inside a
//                 BeginTransfer/EndTransfer bracket (see Reclaim), or by an
//                 Allocate between taking the page and returning it
//   allocated     state_[p] == kAllocated; owned by the caller
// Free pages have state_[p] == kFree. A page moves from "allocated" to a free
// structure only through a successful CAS kAllocated -> kFree, which is what
// makes double frees impossible to miss: two frees cannot both win it.
//
// Thread-safety: all members may be called concurrently, except construction
// and destruction. Memory ordering: see each function.

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>
#include <span>
#include <string>

#include "live_pools.h"
#include "metadata_array.h"

#include "rpa/memory/page_allocator.h"
#include "rpa/memory/page_id.h"
#include "rpa/runtime/check.h"
#include "rpa/runtime/internal/atomic_traits.h"
#include "rpa/runtime/sanitizers.h"
#include "rpa/runtime/status.h"

namespace rpa::memory::internal {

inline constexpr std::size_t kCacheLineBytes = 64;
inline constexpr std::uint32_t kNilPage = 0xFFFFFFFFu;
// Limits enforced by PageAllocator::Create (they bound the metadata size).
inline constexpr std::uint32_t kMaxThreadCachePages = 1u << 16;
inline constexpr std::uint32_t kMaxThreadCaches = 4096;

// The fence hook (AtomicTraits) is the runtime's, shared by every lock-free
// structure of rpa.
template <template <typename> class Atom>
using AtomicTraits = ::rpa::runtime::internal::AtomicTraits<Atom>;

template <template <typename> class Atom>
class PagePool {
 public:
  // `options` must be valid (PageAllocator::Create checks them). Throws
  // std::bad_alloc if options.metadata cannot supply the bookkeeping.
  explicit PagePool(const PageAllocatorOptions& options);
  ~PagePool();
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  // Bytes taken from options.metadata (for error messages).
  static std::size_t MetadataBytes(const PageAllocatorOptions& options);

  std::optional<PageId> Allocate() noexcept {
    const std::uint32_t page = AllocateIndex();
    if (page == kNilPage) return std::nullopt;
    return MakePageId(page);
  }
  // Allocate as a page index, kNilPage for none.
  std::uint32_t AllocateIndex() noexcept {
    Cache* cache = LocalCache();
    if (cache == nullptr) return AllocateUncached();
    const std::uint32_t page = Take(*cache);
    if (page == kNilPage) [[unlikely]]
      return AllocateRefill(*cache);
    Commit(page);
    CountAllocations(*cache, 1);
    return page;
  }

  bool AllocateN(std::span<PageId> pages) noexcept;

  Status Free(PageId page) noexcept {
    const std::uint32_t index = PageIndex(page);
    if (index >= num_pages_) [[unlikely]]
      return OutOfRangeError(index);
    std::uint8_t expected = kAllocated;
    // Relaxed: the CAS only arbitrates ownership of the page between racing
    // frees. Data visibility for the next owner is carried by the release
    // with which the page is published (deque bottom / stack head).
    if (!state_[index].compare_exchange_strong(
            expected, kFree, std::memory_order_relaxed,
            std::memory_order_relaxed)) [[unlikely]] {
      return NotAllocatedError(index);
    }
    Poison(index);
    Cache* cache = LocalCache();
    if (cache != nullptr && TryPush(*cache, index)) [[likely]] {
      CountFrees(*cache, 1);
    } else {
      FreeSlow(cache, index);
    }
    return OkStatus();
  }

  Status FreeN(std::span<const PageId> pages) noexcept;

  bool IsAllocated(PageId page) const noexcept {
    const std::uint32_t index = PageIndex(page);
    return index < num_pages_ &&
           state_[index].load(std::memory_order_relaxed) == kAllocated;
  }

  PageAllocatorStats Stats() const noexcept;
  std::uint32_t num_pages() const noexcept { return num_pages_; }
  // Deque capacity of each cache (thread_cache_pages rounded up to a power
  // of two), 0 without caches.
  std::uint32_t cache_capacity() const noexcept { return capacity_; }

  // Releases the calling thread's cache slot now, as thread exit does: the
  // slot becomes orphaned with its pages (stealable, adoptable). Tests under
  // the deterministic schedule call it so the release is scheduled too.
  void ReleaseThreadCache() noexcept;
  // For tests: whether the calling thread has (or can claim) a cache.
  bool HasThreadCache() noexcept { return LocalCache() != nullptr; }
  std::uint32_t CountOwnedCaches() const noexcept {
    return CountSlots(kSlotOwned);
  }
  std::uint32_t CountOrphanedCaches() const noexcept {
    return CountSlots(kSlotOrphaned);
  }

 private:
  static constexpr std::uint8_t kFree = 0;
  static constexpr std::uint8_t kAllocated = 1;
  static constexpr std::uint32_t kSlotUnused = 0;  // never claimed: empty
  static constexpr std::uint32_t kSlotOwned = 1;
  static constexpr std::uint32_t kSlotOrphaned =
      2;  // owner exited; may hold pages
  // AllocateN pops the global stack in chunks so one CAS never has to win
  // against other threads for the duration of a 2048-node walk.
  static constexpr std::uint32_t kMaxPopChunk = 256;
  // Reclaim rescans only while transfers are seen moving (bounded: never
  // blocks).
  static constexpr int kMaxReclaimScans = 64;
  // transfers_: low 32 bits = transfers in progress, high 32 = completed.
  static constexpr std::uint64_t kTransferBegin = 1;
  static constexpr std::uint64_t kTransferEnd =
      (std::uint64_t{1} << 32) - 1;  // +1 done, -1 busy
  static constexpr std::size_t kMemoEntries = 16;

  using Traits = AtomicTraits<Atom>;

  // One thread cache: a bounded Chase-Lev work-stealing deque of page indices
  // (Chase & Lev, SPAA'05; orderings after Le, Pop, Cohen, Zappa Nardelli,
  // PPoPP'13), holding [top, bottom) in slots[i & mask]. Invariant outside
  // Take: top <= bottom <= top + capacity.
  struct alignas(kCacheLineBytes) Cache {
    explicit Cache(Atom<std::uint32_t>* cache_slots) : slots(cache_slots) {}
    // Owner's line: written by the owner only.
    Atom<std::int64_t> bottom{0};
    Atom<std::int64_t> delta{
        0};  // allocations - frees not yet published to used_
    Atom<std::int64_t> peak{0};  // max prefix of delta since the last publish
    std::int64_t top_bound = 0;  // owner-private lower bound of top
    Atom<std::uint32_t>* const slots;
    // Thieves' line: top moves by CAS only (thieves, or the owner's batch
    // take).
    alignas(kCacheLineBytes) Atom<std::int64_t> top{0};
    Atom<std::uint32_t> owner{kSlotUnused};
  };

  // The calling thread's memo of its caches. Trivially destructible and
  // constant-initialized, so the hot path reads it with no TLS wrapper call.
  struct ThreadMemo {
    struct Entry {
      std::uint64_t id;
      PagePool* pool;
      Cache* cache;  // nullptr: this thread uses that pool's global stack
    };
    std::uint64_t hot_id = 0;
    Cache* hot_cache = nullptr;
    std::uint32_t num_entries = 0;
    bool exiting = false;
    std::uint64_t purged_at =
        ~std::uint64_t{0};  // LivePools::NumUnregistered() at the last purge
    Entry entries[kMemoEntries] = {};
  };
  // Registers the thread-exit release the first time a thread claims a slot.
  struct ExitHook {
    bool armed = false;
    ~ExitHook() {
      if (armed) ReleaseAllAtThreadExit();
    }
  };
  // Always accessed by name, never through a reference: with UBSan, gcc 12
  // null-checks a reference to a thread_local using the flags of the TLS
  // address `add`, which the linker relaxes into a flag-less `lea` (a false
  // "member access within null pointer").
  static inline thread_local constinit ThreadMemo memo_{};
  static inline thread_local ExitHook exit_hook_;

  static std::uint64_t PackHead(std::uint32_t index, std::uint32_t tag) {
    return (std::uint64_t{tag} << 32) | index;
  }
  static std::uint32_t HeadIndex(std::uint64_t head) {
    return static_cast<std::uint32_t>(head);
  }
  static std::uint32_t HeadTag(std::uint64_t head) {
    return static_cast<std::uint32_t>(head >> 32);
  }

  Atom<std::uint32_t>& Slot(const Cache& cache, std::int64_t i) const {
    return cache.slots[static_cast<std::size_t>(i) & mask_];
  }

  // ---- Thread cache slots -------------------------------------------------

  Cache* LocalCache() noexcept {
    if (memo_.hot_id == id_) [[likely]]
      return memo_.hot_cache;
    return LocalCacheSlow();
  }
  Cache* LocalCacheSlow() noexcept;
  Cache* ClaimCache() noexcept;
  void ReleaseCache(Cache& cache) noexcept;
  static void ReleaseAllAtThreadExit() noexcept;
  std::uint32_t CountSlots(std::uint32_t state) const noexcept;

  // ---- Chase-Lev deque (defined in page_pool_primitives.h) ---------------

  bool TryPush(Cache& cache, std::uint32_t page) noexcept;
  std::uint32_t Take(Cache& cache) noexcept;
  template <typename Sink>
  std::uint32_t TakeTop(Cache& cache, std::size_t max_pages, bool exactly,
                        Sink&& sink) noexcept;
  void PushN(Cache& cache, std::span<const PageId> pages) noexcept;
  bool HasRoom(Cache& cache, std::size_t n) noexcept;
  enum class StealResult { kStolen, kEmpty, kLostRace };
  StealResult Steal(Cache& cache, std::uint32_t* page) noexcept;

  // ---- Global pool: a tagged Treiber stack (page_pool_primitives.h) -------

  void PushChain(std::uint32_t first, std::uint32_t last) noexcept;
  template <typename Sink>
  std::uint32_t PopBatch(std::uint32_t max_pages, Sink&& sink) noexcept;
  std::uint32_t PopOne() noexcept;
  bool GlobalLooksEmpty() const noexcept;

  // ---- Moving batches, reclaiming ------------------------------------------

  void BeginTransfer() noexcept {
    transfers_.fetch_add(kTransferBegin, std::memory_order_seq_cst);
  }
  void EndTransfer() noexcept {
    transfers_.fetch_add(kTransferEnd, std::memory_order_seq_cst);
  }

  std::uint32_t Refill(Cache& cache) noexcept;
  void Flush(Cache& cache) noexcept;
  std::uint32_t StealFromAny(const Cache* own) noexcept;
  std::uint32_t Reclaim(Cache* own) noexcept;
  std::uint32_t AllocateRefill(Cache& cache) noexcept;
  std::uint32_t AllocateUncached() noexcept;
  void FreeSlow(Cache* cache, std::uint32_t page) noexcept;
  bool AllocateNSlow(std::span<PageId> pages, Cache* cache) noexcept;
  void ReturnToGlobal(std::span<const PageId> pages) noexcept;

  // The page is ours (just taken from a free structure): mark it allocated.
  // Relaxed suffices: the store happens-after the freeing CAS (through the
  // release/acquire that carried the page here), so it is later in the
  // state's modification order and the next Free's CAS sees it.
  void Commit(std::uint32_t page) noexcept {
    state_[page].store(kAllocated, std::memory_order_relaxed);
    Unpoison(page);
  }

  // ---- Counters -------------------------------------------------------------
  // used_ holds published allocation counts; each cache accumulates its own
  // (delta, peak) privately and publishes them when it exchanges a batch with
  // the global pool, so the hot path writes only its own line. Threads without
  // a cache publish every operation.

  void CountAllocations(Cache& cache, std::int64_t n) noexcept {
    const std::int64_t delta = cache.delta.load(std::memory_order_relaxed) + n;
    cache.delta.store(delta, std::memory_order_relaxed);
    if (delta > cache.peak.load(std::memory_order_relaxed)) {
      cache.peak.store(delta, std::memory_order_relaxed);
    }
  }
  void CountFrees(Cache& cache, std::int64_t n) noexcept {
    cache.delta.store(cache.delta.load(std::memory_order_relaxed) - n,
                      std::memory_order_relaxed);
  }
  void Publish(Cache& cache) noexcept {
    const std::int64_t delta = cache.delta.load(std::memory_order_relaxed);
    const std::int64_t peak = cache.peak.load(std::memory_order_relaxed);
    cache.delta.store(0, std::memory_order_relaxed);
    cache.peak.store(0, std::memory_order_relaxed);
    const std::int64_t before =
        used_.fetch_add(delta, std::memory_order_relaxed);
    RaiseHighWater(before + peak);
  }
  void CountUncached(std::int64_t n) noexcept {
    const std::int64_t before = used_.fetch_add(n, std::memory_order_relaxed);
    if (n > 0) RaiseHighWater(before + n);
  }
  void RaiseHighWater(std::int64_t used) const noexcept {
    std::int64_t seen = high_water_.load(std::memory_order_relaxed);
    while (used > seen && !high_water_.compare_exchange_weak(
                              seen, used, std::memory_order_relaxed,
                              std::memory_order_relaxed)) {
    }
  }

  // ---- ASan ---------------------------------------------------------------

  void Poison(std::uint32_t page) const noexcept {
#if RPA_HAS_ASAN
    ForEachPlane(page, 1,
                 [](std::byte* p, std::size_t n) { RPA_ASAN_POISON(p, n); });
#else
    (void)page;
#endif
  }
  void Unpoison(std::uint32_t page) const noexcept {
#if RPA_HAS_ASAN
    ForEachPlane(page, 1,
                 [](std::byte* p, std::size_t n) { RPA_ASAN_UNPOISON(p, n); });
#else
    (void)page;
#endif
  }
  // fn(address, bytes) for pages [first_page, first_page + num_pages) in
  // every plane.
  template <typename Fn>
  void ForEachPlane(std::uint32_t first_page, std::uint32_t num_pages,
                    Fn&& fn) const noexcept {
    if (memory_.base == nullptr) return;
    for (std::uint32_t plane = 0; plane < memory_.num_planes; ++plane) {
      fn(memory_.base + plane * memory_.plane_stride_bytes +
             first_page * memory_.page_bytes,
         std::size_t{num_pages} * memory_.page_bytes);
    }
  }

  // ---- Errors ---------------------------------------------------------------

  // Out of line and cold, so the fast paths need no frame for strings.
  [[gnu::cold, gnu::noinline]] Status OutOfRangeError(
      std::uint32_t index) const {
    return OutOfRangeError(index, "");
  }
  [[gnu::cold, gnu::noinline]] Status OutOfRangeError(
      std::uint32_t index, const std::string& where) const {
    return InvalidArgumentError(where + "page id " + std::to_string(index) +
                                " out of range [0, " +
                                std::to_string(num_pages_) + ")");
  }
  [[gnu::cold, gnu::noinline]] static Status NotAllocatedError(
      std::uint32_t index) {
    return NotAllocatedError(index, "");
  }
  [[gnu::cold, gnu::noinline]] static Status NotAllocatedError(
      std::uint32_t index, const std::string& where) {
    return InvalidArgumentError(where + "page " + std::to_string(index) +
                                " is not allocated (double free?)");
  }

  // Read-only after construction.
  std::uint64_t id_ = 0;
  const std::uint32_t num_pages_;
  const std::uint32_t
      capacity_;               // deque capacity, a power of two; 0: no caches
  const std::size_t mask_;     // capacity_ - 1
  const std::uint32_t batch_;  // pages moved per refill/flush: capacity_ / 2
  const std::uint32_t max_caches_;
  const std::size_t
      slot_stride_;  // slots per cache, padded to whole cache lines
  const PageMemory memory_;
  MetadataArray<Atom<std::uint8_t>> state_;
  MetadataArray<Atom<std::uint32_t>> next_;
  MetadataArray<Atom<std::uint32_t>> slots_;
  MetadataArray<Cache> caches_;

  // Shared by every exchange with the global pool: one line, so an exchange
  // (transfer bracket, head CAS, used_ publish) misses once.
  alignas(kCacheLineBytes) Atom<std::uint64_t> head_;
  Atom<std::uint64_t> transfers_{0};
  Atom<std::int64_t> used_{0};
  mutable Atom<std::int64_t> high_water_{0};
  Atom<std::uint32_t> slots_high_{
      0};  // caches_[0, slots_high_) were ever claimed
};

}  // namespace rpa::memory::internal

#include "page_pool_batch.h"       // IWYU pragma: export
#include "page_pool_impl.h"        // IWYU pragma: export
#include "page_pool_primitives.h"  // IWYU pragma: export

namespace rpa::memory::internal {
// Instantiated once, in page_allocator.cc.
extern template class PagePool<std::atomic>;
}  // namespace rpa::memory::internal
