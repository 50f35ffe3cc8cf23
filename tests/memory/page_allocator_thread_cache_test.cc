// Thread caches of the PageAllocator: reclaiming and stealing pages parked in
// another thread's cache, and the private pool's cache slots (release at
// thread exit, adoption, threads beyond max_thread_caches, a thread
// outliving its pool, many pools per thread).

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <thread>
#include <vector>

#include "memory/page_allocator_test_util.h"
#include "page_pool.h"

#include "rpa/memory/page_allocator.h"

// GCC 12 warns about members left out of designated initializers
// (-Wmissing-field-initializers; fixed in GCC 13). Leaving them out to get
// the documented defaults is the point here.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace rpa::memory {
namespace {

using namespace ::rpa::memory::testing_util;  // NOLINT: test helpers
using Pool = internal::PagePool<std::atomic>;

// ---- Thread caches ----------------------------------------------------------

// Runs `park` on a thread that then waits, alive, until the returned
// function is called (which joins it).
class ParkedThread {
 public:
  explicit ParkedThread(std::function<void()> park)
      : thread_([this, park = std::move(park)] {
          park();
          std::unique_lock<std::mutex> lock(mu_);
          parked_ = true;
          cv_.notify_all();
          cv_.wait(lock, [&] { return released_; });
        }) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return parked_; });
  }
  ~ParkedThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      released_ = true;
      cv_.notify_all();
    }
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool parked_ = false;
  bool released_ = false;
  std::thread thread_;
};

TEST(PageAllocatorTest, AllocateReclaimsPagesParkedInALiveThreadsCache) {
  auto allocator = MakeAllocator({.num_pages = 64, .thread_cache_pages = 32});
  ParkedThread parked([&] {
    std::vector<PageId> pages = AllocateAll(*allocator);
    ASSERT_EQ(pages.size(), 64u);
    for (PageId page : pages)
      ASSERT_TRUE(allocator->Free(page).ok());  // 16..32 stay cached
  });
  EXPECT_EQ(allocator->Stats().free_pages, 64u);
  std::vector<PageId> pages = AllocateAll(*allocator);
  EXPECT_EQ(pages.size(), 64u);
  ASSERT_TRUE(allocator->FreeN(pages).ok());
  // AllocateN reclaims them too (this time from the global pool and our cache).
  std::vector<PageId> all(64);
  EXPECT_TRUE(allocator->AllocateN(all));
  ASSERT_TRUE(allocator->FreeN(all).ok());
}

TEST(PageAllocatorTest, AllocateNStealsFromOtherCaches) {
  auto allocator = MakeAllocator({.num_pages = 64, .thread_cache_pages = 64});
  ParkedThread parked([&] {
    std::vector<PageId> pages(64);
    ASSERT_TRUE(allocator->AllocateN(pages));
    ASSERT_TRUE(allocator->FreeN(std::span<const PageId>(pages).first(20))
                    .ok());  // via cache
    ASSERT_TRUE(allocator->FreeN(std::span<const PageId>(pages).subspan(20))
                    .ok());  // global
  });
  std::vector<PageId> all(64);
  EXPECT_TRUE(allocator->AllocateN(all));
  EXPECT_EQ(std::set<PageId>(all.begin(), all.end()).size(), 64u);
  EXPECT_EQ(allocator->Stats().used_pages, 64u);
}

PageAllocatorOptions OneCacheOptions() {
  return {.num_pages = 32, .thread_cache_pages = 8, .max_thread_caches = 1};
}

TEST(PagePoolTest, ThreadExitReleasesItsCacheWithPagesStillStealable) {
  Pool pool(OneCacheOptions());
  std::thread([&] {
    ASSERT_TRUE(pool.HasThreadCache());
    std::optional<PageId> page = pool.Allocate();
    ASSERT_TRUE(page.has_value());
    ASSERT_TRUE(pool.Free(*page).ok());  // leaves a batch of pages in the cache
    EXPECT_EQ(pool.CountOwnedCaches(), 1u);
  }).join();
  EXPECT_EQ(pool.CountOwnedCaches(), 0u);
  EXPECT_EQ(pool.CountOrphanedCaches(), 1u);
  EXPECT_EQ(pool.Stats().used_pages, 0u);
  // The orphan's pages are reachable: this thread (which adopts the slot,
  // since it is free again) and then the whole pool.
  std::vector<PageId> pages;
  while (std::optional<PageId> page = pool.Allocate()) pages.push_back(*page);
  EXPECT_EQ(pages.size(), 32u);
  EXPECT_EQ(pool.CountOwnedCaches(), 1u);
  ASSERT_TRUE(pool.FreeN(pages).ok());
  pool.ReleaseThreadCache();
  EXPECT_EQ(pool.CountOwnedCaches(), 0u);
}

