#include "rpa/memory/page_allocator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <memory>
#include <memory_resource>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "memory/page_allocator_test_util.h"

#include "rpa/runtime/sanitizers.h"

// GCC 12 warns about members left out of designated initializers
// (-Wmissing-field-initializers; fixed in GCC 13). Leaving them out to get
// the documented defaults is the point here.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace rpa::memory {
namespace {

using namespace ::rpa::memory::testing_util;  // NOLINT: test helpers
using ::testing::HasSubstr;

// Counts what a resource hands out, optionally failing past a byte budget.
class CountingResource : public std::pmr::memory_resource {
 public:
  explicit CountingResource(std::size_t budget_bytes = ~std::size_t{0})
      : budget_bytes_(budget_bytes) {}
  std::size_t outstanding_bytes() const { return outstanding_bytes_; }
  std::size_t num_allocations() const { return num_allocations_; }

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    if (outstanding_bytes_ + bytes > budget_bytes_) throw std::bad_alloc();
    outstanding_bytes_ += bytes;
    ++num_allocations_;
    return std::pmr::new_delete_resource()->allocate(bytes, alignment);
  }
  void do_deallocate(void* p, std::size_t bytes,
                     std::size_t alignment) override {
    outstanding_bytes_ -= bytes;
    std::pmr::new_delete_resource()->deallocate(p, bytes, alignment);
  }
  bool do_is_equal(
      const std::pmr::memory_resource& other) const noexcept override {
    return this == &other;
  }
  std::size_t budget_bytes_;
  std::size_t outstanding_bytes_ = 0;
  std::size_t num_allocations_ = 0;
};

// ---- Create -----------------------------------------------------------------

struct BadOption {
  const char* name;
  PageAllocatorOptions options;
  const char* message;
};

