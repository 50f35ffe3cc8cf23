#include "rpa/memory/page_allocator.h"

#include <fmt/format.h>

#include <bit>
#include <cstddef>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>

#include "page_pool.h"

namespace rpa::memory {

namespace internal {
template class PagePool<std::atomic>;
}  // namespace internal

namespace {

Status ValidateOptions(const PageAllocatorOptions& options) {
  if (options.num_pages == 0 || options.num_pages >= (std::uint32_t{1} << 31)) {
    return InvalidArgumentError(fmt::format(
        "num_pages must be in [1, 2^31), got {}", options.num_pages));
  }
  if (options.thread_cache_pages == 1) {
    return InvalidArgumentError(
        "thread_cache_pages must be 0 (no thread caches) or at least 2, got 1");
  }
  if (options.thread_cache_pages > internal::kMaxThreadCachePages) {
    return InvalidArgumentError(fmt::format(
        "thread_cache_pages must be at most {}, got {}",
        internal::kMaxThreadCachePages, options.thread_cache_pages));
  }
  if (options.max_thread_caches > internal::kMaxThreadCaches) {
    return InvalidArgumentError(
        fmt::format("max_thread_caches must be at most {}, got {}",
                    internal::kMaxThreadCaches, options.max_thread_caches));
  }
  if (options.metadata == nullptr) {
    return InvalidArgumentError("metadata must not be null");
  }
  const PageMemory& memory = options.memory;
  if (memory.base != nullptr) {
    if (memory.page_bytes == 0) {
      return InvalidArgumentError(
          "memory.page_bytes must be positive when memory.base is set, got 0");
    }
    if (memory.num_planes == 0) {
      return InvalidArgumentError(
          "memory.num_planes must be positive when memory.base is set, got 0");
    }
    std::size_t plane_bytes = 0;
    if (__builtin_mul_overflow(std::size_t{options.num_pages},
                               memory.page_bytes, &plane_bytes)) {
      return InvalidArgumentError(
          fmt::format("num_pages ({}) * memory.page_bytes ({}) overflows",
                      options.num_pages, memory.page_bytes));
    }
    if (memory.num_planes > 1) {
      if (memory.plane_stride_bytes < plane_bytes) {
        return InvalidArgumentError(
            fmt::format("memory.plane_stride_bytes must be at least num_pages "
                        "* memory.page_bytes = {} "
                        "(planes must not overlap), got {}",
                        plane_bytes, memory.plane_stride_bytes));
      }
      std::size_t span_bytes = 0;
      if (__builtin_mul_overflow(std::size_t{memory.num_planes - 1},
                                 memory.plane_stride_bytes, &span_bytes) ||
          __builtin_add_overflow(span_bytes, plane_bytes, &span_bytes)) {
        return InvalidArgumentError(fmt::format(
            "memory.num_planes ({}) * memory.plane_stride_bytes ({}) overflows",
            memory.num_planes, memory.plane_stride_bytes));
      }
    }
  }
  return OkStatus();
}

}  // namespace

StatusOr<std::unique_ptr<PageAllocator>> PageAllocator::Create(
    const PageAllocatorOptions& options) {
  RPA_RETURN_IF_ERROR(ValidateOptions(options));
  try {
    auto pool = std::make_unique<internal::PagePool<std::atomic>>(options);
    return std::unique_ptr<PageAllocator>(new PageAllocator(std::move(pool)));
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(
        fmt::format("options.metadata cannot supply {} bytes of bookkeeping "
                    "for num_pages {}",
                    internal::PagePool<std::atomic>::MetadataBytes(options),
                    options.num_pages));
  }
}

PageAllocator::PageAllocator(
    std::unique_ptr<internal::PagePool<std::atomic>> pool)
    : pool_(std::move(pool)) {}

PageAllocator::~PageAllocator() = default;

// gcc 12 returns a std::optional<PageId> by storing the id (4 bytes) and the
// flag (1 byte) to the stack and reloading all 8 bytes into a register: a
// failed store-to-load forwarding that cost ~5 ns per Allocate on our EPYC,
// half the budget of an allocate+free pair. So the 8 bytes are assembled in a
// register. This relies on the layout libstdc++ and libc++ both use (value at
// offset 0, flag right after it): sizes are checked here, the values by the
// RPA_DCHECK in sanitizer and debug builds.
std::optional<PageId> PageAllocator::Allocate() noexcept {
  static_assert(sizeof(std::optional<PageId>) == sizeof(std::uint64_t));
  static_assert(std::is_trivially_copyable_v<std::optional<PageId>>);
  const std::uint32_t index = pool_->AllocateIndex();
  if (index == internal::kNilPage) [[unlikely]]
    return std::nullopt;
  const auto page = std::bit_cast<std::optional<PageId>>(
      std::uint64_t{index} | (std::uint64_t{1} << (8 * sizeof(PageId))));
  RPA_DCHECK(page.has_value() && *page == MakePageId(index));
  return page;
}

bool PageAllocator::AllocateN(std::span<PageId> pages) noexcept {
  return pool_->AllocateN(pages);
}

Status PageAllocator::Free(PageId page) noexcept { return pool_->Free(page); }

Status PageAllocator::FreeN(std::span<const PageId> pages) noexcept {
  return pool_->FreeN(pages);
}

bool PageAllocator::IsAllocated(PageId page) const noexcept {
  return pool_->IsAllocated(page);
}

PageAllocatorStats PageAllocator::Stats() const noexcept {
  return pool_->Stats();
}

std::uint32_t PageAllocator::num_pages() const noexcept {
  return pool_->num_pages();
}

}  // namespace rpa::memory
