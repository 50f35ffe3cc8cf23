#pragma once
// VmemArena: the host memory behind a simulated VMEM and its allocator.
//
// One anonymous MAP_NORESERVE mapping of the whole capacity (creating a
// Device costs no page until a buffer is used), carved first-fit in
// kVmemGranuleBytes granules by an address-ordered free list that coalesces
// on free. Under ASan, the tail of a buffer's last granule and every range
// freed by FreeVmem are poisoned, so a kernel that runs off the end of its
// buffer or keeps using a freed one fails loudly.
//
// Thread-safety: none (owned by one Device).
// Memory ordering: not applicable.
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>

#include "rpa/runtime/status.h"

namespace rpa::device::internal {

// Allocation granule: a cache line and an AVX-512 vector, so every buffer
// is aligned for the kernels' vector loads.
inline constexpr std::uint64_t kVmemGranuleBytes = 64;

class VmemArena {
 public:
  // Unavailable if the mapping fails.
  static StatusOr<VmemArena> Create(std::uint64_t capacity_bytes);
  VmemArena(VmemArena&& other) noexcept;
  VmemArena& operator=(VmemArena&&) = delete;
  VmemArena(const VmemArena&) = delete;
  VmemArena& operator=(const VmemArena&) = delete;
  ~VmemArena();

  // `bytes` rounded up to the granule. First fit (lowest address). Returns
  // the offset, or nothing if no free extent is large enough. The range is
  // zeroed (and unpoisoned up to `bytes`).
  std::optional<std::uint64_t> Allocate(std::uint64_t bytes);
  // The offset and size given to / passed to Allocate.
  void Free(std::uint64_t offset, std::uint64_t bytes);

  static std::uint64_t Rounded(std::uint64_t bytes);
  std::byte* base() const { return base_; }
  std::uint64_t capacity_bytes() const { return capacity_bytes_; }
  std::uint64_t free_bytes() const { return free_bytes_; }
  std::uint64_t largest_free_extent_bytes() const;

 private:
  VmemArena(std::byte* base, std::uint64_t capacity_bytes);

  std::byte* base_ = nullptr;
  std::uint64_t capacity_bytes_ = 0;
  std::uint64_t free_bytes_ = 0;
  std::uint64_t touched_bytes_ = 0;  // end of the highest range ever handed out
  std::map<std::uint64_t, std::uint64_t> free_;  // offset -> bytes
};

}  // namespace rpa::device::internal
