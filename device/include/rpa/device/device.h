#pragma once
// Device: one simulated TPU TensorCore on a virtual-clock executor.
//
//   HBM      host memory the caller registers (the KV arena of memory/, the
//            q / k / v / out tensors). DMAs may only touch registered ranges.
//   VMEM     a bounded scratch space of spec.vmem_bytes, carved into named
//            buffers; AllocateVmem past the capacity is ResourceExhausted
//            "VMEM exhausted: need X, have Y" (X, Y in bytes), as on the chip.
//   DMA      spec.num_dma_engines engines move bytes HBM <-> VMEM
//            asynchronously. A transfer is a list of contiguous chunks (one
//            descriptor each). Its life: wait for a free engine (FIFO), the
//            fixed cost dma_issue_latency_ns + chunks * dma_descriptor_ns,
//            then the bytes stream at an equal share of hbm_bytes_per_s among
//            all transfers streaming at that moment (processor sharing: two
//            concurrent transfers each get half). The bytes LAND AT THE
//            COMPLETION TIME: the destination is written then, not before, so
//            a kernel that reads a VMEM buffer before waiting for its DMA
//            reads stale data. At completion the transfer's DmaSemaphore is
//            signalled with its byte count.
//   Matrix   one matrix unit (all MXUs): MatMul(m, k, n) is charged
//            2 * pad8(m) * padT(k) * padT(n) / matrix_peak_flops seconds.
//   Vector   one vector unit: Vector(ops) is charged ops / vector_ops_per_s.
//
// Compute ops do not suspend: they are *reserved* on their unit, starting at
// max(now, not_before, unit free), and return their simulated interval
// (list scheduling, in issue order per unit). The caller does the real
// arithmetic right away (attention/'s building blocks) and suspends only when
// it must (WaitUntil(op.end) before reusing a buffer, DmaSemaphore::Wait
// before reading fetched data). This models the MXU and VPU working in
// parallel on independent sub-tiles, as a TPU's VLIW bundles do.
//
// Race checker: every compute op names the VMEM ranges it reads and writes.
// A race is reported (Device::races(), and counted in stats) when
//   - an op reads or writes a range whose incoming DMA has not landed at the
//     op's issue time (the op computes on stale data),
//   - an op writes a range an outgoing DMA is still reading,
//   - a DMA into a range is issued while a reserved op on it has not ended,
//   - a DMA out of a range is issued while an incoming DMA into it is in
//     flight,
//   - (added) a DMA into a range is issued while another DMA into or out of
//     it is in flight (which bytes the buffer ends up with, or writes back,
//     would depend on the landing order).
// A compute op naming a buffer that is not allocated, or a range outside its
// buffer, is a bug (RPA_CHECK), not a race.
// Races never stop the simulation: a broken schedule gives a wrong result
// and a race report, which is how tests find pipeline bugs.
//
// Trace: Chrome trace-event JSON (opens in Perfetto / chrome://tracing), one
// track per DMA engine, one for the matrix unit, one for the vector unit;
// timestamps in simulated microseconds.
//
// Time: every entry point first lands the transfers due at the current
// simulated time (copy, then semaphore), so what a call observes never
// depends on which fiber the executor ran first at that instant.
// device/README.md describes the models in full.
//
// Lifetime: the executor must outlive the Device.
//
// Thread-safety: a Device and everything it hands out belong to its
// executor, which must be single-threaded (num_workers == 0) on virtual time:
// call it only from that executor's fibers (or from its driving thread while
// the executor is not running).
// Memory ordering: not applicable (one thread).
//
// Example:
//   auto executor = runtime::Executor::Create({.clock = ClockKind::kVirtual});
//   RPA_ASSIGN_OR_RETURN(auto device, Device::Create(spec, executor->get()));
//   RPA_RETURN_IF_ERROR(device->RegisterHbm(cache_bytes, "kv_cache"));
//   RPA_ASSIGN_OR_RETURN(VmemBuffer kv, device->AllocateVmem(1 << 20, "kv0"));
//   DmaSemaphore landed;
//   (*executor)->Spawn([&]() -> Status {
//     const DmaChunk chunk{.hbm = page, .vmem_offset = 0, .bytes = page_bytes};
//     DmaRequest fetch;
//     fetch.vmem = kv;
//     fetch.chunks = {&chunk, 1};
//     fetch.semaphore = &landed;
//     RPA_RETURN_IF_ERROR(device->StartDma(fetch));  // returns at once
//     landed.Wait(page_bytes);                   // suspends until it landed
//     const VmemAccess reads[] = {{.buffer = kv, .bytes = page_bytes}};
//     ComputeOp op = device->MatMul(8, 128, 256, reads);
//     device->WaitUntil(op.end);
//     return OkStatus();
//   }).Detach();
//   RPA_RETURN_IF_ERROR((*executor)->Run());
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rpa/device/device_spec.h"
#include "rpa/runtime/clock.h"
#include "rpa/runtime/semaphore.h"
#include "rpa/runtime/status.h"

