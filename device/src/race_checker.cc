// RaceChecker (see race_checker.h). The rules, numbered as in the README:
//   1. an op reads or writes a range an incoming DMA has not landed in yet;
//   2. an op writes a range an outgoing DMA has not finished reading;
//   3. a DMA into a range is issued while a reserved op on it has not ended;
//   4. a DMA out of a range is issued while an incoming DMA into it is in
//      flight;
//   5. a DMA into a range is issued while another DMA into or out of it is
//      in flight (the landing order would decide what the buffer holds).
// One report per conflicting pair (access or transfer x the thing in the
// way), over the bounding range of their overlap.

#include "race_checker.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "fmt/format.h"

#include "rpa/runtime/check.h"

namespace rpa::device::internal {
namespace {

std::optional<ByteRange> Intersect(ByteRange a, ByteRange b) {
  const std::uint64_t lo = std::max(a.offset, b.offset);
  const std::uint64_t hi = std::min(a.offset + a.bytes, b.offset + b.bytes);
  if (lo >= hi) return std::nullopt;
  return ByteRange{lo, hi - lo};
}

// Grows *bound to the bounding range of itself and `part` (if any).
void ExtendBound(const std::optional<ByteRange>& part,
                 std::optional<ByteRange>* bound) {
  if (!part.has_value()) return;
  if (!bound->has_value()) {
    *bound = part;
    return;
  }
  const std::uint64_t lo = std::min((*bound)->offset, part->offset);
  const std::uint64_t hi =
      std::max((*bound)->offset + (*bound)->bytes, part->offset + part->bytes);
  *bound = ByteRange{lo, hi - lo};
}

// Bounding range of the overlap of `a` with any of `ranges`.
std::optional<ByteRange> Overlap(ByteRange a,
                                 const std::vector<ByteRange>& ranges) {
  std::optional<ByteRange> out;
  for (const ByteRange& r : ranges) ExtendBound(Intersect(a, r), &out);
  return out;
}

std::optional<ByteRange> Overlap(const std::vector<ByteRange>& a,
                                 const std::vector<ByteRange>& b) {
  std::optional<ByteRange> out;
  for (const ByteRange& r : a) ExtendBound(Overlap(r, b), &out);
  return out;
}

const char* DirectionName(DmaDirection direction) {
  return direction == DmaDirection::kHbmToVmem ? "incoming" : "outgoing";
}

}  // namespace

std::vector<ByteRange> MergeRanges(std::vector<ByteRange> ranges) {
  std::sort(ranges.begin(), ranges.end(),
            [](const ByteRange& a, const ByteRange& b) {
              return a.offset < b.offset;
            });
  std::vector<ByteRange> out;
  for (const ByteRange& r : ranges) {
    if (!out.empty() && r.offset <= out.back().offset + out.back().bytes) {
      const std::uint64_t end =
          std::max(out.back().offset + out.back().bytes, r.offset + r.bytes);
      out.back().bytes = end - out.back().offset;
    } else {
      out.push_back(r);
    }
  }
  return out;
}

void RaceChecker::AddBuffer(std::uint32_t buffer_id, std::string name) {
  buffers_[buffer_id].name = std::move(name);
}

void RaceChecker::RemoveBuffer(std::uint32_t buffer_id) {
  buffers_.erase(buffer_id);
}

// Amortised: ended ops are skipped by the scans and dropped in bulk once the
// list has doubled since the last prune.
void RaceChecker::PruneOps(BufferState& buffer, std::int64_t now_ns) {
  if (buffer.ops.size() < buffer.prune_at) return;
  std::erase_if(buffer.ops, [now_ns](const ReservedAccess& access) {
    return access.end_ns <= now_ns;
  });
  buffer.prune_at = std::max<std::size_t>(16, 2 * buffer.ops.size());
}

void RaceChecker::Report(const BufferState& buffer, ByteRange range,
                         std::string what, std::int64_t now_ns) {
  ++count_;
  if (reports_.size() >= max_reports_) return;
  RaceReport report;
  report.buffer = buffer.name;
  report.offset = range.offset;
  report.bytes = range.bytes;
  report.what = std::move(what);
  report.time = runtime::TimePoint(runtime::Duration(now_ns));
  reports_.push_back(std::move(report));
}

void RaceChecker::OnDmaIssued(std::uint32_t buffer_id, std::uint64_t dma_id,
                              DmaDirection direction,
                              std::vector<ByteRange> ranges,
                              std::int64_t now_ns) {
  auto it = buffers_.find(buffer_id);
  RPA_CHECK(it != buffers_.end());
  BufferState& buffer = it->second;
  const bool incoming = direction == DmaDirection::kHbmToVmem;
  if (incoming) {
    PruneOps(buffer, now_ns);
    for (const ReservedAccess& op : buffer.ops) {  // rule 3
      if (op.end_ns <= now_ns) continue;
      const std::optional<ByteRange> both = Overlap(op.range, ranges);
      if (!both.has_value()) continue;
      Report(buffer, *both,
             fmt::format("DMA #{} into a range issued while op \"{}\" that {} "
                         "it has not ended (ends at {} ns)",
                         dma_id, op.label, op.write ? "writes" : "reads",
                         op.end_ns),
             now_ns);
    }
  }
  for (const InFlightDma& other : buffer.dmas) {
    const bool other_incoming = other.direction == DmaDirection::kHbmToVmem;
    if (!incoming && !other_incoming) continue;  // two readers: fine
    const std::optional<ByteRange> both = Overlap(other.ranges, ranges);
    if (!both.has_value()) continue;
    if (!incoming) {  // rule 4
      Report(buffer, *both,
             fmt::format("DMA #{} out of a range issued while incoming DMA #{} "
                         "into it is in flight (it would write back stale "
                         "data)",
                         dma_id, other.id),
             now_ns);
    } else {  // rule 5
      Report(buffer, *both,
             fmt::format("DMA #{} into a range issued while {} DMA #{} on it "
                         "is in flight",
                         dma_id, DirectionName(other.direction), other.id),
             now_ns);
    }
  }
  buffer.dmas.push_back(InFlightDma{
      .id = dma_id, .direction = direction, .ranges = std::move(ranges)});
}

void RaceChecker::UntrackDma(std::uint32_t buffer_id, std::uint64_t dma_id) {
  auto it = buffers_.find(buffer_id);
  RPA_CHECK(it != buffers_.end());
  std::erase_if(it->second.dmas,
                [dma_id](const InFlightDma& dma) { return dma.id == dma_id; });
}

void RaceChecker::OnOpIssued(std::span<const VmemAccess> accesses,
                             std::string_view label, std::int64_t now_ns,
                             std::int64_t op_end_ns) {
  for (const VmemAccess& access : accesses) {
    if (access.bytes == 0) continue;
    auto it = buffers_.find(access.buffer.id);
    RPA_CHECK(it != buffers_.end());
    BufferState& buffer = it->second;
    const ByteRange range{access.offset, access.bytes};
    for (const InFlightDma& dma : buffer.dmas) {
      const bool incoming = dma.direction == DmaDirection::kHbmToVmem;
      if (!incoming && !access.write) continue;  // reading what goes out
      const std::optional<ByteRange> both = Overlap(range, dma.ranges);
      if (!both.has_value()) continue;
      if (incoming) {  // rule 1
        Report(buffer, *both,
               fmt::format("op \"{}\" {} a range whose incoming DMA #{} has "
                           "not landed",
                           label, access.write ? "writes" : "reads", dma.id),
               now_ns);
      } else {  // rule 2
        Report(buffer, *both,
               fmt::format("op \"{}\" writes a range that outgoing DMA #{} "
                           "is still reading",
                           label, dma.id),
               now_ns);
      }
    }
    if (op_end_ns > now_ns) {
      PruneOps(buffer, now_ns);
      buffer.ops.push_back(ReservedAccess{.range = range,
                                          .write = access.write,
                                          .end_ns = op_end_ns,
                                          .label = std::string(label)});
    }
  }
}

}  // namespace rpa::device::internal
