#pragma once

// Shared helpers of the PageAllocator tests (page_allocator_test.cc,
// page_allocator_thread_cache_test.cc).

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <vector>

#include "rpa/memory/page_allocator.h"

namespace rpa::memory::testing_util {

inline std::unique_ptr<PageAllocator> MakeAllocator(
    const PageAllocatorOptions& options) {
  auto allocator = PageAllocator::Create(options);
  EXPECT_TRUE(allocator.ok()) << allocator.status();
  return allocator.ok() ? std::move(allocator).value() : nullptr;
}

// Allocates pages one by one until Allocate says no.
inline std::vector<PageId> AllocateAll(PageAllocator& allocator) {
  std::vector<PageId> pages;
  while (std::optional<PageId> page = allocator.Allocate())
    pages.push_back(*page);
  return pages;
}

}  // namespace rpa::memory::testing_util