TEST(PageAllocatorTest, CreateRejectsBadOptionsNamingFieldAndValue) {
  std::byte memory[64];
  const std::vector<BadOption> cases = {
      {"zero pages", {.num_pages = 0}, "num_pages must be in [1, 2^31), got 0"},
      {"2^31 pages",
       {.num_pages = 1u << 31},
       "num_pages must be in [1, 2^31), got 2147483648"},
      {"cache of one",
       {.num_pages = 8, .thread_cache_pages = 1},
       "thread_cache_pages must be 0"},
      {"huge cache",
       {.num_pages = 8, .thread_cache_pages = 70000},
       "got 70000"},
      {"many caches",
       {.num_pages = 8, .max_thread_caches = 5000},
       "max_thread_caches must be at most 4096, got 5000"},
      {"null metadata",
       {.num_pages = 8, .metadata = nullptr},
       "metadata must not be null"},
      {"zero page bytes",
       {.num_pages = 8, .memory = {.base = memory, .page_bytes = 0}},
       "memory.page_bytes must be positive"},
      {"zero planes",
       {.num_pages = 8,
        .memory = {.base = memory, .page_bytes = 8, .num_planes = 0}},
       "memory.num_planes must be positive"},
      {"overlapping planes",
       {.num_pages = 8,
        .memory = {.base = memory,
                   .page_bytes = 8,
                   .num_planes = 2,
                   .plane_stride_bytes = 32}},
       "memory.plane_stride_bytes must be at least num_pages * "
       "memory.page_bytes = 64"},
  };
  for (const BadOption& bad : cases) {
    SCOPED_TRACE(bad.name);
    auto allocator = PageAllocator::Create(bad.options);
    ASSERT_FALSE(allocator.ok());
    EXPECT_EQ(allocator.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(allocator.status().message(), HasSubstr(bad.message));
  }
}

TEST(PageAllocatorTest, CreateAcceptsBoundaryOptions) {
  EXPECT_TRUE(PageAllocator::Create({.num_pages = 1}).ok());
  EXPECT_TRUE(
      PageAllocator::Create({.num_pages = 1, .thread_cache_pages = 0}).ok());
  EXPECT_TRUE(
      PageAllocator::Create({.num_pages = 1, .thread_cache_pages = 2}).ok());
  EXPECT_TRUE(
      PageAllocator::Create({.num_pages = 3, .max_thread_caches = 0}).ok());
}

TEST(PageAllocatorTest, BookkeepingComesFromMetadataResourceAndIsReturned) {
  CountingResource resource;
  {
    auto allocator = MakeAllocator({.num_pages = 1000, .metadata = &resource});
    ASSERT_NE(allocator, nullptr);
    EXPECT_GE(resource.outstanding_bytes(),
              1000u * 5);  // a state byte and a link per page
    ASSERT_TRUE(allocator->Allocate().has_value());
  }
  EXPECT_GT(resource.num_allocations(), 0u);
  EXPECT_EQ(resource.outstanding_bytes(), 0u);
}

TEST(PageAllocatorTest, CreateReportsExhaustedMetadataAndLeaksNothing) {
  for (std::size_t budget :
       {std::size_t{0}, std::size_t{1000}, std::size_t{6000}}) {
    SCOPED_TRACE(budget);
    CountingResource resource(budget);
    auto allocator =
        PageAllocator::Create({.num_pages = 1000, .metadata = &resource});
    ASSERT_FALSE(allocator.ok());
    EXPECT_EQ(allocator.status().code(), StatusCode::kResourceExhausted);
    EXPECT_THAT(allocator.status().message(),
                HasSubstr("bytes of bookkeeping for num_pages 1000"));
    EXPECT_EQ(resource.outstanding_bytes(), 0u);
  }
}

// ---- Allocate / Free, for each cache configuration --------------------------

class PageAllocatorConfigTest : public ::testing::TestWithParam<std::uint32_t> {
 protected:
  std::unique_ptr<PageAllocator> Make(std::uint32_t num_pages) {
    return MakeAllocator(
        {.num_pages = num_pages, .thread_cache_pages = GetParam()});
  }
};

INSTANTIATE_TEST_SUITE_P(CachePages, PageAllocatorConfigTest,
                         ::testing::Values(0u, 2u, 4u, 128u),
                         [](const auto& param_info) {
                           return "cache" + std::to_string(param_info.param);
                         });

TEST_P(PageAllocatorConfigTest, AllocatesEveryPageOnceThenReportsNone) {
  auto allocator = Make(100);
  std::vector<PageId> pages = AllocateAll(*allocator);
  ASSERT_EQ(pages.size(), 100u);
  std::set<PageId> distinct(pages.begin(), pages.end());
  EXPECT_EQ(distinct.size(), 100u);
  for (PageId page : pages) {
    EXPECT_LT(PageIndex(page), 100u);
    EXPECT_TRUE(allocator->IsAllocated(page));
  }
  EXPECT_FALSE(allocator->Allocate().has_value());
  EXPECT_FALSE(allocator->Allocate().has_value());
  for (PageId page : pages) ASSERT_TRUE(allocator->Free(page).ok());
  EXPECT_EQ(AllocateAll(*allocator).size(), 100u);
}

TEST_P(PageAllocatorConfigTest, FreedPageIsReused) {
  auto allocator = Make(1);
  std::optional<PageId> page = allocator->Allocate();
  ASSERT_TRUE(page.has_value());
  EXPECT_FALSE(allocator->Allocate().has_value());
  ASSERT_TRUE(allocator->Free(*page).ok());
  EXPECT_FALSE(allocator->IsAllocated(*page));
  std::optional<PageId> again = allocator->Allocate();
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(*again, *page);
}

TEST_P(PageAllocatorConfigTest, FreeRejectsOutOfRangeId) {
  auto allocator = Make(4096);
  const Status status = allocator->Free(MakePageId(5000));
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "page id 5000 out of range [0, 4096)");
  EXPECT_EQ(allocator->Free(MakePageId(4096)).message(),
            "page id 4096 out of range [0, 4096)");
  EXPECT_EQ(allocator->Stats().used_pages, 0u);
}

TEST_P(PageAllocatorConfigTest, FreeRejectsDoubleFreeAndChangesNothing) {
  auto allocator = Make(64);
  std::vector<PageId> pages = AllocateAll(*allocator);
  ASSERT_EQ(pages.size(), 64u);
  const PageId page = pages[17];
  ASSERT_TRUE(allocator->Free(page).ok());
  const Status status = allocator->Free(page);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "page " + std::to_string(PageIndex(page)) +
                                  " is not allocated (double free?)");
  // The free list is intact: exactly the one page comes back, once.
  EXPECT_EQ(allocator->Stats().used_pages, 63u);
  std::vector<PageId> again = AllocateAll(*allocator);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0], page);
}

TEST_P(PageAllocatorConfigTest, FreeRejectsPageNeverAllocated) {
  auto allocator = Make(32);
  const Status status = allocator->Free(MakePageId(17));
  EXPECT_EQ(status.message(), "page 17 is not allocated (double free?)");
  EXPECT_EQ(AllocateAll(*allocator).size(), 32u);
}

TEST_P(PageAllocatorConfigTest, IsAllocatedTracksState) {
  auto allocator = Make(8);
  EXPECT_FALSE(allocator->IsAllocated(MakePageId(0)));
  EXPECT_FALSE(allocator->IsAllocated(MakePageId(8)));
  EXPECT_FALSE(allocator->IsAllocated(MakePageId(0xFFFFFFFF)));
  std::optional<PageId> page = allocator->Allocate();
  ASSERT_TRUE(page.has_value());
  EXPECT_TRUE(allocator->IsAllocated(*page));
  ASSERT_TRUE(allocator->Free(*page).ok());
  EXPECT_FALSE(allocator->IsAllocated(*page));
}

