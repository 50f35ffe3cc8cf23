// Benchmarks of the page allocator against two baselines in the same run:
//   PageAllocator   lock-free, per-thread caches (thread_cache_pages = 128)
//   SharedStack     PageAllocator with thread_cache_pages = 0: every call goes
//                   to the one shared tagged Treiber stack (plus the same
//                   state CAS and counters)
//   MutexFreeList   a std::vector free list under a std::mutex, with the same
//                   range and double-free checks
// Each is run with 1 thread and with 2 threads contending for one allocator.
// Counters: items_per_second (pairs or pages, all threads together) and
// ns_per_pair / ns_per_page (per thread: wall time over that thread's work).
//
// Run: rpa_memory_bench --benchmark_repetitions=5 (the machine is shared;
// quote the best repetition).

#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "rpa/memory/page_allocator.h"
#include "rpa/runtime/check.h"

// GCC 12 warns about members left out of designated initializers
// (-Wmissing-field-initializers; fixed in GCC 13); the defaults are wanted.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace rpa::memory {
namespace {

constexpr std::uint32_t kNumPages = 1u << 16;
constexpr std::size_t kBurstPages = 256;
constexpr std::size_t kRunPages = 2048;

// The baseline: what one would write first.
class MutexFreeList {
 public:
  explicit MutexFreeList(std::uint32_t num_pages)
      : allocated_(num_pages, false) {
    free_.reserve(num_pages);
    for (std::uint32_t i = num_pages; i-- > 0;) free_.push_back(i);
  }
  std::optional<PageId> Allocate() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) return std::nullopt;
    const std::uint32_t page = free_.back();
    free_.pop_back();
    allocated_[page] = true;
    return MakePageId(page);
  }
  bool AllocateN(std::span<PageId> pages) {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.size() < pages.size()) return false;
    for (PageId& page : pages) {
      page = MakePageId(free_.back());
      free_.pop_back();
      allocated_[PageIndex(page)] = true;
    }
    return true;
  }
  bool Free(PageId page) {
    std::lock_guard<std::mutex> lock(mu_);
    const std::uint32_t index = PageIndex(page);
    if (index >= allocated_.size() || !allocated_[index]) return false;
    allocated_[index] = false;
    free_.push_back(index);
    return true;
  }
  bool FreeN(std::span<const PageId> pages) {
    std::lock_guard<std::mutex> lock(mu_);
    for (PageId page : pages) {
      if (PageIndex(page) >= allocated_.size() || !allocated_[PageIndex(page)])
        return false;
    }
    for (PageId page : pages) {
      allocated_[PageIndex(page)] = false;
      free_.push_back(PageIndex(page));
    }
    return true;
  }

 private:
  std::mutex mu_;
  std::vector<std::uint32_t> free_;
  std::vector<bool> allocated_;
};

// PageAllocator behind the same minimal interface.
class Lockfree {
 public:
  explicit Lockfree(std::uint32_t thread_cache_pages) {
    auto allocator = PageAllocator::Create(
        {.num_pages = kNumPages, .thread_cache_pages = thread_cache_pages});
    RPA_CHECK(allocator.ok());
    allocator_ = std::move(allocator).value();
  }
  std::optional<PageId> Allocate() { return allocator_->Allocate(); }
  bool AllocateN(std::span<PageId> pages) {
    return allocator_->AllocateN(pages);
  }
  bool Free(PageId page) { return allocator_->Free(page).ok(); }
  bool FreeN(std::span<const PageId> pages) {
    return allocator_->FreeN(pages).ok();
  }

 private:
  std::unique_ptr<PageAllocator> allocator_;
};

// One shared instance per benchmark run, made before its threads start.
std::unique_ptr<Lockfree> g_cached;
std::unique_ptr<Lockfree> g_shared;
std::unique_ptr<MutexFreeList> g_mutex;

void SetUpCached(const benchmark::State&) {
  g_cached = std::make_unique<Lockfree>(128);
}
void TearDownCached(const benchmark::State&) { g_cached.reset(); }
void SetUpShared(const benchmark::State&) {
  g_shared = std::make_unique<Lockfree>(0);
}
void TearDownShared(const benchmark::State&) { g_shared.reset(); }
void SetUpMutex(const benchmark::State&) {
  g_mutex = std::make_unique<MutexFreeList>(kNumPages);
}
void TearDownMutex(const benchmark::State&) { g_mutex.reset(); }

