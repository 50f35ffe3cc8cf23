#pragma once

// MetadataArray<T>, moved out of page_pool.h (which includes it): how
// PagePool allocates its fixed arrays (page states, links, deque slots,
// caches) from the caller's metadata resource.

#include <algorithm>
#include <cstddef>
#include <memory>
#include <memory_resource>

namespace rpa::memory::internal {

// An array of T from a pmr resource, constructed element by element.
template <typename T>
class MetadataArray {
 public:
  MetadataArray() = default;
  // init(T* where, std::size_t i) constructs element i and must not throw.
  template <typename Init>
  MetadataArray(std::pmr::memory_resource* resource, std::size_t size,
                std::size_t alignment, Init init)
      : resource_(resource),
        size_(size),
        alignment_(std::max(alignment, alignof(T))) {
    if (size_ == 0) return;
    data_ = static_cast<T*>(resource_->allocate(size_ * sizeof(T), alignment_));
    for (std::size_t i = 0; i < size_; ++i) init(data_ + i, i);
  }
  ~MetadataArray() {
    if (data_ == nullptr) return;
    std::destroy_n(data_, size_);
    resource_->deallocate(data_, size_ * sizeof(T), alignment_);
  }
  MetadataArray(const MetadataArray&) = delete;
  MetadataArray& operator=(const MetadataArray&) = delete;

  T& operator[](std::size_t i) const { return data_[i]; }
  T* data() const { return data_; }

 private:
  std::pmr::memory_resource* resource_ = nullptr;
  std::size_t size_ = 0;
  std::size_t alignment_ = 1;
  T* data_ = nullptr;
};

}  // namespace rpa::memory::internal
