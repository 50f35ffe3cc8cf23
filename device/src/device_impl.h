#pragma once
// DeviceImpl: the state behind rpa::device::Device (device/README.md).
//
// Composition: a VmemArena (VMEM bytes and allocator), a DmaModel (timing of
// the engines and the shared HBM bandwidth), a RaceChecker and a
// TraceRecorder, glued to the executor's virtual clock. The only bridge to
// the clock is Sync(): every entry point first processes the DMA events due
// at the current time (landing = copy the bytes, signal the semaphore), then
// makes sure a timer fiber will wake at the next event.
//
// Thread-safety: none: one virtual-time executor thread (see device.h).
// Memory ordering: not applicable.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dma_model.h"
#include "race_checker.h"
#include "trace.h"
#include "vmem_arena.h"

#include "rpa/device/device.h"
#include "rpa/device/device_spec.h"

namespace rpa::device::internal {

class DeviceImpl {
 public:
  DeviceImpl(const DeviceSpec& spec, runtime::Executor* executor,
             const DeviceOptions& options, VmemArena vmem);
  ~DeviceImpl();
  DeviceImpl(const DeviceImpl&) = delete;
  DeviceImpl& operator=(const DeviceImpl&) = delete;

  const DeviceSpec& spec() const { return spec_; }

  Status RegisterHbm(std::span<std::byte> range, std::string_view name);
  void UnregisterAllHbm() { hbm_.clear(); }

  StatusOr<VmemBuffer> AllocateVmem(std::uint64_t bytes, std::string_view name);
  void FreeVmem(VmemBuffer buffer);
  std::uint64_t vmem_free_bytes() const { return vmem_.free_bytes(); }

  Status StartDma(const DmaRequest& request);

  ComputeOp MatMul(std::uint64_t m, std::uint64_t k, std::uint64_t n,
                   std::span<const VmemAccess> accesses,
                   runtime::TimePoint not_before, std::string_view label);
  ComputeOp Vector(double ops, std::span<const VmemAccess> accesses,
                   runtime::TimePoint not_before, std::string_view label);

  void WaitUntil(runtime::TimePoint t);
  runtime::TimePoint Now() const;

  const std::vector<RaceReport>& races() const { return races_.reports(); }
  DeviceStats Stats();
  std::string TraceJson() const { return trace_.ToJson(); }

  // Processes the DMA events due now and arms the timer for the next one.
  void Sync();

 private:
  struct HbmRange {
    std::uintptr_t end = 0;  // one past the last byte
    std::string name;
  };
  struct Buffer {
    std::string name;
    std::byte* data = nullptr;
    std::uint64_t offset = 0;  // in the arena
    std::uint64_t bytes = 0;
    std::uint32_t dmas_in_flight = 0;
  };
  struct Payload {  // what the DmaModel does not need to know
    DmaDirection direction = DmaDirection::kHbmToVmem;
    std::uint32_t buffer_id = 0;
    std::byte* vmem_base = nullptr;
    std::vector<DmaChunk> chunks;
    DmaSemaphore* semaphore = nullptr;
    std::string label;
  };
  // Shared with the timer fibers, which may outlive the device.
  struct TimerToken {
    DeviceImpl* device = nullptr;
  };
  enum class Unit : std::uint8_t { kMatrix, kVector };

  std::int64_t NowNs() const;
  Status ValidateDma(const DmaRequest& request) const;
  const Buffer* FindBuffer(const VmemBuffer& buffer) const;
  void CheckAccesses(std::span<const VmemAccess> accesses,
                     std::string_view label) const;
  ComputeOp Reserve(Unit unit, std::int64_t duration_ns,
                    runtime::TimePoint not_before);
  void Land(const DmaTiming& timing);
  void ArmTimer();
  void OnTimer(std::int64_t deadline_ns);

  const DeviceSpec spec_;
  runtime::Executor* const executor_;
  const DeviceOptions options_;

  VmemArena vmem_;
  std::map<std::uint32_t, Buffer> buffers_;
  std::uint32_t next_buffer_id_ = 1;
  std::uint64_t vmem_used_bytes_ = 0;
  std::uint64_t vmem_high_water_bytes_ = 0;

  std::map<std::uintptr_t, HbmRange> hbm_;  // by start address

  DmaModel dma_;
  std::map<std::uint64_t, Payload> payloads_;  // by DMA id, in flight
  std::multiset<std::int64_t> armed_ns_;       // deadlines of timer fibers
  std::shared_ptr<TimerToken> timer_token_;

  std::int64_t matrix_free_ns_ = 0;
  std::int64_t vector_free_ns_ = 0;

  RaceChecker races_;
  TraceRecorder trace_;
  DeviceStats stats_;  // counters; time-dependent fields filled by Stats()
};

}  // namespace rpa::device::internal