TEST(PagePoolTest, NextThreadAdoptsAnOrphanedSlot) {
  Pool pool(OneCacheOptions());
  std::thread([&] {
    ASSERT_TRUE(pool.HasThreadCache());
    ASSERT_TRUE(pool.Free(*pool.Allocate()).ok());
  }).join();
  ASSERT_EQ(pool.CountOrphanedCaches(), 1u);
  std::thread([&] {
    EXPECT_TRUE(pool.HasThreadCache());
    EXPECT_EQ(pool.CountOwnedCaches(), 1u);
    EXPECT_EQ(pool.CountOrphanedCaches(), 0u);
    std::vector<PageId> pages;
    while (std::optional<PageId> page = pool.Allocate()) pages.push_back(*page);
    EXPECT_EQ(pages.size(), 32u);
    EXPECT_TRUE(pool.FreeN(pages).ok());
  }).join();
  EXPECT_EQ(pool.CountOrphanedCaches(), 1u);
  EXPECT_EQ(pool.Stats().free_pages, 32u);
}

TEST(PagePoolTest, ThreadsBeyondMaxThreadCachesUseTheGlobalPool) {
  Pool pool(OneCacheOptions());
  ASSERT_TRUE(pool.HasThreadCache());  // this thread holds the only slot
  std::thread([&] {
    EXPECT_FALSE(pool.HasThreadCache());
    std::vector<PageId> pages(10);
    ASSERT_TRUE(pool.AllocateN(pages));
    for (PageId page : pages) EXPECT_TRUE(pool.Free(page).ok());
    EXPECT_TRUE(pool.Free(*pool.Allocate()).ok());
  }).join();
  EXPECT_EQ(pool.CountOwnedCaches(), 1u);
  EXPECT_EQ(pool.Stats().used_pages, 0u);
  pool.ReleaseThreadCache();
}

TEST(PagePoolTest, ThreadOutlivingItsPoolExitsCleanly) {
  auto pool = std::make_unique<Pool>(OneCacheOptions());
  std::mutex mu;
  std::condition_variable cv;
  int step = 0;
  std::thread thread([&] {
    ASSERT_TRUE(pool->Free(*pool->Allocate()).ok());
    std::unique_lock<std::mutex> lock(mu);
    step = 1;
    cv.notify_all();
    cv.wait(lock, [&] { return step == 2; });
    // The pool is gone; a new one (possibly at the same address) is unknown
    // to this thread's memo, which must not confuse the two.
    Pool other(OneCacheOptions());
    EXPECT_TRUE(other.HasThreadCache());
    EXPECT_TRUE(other.Free(*other.Allocate()).ok());
    EXPECT_EQ(other.Stats().used_pages, 0u);
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return step == 1; });
    pool.reset();
    step = 2;
    cv.notify_all();
  }
  thread.join();  // its exit hook skips the dead pool
}

TEST(PagePoolTest, OneThreadCanUseManyPools) {
  // More live pools than the thread memo has entries, and a churn of dead
  // ones: every pool keeps working, caches or not.
  std::vector<std::unique_ptr<Pool>> pools;
  for (int i = 0; i < 40; ++i) {
    pools.push_back(std::make_unique<Pool>(
        PageAllocatorOptions{.num_pages = 4, .thread_cache_pages = 2}));
  }
  for (int round = 0; round < 3; ++round) {
    for (auto& pool : pools) {
      std::vector<PageId> pages;
      while (std::optional<PageId> page = pool->Allocate())
        pages.push_back(*page);
      ASSERT_EQ(pages.size(), 4u);
      ASSERT_TRUE(pool->FreeN(pages).ok());
    }
  }
  for (int i = 0; i < 100; ++i) {
    Pool pool({.num_pages = 4, .thread_cache_pages = 2});
    ASSERT_TRUE(pool.Free(*pool.Allocate()).ok());
  }
  for (auto& pool : pools) pool->ReleaseThreadCache();
}

}  // namespace
}  // namespace rpa::memory
