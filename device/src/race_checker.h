#pragma once
// RaceChecker: the pipeline-hazard rules of device.h, over byte ranges of
// VMEM buffers (device/README.md, "The race checker").
//
// It keeps, per buffer, the transfers in flight on it (with their VMEM
// ranges) and the accesses of reserved compute ops whose end is still in the
// future (pruned lazily whenever the buffer is checked).
//
// Thread-safety: none (owned by one Device).
// Memory ordering: not applicable.
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rpa/device/device.h"

namespace rpa::device::internal {

struct ByteRange {
  std::uint64_t offset = 0;
  std::uint64_t bytes = 0;
};

// Sorts and merges touching/overlapping ranges.
std::vector<ByteRange> MergeRanges(std::vector<ByteRange> ranges);

class RaceChecker {
 public:
  explicit RaceChecker(std::size_t max_reports) : max_reports_(max_reports) {}

  void AddBuffer(std::uint32_t buffer_id, std::string name);
  void RemoveBuffer(std::uint32_t buffer_id);

  // A transfer is being issued at now_ns on `buffer_id` over `ranges`
  // (merged): checks rules 3, 4 and 5 against what is on the buffer, then
  // tracks the transfer as in flight until UntrackDma.
  void OnDmaIssued(std::uint32_t buffer_id, std::uint64_t dma_id,
                   DmaDirection direction, std::vector<ByteRange> ranges,
                   std::int64_t now_ns);
  void UntrackDma(std::uint32_t buffer_id, std::uint64_t dma_id);

  // A compute op is being issued at now_ns: checks rules 1 and 2 for every
  // access, then records the accesses as reserved until op_end_ns.
  // Precondition: every access names a live buffer (the Device checks).
  void OnOpIssued(std::span<const VmemAccess> accesses, std::string_view label,
                  std::int64_t now_ns, std::int64_t op_end_ns);

  const std::vector<RaceReport>& reports() const { return reports_; }
  std::uint64_t count() const { return count_; }

 private:
  struct InFlightDma {
    std::uint64_t id = 0;
    DmaDirection direction = DmaDirection::kHbmToVmem;
    std::vector<ByteRange> ranges;
  };
  struct ReservedAccess {
    ByteRange range;
    bool write = false;
    std::int64_t end_ns = 0;
    std::string label;
  };
  struct BufferState {
    std::string name;
    std::vector<InFlightDma> dmas;
    std::vector<ReservedAccess> ops;  // may hold ended ops (pruned lazily)
    std::size_t prune_at = 16;
  };

  static void PruneOps(BufferState& buffer, std::int64_t now_ns);
  void Report(const BufferState& buffer, ByteRange range, std::string what,
              std::int64_t now_ns);

  std::size_t max_reports_;
  std::map<std::uint32_t, BufferState> buffers_;
  std::vector<RaceReport> reports_;
  std::uint64_t count_ = 0;
};

}  // namespace rpa::device::internal
