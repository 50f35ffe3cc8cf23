// Device: DMA issue (validation, then hand-off to the DmaModel and the race
// checker) and landing (the bytes move only now, then the semaphore).

#include <cstring>
#include <utility>

#include "device_impl.h"
#include "fmt/format.h"

#include "rpa/runtime/check.h"
#include "rpa/runtime/executor.h"

namespace rpa::device::internal {

Status DeviceImpl::ValidateDma(const DmaRequest& request) const {
  if (request.chunks.empty()) {
    return InvalidArgumentError("StartDma: no chunks");
  }
  if (request.chunks.size() > UINT32_MAX) {
    return InvalidArgumentError(fmt::format("StartDma: {} chunks, at most {}",
                                            request.chunks.size(), UINT32_MAX));
  }
  if (request.engine < -1 ||
      request.engine >= static_cast<int>(spec_.num_dma_engines)) {
    return InvalidArgumentError(
        fmt::format("StartDma: engine {} out of range (-1 for any, or 0..{})",
                    request.engine, spec_.num_dma_engines - 1));
  }
  const Buffer* buffer = FindBuffer(request.vmem);
  if (buffer == nullptr) {
    return InvalidArgumentError(fmt::format(
        "StartDma: VMEM buffer id {} is not allocated (freed, or never "
        "allocated by this device)",
        request.vmem.id));
  }
  std::uint64_t total_bytes = 0;
  for (std::size_t i = 0; i < request.chunks.size(); ++i) {
    const DmaChunk& chunk = request.chunks[i];
    if (chunk.bytes == 0) {
      return InvalidArgumentError(
          fmt::format("StartDma: chunk {} has 0 bytes", i));
    }
    if (chunk.vmem_offset > buffer->bytes ||
        chunk.bytes > buffer->bytes - chunk.vmem_offset) {
      return InvalidArgumentError(fmt::format(
          "StartDma: chunk {}: VMEM range [{}, {} + {}) is outside buffer "
          "\"{}\" of {} bytes",
          i, chunk.vmem_offset, chunk.vmem_offset, chunk.bytes, buffer->name,
          buffer->bytes));
    }
    const auto address = reinterpret_cast<std::uintptr_t>(chunk.hbm);
    auto it = hbm_.upper_bound(address);
    const bool inside = chunk.hbm != nullptr && it != hbm_.begin() &&
                        address < std::prev(it)->second.end &&
                        chunk.bytes <= std::prev(it)->second.end - address;
    if (!inside) {
      return InvalidArgumentError(fmt::format(
          "StartDma: chunk {}: HBM range [{:#x}, +{} bytes) is not inside a "
          "registered HBM range",
          i, address, chunk.bytes));
    }
    if (chunk.bytes > UINT64_MAX - total_bytes) {
      return InvalidArgumentError("StartDma: total bytes overflow uint64");
    }
    total_bytes += chunk.bytes;
  }
  return OkStatus();
}

Status DeviceImpl::StartDma(const DmaRequest& request) {
  runtime::Executor* current = runtime::Executor::Current();
  if (current != nullptr && current != executor_) {
    return FailedPreconditionError(
        "StartDma: called from a fiber of another executor than the "
        "device's");
  }
  Sync();
  RPA_RETURN_IF_ERROR(ValidateDma(request));

  const std::int64_t now = NowNs();
  std::uint64_t total_bytes = 0;
  std::vector<ByteRange> ranges;
  ranges.reserve(request.chunks.size());
  for (const DmaChunk& chunk : request.chunks) {
    total_bytes += chunk.bytes;
    ranges.push_back(ByteRange{chunk.vmem_offset, chunk.bytes});
  }
  const std::uint64_t id =
      dma_.Submit(now, request.engine, total_bytes,
                  static_cast<std::uint32_t>(request.chunks.size()));
  Buffer& buffer = buffers_.at(request.vmem.id);
  ++buffer.dmas_in_flight;
  Payload payload;
  payload.direction = request.direction;
  payload.buffer_id = request.vmem.id;
  payload.vmem_base = buffer.data;
  payload.chunks.assign(request.chunks.begin(), request.chunks.end());
  payload.semaphore = request.semaphore;
  payload.label = std::string(request.label);
  payloads_.emplace(id, std::move(payload));
  races_.OnDmaIssued(request.vmem.id, id, request.direction,
                     MergeRanges(std::move(ranges)), now);
  ArmTimer();
  return OkStatus();
}

void DeviceImpl::Land(const DmaTiming& timing) {
  auto node = payloads_.extract(timing.id);
  RPA_CHECK(!node.empty());
  Payload& payload = node.mapped();
  // memmove: nothing stops a caller from registering VMEM-adjacent host
  // memory as HBM; the copy must still be well defined.
  for (const DmaChunk& chunk : payload.chunks) {
    std::byte* vmem = payload.vmem_base + chunk.vmem_offset;
    if (payload.direction == DmaDirection::kHbmToVmem) {
      std::memmove(vmem, chunk.hbm, static_cast<std::size_t>(chunk.bytes));
    } else {
      std::memmove(chunk.hbm, vmem, static_cast<std::size_t>(chunk.bytes));
    }
  }
  if (payload.direction == DmaDirection::kHbmToVmem) {
    stats_.bytes_hbm_to_vmem += timing.bytes;
  } else {
    stats_.bytes_vmem_to_hbm += timing.bytes;
  }
  ++stats_.dma_transfers;
  stats_.dma_chunks += timing.num_chunks;

  Buffer& buffer = buffers_.at(payload.buffer_id);
  --buffer.dmas_in_flight;
  races_.UntrackDma(payload.buffer_id, timing.id);
  trace_.AddDma(timing.engine, timing.engine_start_ns, timing.land_ns,
                payload.label,
                DmaTraceArgs{.direction = payload.direction,
                             .bytes = timing.bytes,
                             .chunks = timing.num_chunks,
                             .dma_id = timing.id,
                             .issue_ns = timing.issue_ns,
                             .stream_start_ns = timing.stream_start_ns});
  if (payload.semaphore != nullptr) payload.semaphore->Signal(timing.bytes);
}

}  // namespace rpa::device::internal