void Report(benchmark::State& state, std::size_t items_per_iteration,
            const char* per_item) {
  const auto items = static_cast<double>(state.iterations()) *
                     static_cast<double>(items_per_iteration);
  state.SetItemsProcessed(state.iterations() *
                          static_cast<std::int64_t>(items_per_iteration));
  // Averaged over threads, then inverted: seconds per item per thread.
  state.counters[per_item] = benchmark::Counter(
      items, benchmark::Counter::kIsRate | benchmark::Counter::kAvgThreads |
                 benchmark::Counter::kInvert);
}

// One Allocate and one Free of the same page.
template <typename Impl>
void AllocFreePair(benchmark::State& state, Impl& impl) {
  for (auto _ : state) {
    const std::optional<PageId> page = impl.Allocate();
    benchmark::DoNotOptimize(page);
    if (!page.has_value() || !impl.Free(*page))
      state.SkipWithError("allocation failed");
  }
  Report(state, 1, "ns_per_pair");
}

// 256 Allocates, then 256 Frees: more than a cache holds, so the caches
// exchange batches with the global pool every burst.
template <typename Impl>
void Burst256(benchmark::State& state, Impl& impl) {
  std::vector<PageId> pages(kBurstPages);
  for (auto _ : state) {
    for (PageId& page : pages) {
      const std::optional<PageId> got = impl.Allocate();
      if (!got.has_value()) state.SkipWithError("allocation failed");
      page = got.value_or(PageId{});
    }
    benchmark::DoNotOptimize(pages.data());
    for (PageId page : pages) impl.Free(page);
  }
  Report(state, kBurstPages, "ns_per_pair");
}

// AllocateN and FreeN of 2048 pages.
template <typename Impl>
void AllocateNRun(benchmark::State& state, Impl& impl) {
  std::vector<PageId> pages(kRunPages);
  for (auto _ : state) {
    if (!impl.AllocateN(pages)) state.SkipWithError("allocation failed");
    benchmark::DoNotOptimize(pages.data());
    if (!impl.FreeN(pages)) state.SkipWithError("free failed");
  }
  Report(state, kRunPages, "ns_per_page");
}

void BM_PageAllocator_AllocFreePair(benchmark::State& state) {
  AllocFreePair(state, *g_cached);
}
void BM_SharedStack_AllocFreePair(benchmark::State& state) {
  AllocFreePair(state, *g_shared);
}
void BM_MutexFreeList_AllocFreePair(benchmark::State& state) {
  AllocFreePair(state, *g_mutex);
}
void BM_PageAllocator_Burst256(benchmark::State& state) {
  Burst256(state, *g_cached);
}
void BM_SharedStack_Burst256(benchmark::State& state) {
  Burst256(state, *g_shared);
}
void BM_MutexFreeList_Burst256(benchmark::State& state) {
  Burst256(state, *g_mutex);
}
void BM_PageAllocator_AllocateN(benchmark::State& state) {
  AllocateNRun(state, *g_cached);
}
void BM_SharedStack_AllocateN(benchmark::State& state) {
  AllocateNRun(state, *g_shared);
}
void BM_MutexFreeList_AllocateN(benchmark::State& state) {
  AllocateNRun(state, *g_mutex);
}

#define RPA_PAGE_BENCHMARK(name, set_up, tear_down) \
  BENCHMARK(name)                                   \
      ->Setup(set_up)                               \
      ->Teardown(tear_down)                         \
      ->Threads(1)                                  \
      ->Threads(2)                                  \
      ->UseRealTime()

RPA_PAGE_BENCHMARK(BM_PageAllocator_AllocFreePair, SetUpCached, TearDownCached);
RPA_PAGE_BENCHMARK(BM_SharedStack_AllocFreePair, SetUpShared, TearDownShared);
RPA_PAGE_BENCHMARK(BM_MutexFreeList_AllocFreePair, SetUpMutex, TearDownMutex);
RPA_PAGE_BENCHMARK(BM_PageAllocator_Burst256, SetUpCached, TearDownCached);
RPA_PAGE_BENCHMARK(BM_SharedStack_Burst256, SetUpShared, TearDownShared);
RPA_PAGE_BENCHMARK(BM_MutexFreeList_Burst256, SetUpMutex, TearDownMutex);
RPA_PAGE_BENCHMARK(BM_PageAllocator_AllocateN, SetUpCached, TearDownCached);
RPA_PAGE_BENCHMARK(BM_SharedStack_AllocateN, SetUpShared, TearDownShared);
RPA_PAGE_BENCHMARK(BM_MutexFreeList_AllocateN, SetUpMutex, TearDownMutex);

}  // namespace
}  // namespace rpa::memory

BENCHMARK_MAIN();