// ---- AllocateN / FreeN ------------------------------------------------------

TEST_P(PageAllocatorConfigTest, AllocateNFillsDistinctPages) {
  auto allocator = Make(300);
  std::vector<PageId> pages(250);
  ASSERT_TRUE(allocator->AllocateN(pages));
  std::set<PageId> distinct(pages.begin(), pages.end());
  EXPECT_EQ(distinct.size(), 250u);
  for (PageId page : pages) EXPECT_TRUE(allocator->IsAllocated(page));
  EXPECT_EQ(allocator->Stats().used_pages, 250u);
  std::vector<PageId> rest(50);
  ASSERT_TRUE(allocator->AllocateN(rest));
  for (PageId page : rest) EXPECT_EQ(distinct.count(page), 0u);
  EXPECT_FALSE(allocator->Allocate().has_value());
  EXPECT_TRUE(allocator->AllocateN({}));
  ASSERT_TRUE(allocator->FreeN(pages).ok());
  ASSERT_TRUE(allocator->FreeN(rest).ok());
  EXPECT_EQ(allocator->Stats().used_pages, 0u);
}

TEST_P(PageAllocatorConfigTest, AllocateNIsAllOrNothing) {
  auto allocator = Make(100);
  std::vector<PageId> held(60);
  ASSERT_TRUE(allocator->AllocateN(held));
  std::vector<PageId> too_many(41);
  EXPECT_FALSE(allocator->AllocateN(too_many));
  EXPECT_EQ(allocator->Stats().used_pages, 60u);
  std::vector<PageId> more_than_exist(101);
  EXPECT_FALSE(allocator->AllocateN(more_than_exist));
  // Nothing leaked by the failed calls: the remaining 40 are all there.
  std::vector<PageId> exact(40);
  EXPECT_TRUE(allocator->AllocateN(exact));
  EXPECT_EQ(allocator->Stats().used_pages, 100u);
}

TEST_P(PageAllocatorConfigTest, FreeNFreesEverything) {
  auto allocator = Make(64);
  std::vector<PageId> pages(64);
  ASSERT_TRUE(allocator->AllocateN(pages));
  // Free in pieces of several sizes, through the cache and around it.
  std::span<const PageId> all(pages);
  ASSERT_TRUE(allocator->FreeN(all.subspan(0, 1)).ok());
  ASSERT_TRUE(allocator->FreeN(all.subspan(1, 3)).ok());
  ASSERT_TRUE(allocator->FreeN(all.subspan(4, 60)).ok());
  ASSERT_TRUE(allocator->FreeN({}).ok());
  for (PageId page : pages) EXPECT_FALSE(allocator->IsAllocated(page));
  EXPECT_EQ(allocator->Stats().free_pages, 64u);
  EXPECT_EQ(AllocateAll(*allocator).size(), 64u);
}

TEST_P(PageAllocatorConfigTest, FreeNRejectsBadSpansAndFreesNothing) {
  auto allocator = Make(16);
  std::vector<PageId> pages(8);
  ASSERT_TRUE(allocator->AllocateN(pages));
  const PageId not_allocated = *allocator->Allocate();
  ASSERT_TRUE(allocator->Free(not_allocated).ok());

  std::vector<PageId> out_of_range = {pages[0], pages[1], MakePageId(16)};
  Status status = allocator->FreeN(out_of_range);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "pages[2]: page id 16 out of range [0, 16)");

  std::vector<PageId> repeated = {pages[0], pages[1], pages[2], pages[1]};
  status = allocator->FreeN(repeated);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "pages[3]: page " +
                                  std::to_string(PageIndex(pages[1])) +
                                  " is repeated (also pages[1])");

  std::vector<PageId> with_free = {pages[3], pages[4], not_allocated, pages[5]};
  status = allocator->FreeN(with_free);
  EXPECT_EQ(status.message(), "pages[2]: page " +
                                  std::to_string(PageIndex(not_allocated)) +
                                  " is not allocated (double free?)");

  // Every failed call was undone.
  for (PageId page : pages) EXPECT_TRUE(allocator->IsAllocated(page));
  EXPECT_EQ(allocator->Stats().used_pages, 8u);
  ASSERT_TRUE(allocator->FreeN(pages).ok());
  EXPECT_EQ(allocator->Stats().used_pages, 0u);
  EXPECT_EQ(AllocateAll(*allocator).size(), 16u);
}

// ---- Counters ---------------------------------------------------------------