namespace rpa::runtime {
class Executor;
}

namespace rpa::device {

// A named VMEM allocation. A handle: copying it does not copy the memory.
struct VmemBuffer {
  std::uint32_t id = 0;  // 0: no buffer
  std::byte* data = nullptr;
  std::uint64_t bytes = 0;
};

// A range of a VMEM buffer touched by a compute op.
struct VmemAccess {
  VmemBuffer buffer;
  std::uint64_t offset = 0;
  std::uint64_t bytes = 0;
  bool write = false;
};

// Counts landed bytes: the device Signal()s a transfer's bytes when it
// lands; Wait(bytes) suspends the fiber until that many bytes arrived, then
// subtracts them (a TPU DMA semaphore).
class DmaSemaphore {
 public:
  DmaSemaphore() = default;
  DmaSemaphore(const DmaSemaphore&) = delete;
  DmaSemaphore& operator=(const DmaSemaphore&) = delete;
  void Wait(std::uint64_t bytes) { landed_.Acquire(bytes); }
  void Signal(std::uint64_t bytes) { landed_.Release(bytes); }
  std::uint64_t available_bytes() const { return landed_.available(); }

 private:
  runtime::Semaphore landed_{0};
};

enum class DmaDirection : std::uint8_t { kHbmToVmem, kVmemToHbm };

// One contiguous piece of a transfer (one descriptor).
struct DmaChunk {
  std::byte* hbm = nullptr;       // in a registered HBM range
  std::uint64_t vmem_offset = 0;  // into DmaRequest::vmem
  std::uint64_t bytes = 0;
};

struct DmaRequest {
  DmaDirection direction = DmaDirection::kHbmToVmem;
  VmemBuffer vmem;
  std::span<const DmaChunk> chunks;  // copied by StartDma
  DmaSemaphore* semaphore =
      nullptr;             // signalled with the total bytes; may be null
  int engine = -1;         // -1: the engine that frees up first
  std::string_view label;  // for the trace
};

// A reserved compute op: its simulated interval.
struct ComputeOp {
  runtime::TimePoint start{};
  runtime::TimePoint end{};
};

struct RaceReport {
  std::string buffer;  // the VMEM buffer's name
  std::uint64_t offset = 0;
  std::uint64_t bytes = 0;
  std::string what;  // e.g. "read of a range whose DMA has not landed"
  runtime::TimePoint time{};
};

// Transfer and byte counters count landed transfers; hbm_busy and
// dma_engine_busy run up to `now`; matrix_busy / vector_busy (and the flops /
// ops) count each op in full when it is reserved, even if it ends later.
struct DeviceStats {
  runtime::TimePoint now{};  // simulated time at the snapshot
  std::uint64_t bytes_hbm_to_vmem = 0;
  std::uint64_t bytes_vmem_to_hbm = 0;
  std::uint64_t dma_transfers = 0;
  std::uint64_t dma_chunks = 0;
  runtime::Duration hbm_busy{};  // time with at least one transfer streaming
  std::vector<runtime::Duration>
      dma_engine_busy;  // issue to landing, per engine
  runtime::Duration matrix_busy{};
  runtime::Duration vector_busy{};
  double matrix_flops_charged = 0;  // padded
  double matrix_flops_useful = 0;   // 2 * m * k * n
  double vector_ops = 0;
  std::uint64_t vmem_high_water_bytes = 0;
  std::uint64_t races = 0;
};

struct DeviceOptions {
  bool record_trace = true;
  std::size_t max_trace_events = 200000;  // later events are counted, not kept
  std::size_t max_race_reports = 64;      // later races are counted, not kept
};

namespace internal {
class DeviceImpl;
}

class Device {
 public:
  // InvalidArgument for an invalid spec or an executor that is not a
  // num_workers == 0, ClockKind::kVirtual one.
  static StatusOr<std::unique_ptr<Device>> Create(
      const DeviceSpec& spec, runtime::Executor* executor,
      const DeviceOptions& options = {});
  // Precondition: no DMA in flight (RPA_CHECK).
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const DeviceSpec& spec() const;

