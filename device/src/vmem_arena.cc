// VmemArena (see vmem_arena.h).

#include "vmem_arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <utility>

#include "fmt/format.h"

#include "rpa/runtime/check.h"
#include "rpa/runtime/int_math.h"
#include "rpa/runtime/sanitizers.h"

namespace rpa::device::internal {

StatusOr<VmemArena> VmemArena::Create(std::uint64_t capacity_bytes) {
  RPA_CHECK(capacity_bytes > 0);
  void* p = mmap(nullptr, static_cast<std::size_t>(capacity_bytes),
                 PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return UnavailableError(fmt::format("VMEM backing: mmap of {} bytes: {}",
                                        capacity_bytes, std::strerror(errno)));
  }
  return VmemArena(static_cast<std::byte*>(p), capacity_bytes);
}

VmemArena::VmemArena(std::byte* base, std::uint64_t capacity_bytes)
    : base_(base),
      capacity_bytes_(capacity_bytes),
      free_bytes_(capacity_bytes) {
  free_.emplace(0, capacity_bytes);
  // Not poisoned here: poisoning commits shadow memory for the whole
  // capacity (16 MiB per 128 MiB device), which tests that keep many devices
  // alive cannot afford. Space is poisoned once it has held a buffer.
}

VmemArena::VmemArena(VmemArena&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)),
      capacity_bytes_(std::exchange(other.capacity_bytes_, 0)),
      free_bytes_(std::exchange(other.free_bytes_, 0)),
      touched_bytes_(std::exchange(other.touched_bytes_, 0)),
      free_(std::move(other.free_)) {}

VmemArena::~VmemArena() {
  if (base_ == nullptr) return;
  // ASan does not clear shadow on munmap: a later mapping at this address
  // would inherit the poison.
  // Only what ever held a buffer can be poisoned.
  RPA_ASAN_UNPOISON(base_, static_cast<std::size_t>(touched_bytes_));
  munmap(base_, static_cast<std::size_t>(capacity_bytes_));
}

std::uint64_t VmemArena::Rounded(std::uint64_t bytes) {
  if (bytes > UINT64_MAX - (kVmemGranuleBytes - 1)) return UINT64_MAX;
  return RoundUpToMultiple<std::uint64_t>(bytes, kVmemGranuleBytes);
}

std::uint64_t VmemArena::largest_free_extent_bytes() const {
  std::uint64_t largest = 0;
  for (const auto& [offset, bytes] : free_) largest = std::max(largest, bytes);
  return largest;
}

std::optional<std::uint64_t> VmemArena::Allocate(std::uint64_t bytes) {
  RPA_CHECK(bytes > 0);
  const std::uint64_t rounded = Rounded(bytes);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < rounded) continue;
    const std::uint64_t offset = it->first;
    const std::uint64_t left = it->second - rounded;
    free_.erase(it);
    if (left > 0) free_.emplace(offset + rounded, left);
    free_bytes_ -= rounded;
    touched_bytes_ = std::max(touched_bytes_, offset + rounded);
    std::byte* p = base_ + offset;
    RPA_ASAN_UNPOISON(p, static_cast<std::size_t>(bytes));
    // The granule's tail past `bytes` is a red zone.
    RPA_ASAN_POISON(p + bytes, static_cast<std::size_t>(rounded - bytes));
    std::memset(p, 0, static_cast<std::size_t>(bytes));
    return offset;
  }
  return std::nullopt;
}

void VmemArena::Free(std::uint64_t offset, std::uint64_t bytes) {
  const std::uint64_t rounded = Rounded(bytes);
  RPA_CHECK(offset <= capacity_bytes_ && rounded <= capacity_bytes_ - offset);
  std::uint64_t start = offset;
  std::uint64_t size = rounded;
  RPA_ASAN_POISON(base_ + offset, static_cast<std::size_t>(size));
  auto next = free_.lower_bound(offset);
  RPA_CHECK_MSG(next == free_.end() || next->first >= offset + size,
                "VMEM free of a range that is already free");
  if (next != free_.end() && next->first == offset + size) {
    size += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    RPA_CHECK_MSG(prev->first + prev->second <= offset,
                  "VMEM free of a range that is already free");
    if (prev->first + prev->second == offset) {
      start = prev->first;
      size += prev->second;
      free_.erase(prev);
    }
  }
  free_.emplace(start, size);
  free_bytes_ += rounded;
}

}  // namespace rpa::device::internal