TEST_P(PageAllocatorConfigTest, StatsAreExactWithOneThread) {
  auto allocator = Make(1000);
  PageAllocatorStats stats = allocator->Stats();
  EXPECT_EQ(stats.num_pages, 1000u);
  EXPECT_EQ(stats.free_pages, 1000u);
  EXPECT_EQ(stats.used_pages, 0u);
  EXPECT_EQ(stats.high_water_pages, 0u);

  std::vector<PageId> held;
  // A sawtooth whose peaks (3, 7, 130, 600) fall between batch exchanges.
  for (std::size_t peak : {3u, 7u, 130u, 600u}) {
    while (held.size() < peak) held.push_back(*allocator->Allocate());
    while (held.size() > peak / 2) {
      ASSERT_TRUE(allocator->Free(held.back()).ok());
      held.pop_back();
    }
    stats = allocator->Stats();
    EXPECT_EQ(stats.used_pages, held.size());
    EXPECT_EQ(stats.free_pages, 1000u - held.size());
    EXPECT_EQ(stats.high_water_pages, peak);
  }
  std::vector<PageId> batch(350);
  ASSERT_TRUE(allocator->AllocateN(batch));
  EXPECT_EQ(allocator->Stats().high_water_pages, 650u);
  ASSERT_TRUE(allocator->FreeN(batch).ok());
  ASSERT_TRUE(allocator->FreeN(held).ok());
  stats = allocator->Stats();
  EXPECT_EQ(stats.used_pages, 0u);
  EXPECT_EQ(stats.free_pages, 1000u);
  EXPECT_EQ(stats.high_water_pages, 650u);
}

// ---- ASan poisoning ---------------------------------------------------------

TEST(PageAllocatorTest, FreedPagesArePoisonedAndAllocatedOnesAreNot) {
#if !RPA_HAS_ASAN
  GTEST_SKIP() << "needs AddressSanitizer (RPA_SANITIZE=address,undefined)";
#else
  constexpr std::size_t kPageBytes = 256;
  constexpr std::uint32_t kPages = 16;
  constexpr std::uint32_t kPlanes = 3;
  constexpr std::size_t kStride = kPages * kPageBytes + 512;
  std::vector<std::byte> memory(kPlanes * kStride);
  auto address = [&](std::uint32_t plane, PageId page, std::size_t offset) {
    return memory.data() + plane * kStride + PageIndex(page) * kPageBytes +
           offset;
  };
  {
    auto allocator = MakeAllocator({.num_pages = kPages,
                                    .thread_cache_pages = 4,
                                    .memory = {.base = memory.data(),
                                               .page_bytes = kPageBytes,
                                               .num_planes = kPlanes,
                                               .plane_stride_bytes = kStride}});
    for (std::uint32_t plane = 0; plane < kPlanes; ++plane) {
      EXPECT_TRUE(RPA_ASAN_IS_POISONED(address(plane, MakePageId(5), 0)));
      EXPECT_FALSE(RPA_ASAN_IS_POISONED(memory.data() + plane * kStride +
                                        kPages * kPageBytes));
    }
    std::optional<PageId> page = allocator->Allocate();
    ASSERT_TRUE(page.has_value());
    for (std::uint32_t plane = 0; plane < kPlanes; ++plane) {
      EXPECT_FALSE(RPA_ASAN_IS_POISONED(address(plane, *page, 0)));
      EXPECT_FALSE(RPA_ASAN_IS_POISONED(address(plane, *page, kPageBytes - 1)));
    }
    *address(1, *page, 7) = std::byte{42};  // usable
    ASSERT_TRUE(allocator->Free(*page).ok());
    for (std::uint32_t plane = 0; plane < kPlanes; ++plane) {
      EXPECT_TRUE(RPA_ASAN_IS_POISONED(address(plane, *page, 0)));
      EXPECT_TRUE(RPA_ASAN_IS_POISONED(address(plane, *page, kPageBytes - 1)));
    }
    EXPECT_DEATH(*address(1, *page, 7) = std::byte{43}, "use-after-poison");
    std::vector<PageId> pages(kPages);
    ASSERT_TRUE(allocator->AllocateN(pages));
    for (PageId each : pages)
      EXPECT_FALSE(RPA_ASAN_IS_POISONED(address(2, each, 100)));
    ASSERT_TRUE(allocator->FreeN(pages).ok());
    for (PageId each : pages)
      EXPECT_TRUE(RPA_ASAN_IS_POISONED(address(2, each, 100)));
  }
  // The destructor hands the memory back usable.
  EXPECT_FALSE(RPA_ASAN_IS_POISONED(address(0, MakePageId(5), 0)));
#endif
}

}  // namespace
}  // namespace rpa::memory