  // HBM: DMAs may only touch registered ranges (InvalidArgument otherwise).
  // Overlapping an already registered range is InvalidArgument.
  Status RegisterHbm(std::span<std::byte> range, std::string_view name);
  void UnregisterAllHbm();

  // VMEM. bytes > 0. ResourceExhausted "VMEM exhausted: need X, have Y"
  // where Y is the largest free extent. Contents start zeroed.
  // Allocations are first fit in 64-byte granules (64-byte aligned data; X
  // is `bytes` rounded up to the granule); a failed call changes nothing.
  StatusOr<VmemBuffer> AllocateVmem(std::uint64_t bytes, std::string_view name);
  // Precondition: no DMA in flight on it (RPA_CHECK). Unknown id: no-op.
  void FreeVmem(VmemBuffer buffer);
  std::uint64_t vmem_free_bytes() const;

  // Starts an asynchronous transfer and returns at once (does not suspend).
  // InvalidArgument (nothing started) for: no chunks, a zero-byte chunk, a
  // chunk outside the VMEM buffer or outside registered HBM, an engine out of
  // range, a freed buffer. Must be called from a fiber of the executor.
  // (Also accepted from the driving thread while the executor is not running:
  // the transfer is timed from the current simulated time and progresses on
  // the next Run(). From a fiber of another executor: FailedPrecondition.)
  // The chunks' VMEM ranges may not leave the buffer; HBM ranges must each
  // lie inside one registered range. `semaphore` must outlive the landing.
  Status StartDma(const DmaRequest& request);

  // Reserve compute (see the file comment). `not_before` defaults to now.
  // Durations are rounded up to whole nanoseconds, at least 1 ns for a
  // non-empty op (m, k, n > 0; ops > 0); an empty op takes 0 ns. ops must be
  // finite and >= 0 (RPA_CHECK).
  ComputeOp MatMul(std::uint64_t m, std::uint64_t k, std::uint64_t n,
                   std::span<const VmemAccess> accesses,
                   runtime::TimePoint not_before = {},
                   std::string_view label = "matmul");
  ComputeOp Vector(double ops, std::span<const VmemAccess> accesses,
                   runtime::TimePoint not_before = {},
                   std::string_view label = "vector");

  // Suspends the calling fiber until simulated time `t` (no-op if past).
  void WaitUntil(runtime::TimePoint t);
  runtime::TimePoint Now() const;

  const std::vector<RaceReport>& races() const;
  DeviceStats Stats() const;
  // Chrome trace-event JSON of everything recorded so far.
  std::string TraceJson() const;

 private:
  explicit Device(std::unique_ptr<internal::DeviceImpl> impl);
  std::unique_ptr<internal::DeviceImpl> impl_;
};

}  // namespace rpa::device
