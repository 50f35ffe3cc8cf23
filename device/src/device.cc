// Device: the public wrapper, HBM registration, VMEM buffers, statistics and
// the bridge to the virtual clock (Sync / timer fibers). DMA issue and
// landing are in device_dma.cc, compute reservations in device_compute.cc.

#include "rpa/device/device.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "device_impl.h"
#include "fmt/format.h"

#include "rpa/runtime/check.h"
#include "rpa/runtime/executor.h"
#include "rpa/runtime/this_fiber.h"

namespace rpa::device {
namespace internal {

DeviceImpl::DeviceImpl(const DeviceSpec& spec, runtime::Executor* executor,
                       const DeviceOptions& options, VmemArena vmem)
    : spec_(spec),
      executor_(executor),
      options_(options),
      vmem_(std::move(vmem)),
      dma_(spec.num_dma_engines, spec.hbm_bytes_per_s,
           spec.dma_issue_latency_ns, spec.dma_descriptor_ns),
      timer_token_(std::make_shared<TimerToken>(TimerToken{this})),
      races_(options.max_race_reports),
      trace_(options.record_trace, options.max_trace_events, spec.name,
             spec.num_dma_engines) {
  stats_.dma_engine_busy.assign(spec.num_dma_engines, runtime::Duration{});
}

DeviceImpl::~DeviceImpl() {
  // Land what is due now (a timer fiber may not have run yet), but arm no
  // new timer: the device is going away.
  dma_.AdvanceTo(NowNs(), [this](const DmaTiming& t) { Land(t); });
  if (dma_.in_flight() != 0) {
    const std::string message = fmt::format(
        "Device destroyed with {} DMA(s) in flight: run the executor until "
        "every transfer landed (executor->Run()) before destroying it",
        dma_.in_flight());
    rpa::internal::CheckFailed(__FILE__, __LINE__, "dma_.in_flight() == 0",
                               message.c_str());
  }
  timer_token_->device = nullptr;  // pending timer fibers become no-ops
}

std::int64_t DeviceImpl::NowNs() const {
  return std::chrono::duration_cast<runtime::Duration>(
             executor_->Now().time_since_epoch())
      .count();
}

runtime::TimePoint DeviceImpl::Now() const { return executor_->Now(); }

// ---- the virtual clock ------------------------------------------------------

void DeviceImpl::Sync() {
  dma_.AdvanceTo(NowNs(), [this](const DmaTiming& t) { Land(t); });
  ArmTimer();
}

// The runtime has no cancellable timed wait, so a timer is a fiber that
// sleeps until its deadline and then Sync()s. A new fiber is needed only when
// the next event is earlier than every pending one: a pending earlier timer
// will re-arm when it wakes, so stale timers are harmless re-checks (and,
// since adding transfers only delays the others, never later than the last
// real event, so they do not stretch the simulated makespan).
void DeviceImpl::ArmTimer() {
  const std::optional<std::int64_t> next = dma_.NextEventNs();
  if (!next.has_value()) return;
  if (!armed_ns_.empty() && *armed_ns_.begin() <= *next) return;
  armed_ns_.insert(*next);
  executor_->Spawn([token = timer_token_, deadline_ns = *next] {
    runtime::this_fiber::SleepUntil(
        runtime::TimePoint(runtime::Duration(deadline_ns)));
    if (token->device != nullptr) token->device->OnTimer(deadline_ns);
  });
}

void DeviceImpl::OnTimer(std::int64_t deadline_ns) {
  auto it = armed_ns_.find(deadline_ns);
  RPA_CHECK(it != armed_ns_.end());
  armed_ns_.erase(it);
  Sync();
}

// ---- HBM --------------------------------------------------------------------

Status DeviceImpl::RegisterHbm(std::span<std::byte> range,
                               std::string_view name) {
  if (range.empty() || range.data() == nullptr) {
    return InvalidArgumentError(
        fmt::format("RegisterHbm: range \"{}\" is empty", name));
  }
  const auto start = reinterpret_cast<std::uintptr_t>(range.data());
  if (range.size() > UINTPTR_MAX - start) {
    return InvalidArgumentError(fmt::format(
        "RegisterHbm: range \"{}\" of {} bytes wraps the address space", name,
        range.size()));
  }
  const std::uintptr_t end = start + range.size();
  auto next = hbm_.lower_bound(start);
  auto overlaps = [&](std::map<std::uintptr_t, HbmRange>::iterator it) {
    return it != hbm_.end() && it->first < end && start < it->second.end;
  };
  std::map<std::uintptr_t, HbmRange>::iterator clash = hbm_.end();
  if (overlaps(next)) {
    clash = next;
  } else if (next != hbm_.begin() && overlaps(std::prev(next))) {
    clash = std::prev(next);
  }
  if (clash != hbm_.end()) {
    return InvalidArgumentError(fmt::format(
        "RegisterHbm: range \"{}\" [{:#x}, {:#x}) overlaps registered range "
        "\"{}\" [{:#x}, {:#x})",
        name, start, end, clash->second.name, clash->first, clash->second.end));
  }
  hbm_.emplace(start, HbmRange{end, std::string(name)});
  return OkStatus();
}

// ---- VMEM -------------------------------------------------------------------

StatusOr<VmemBuffer> DeviceImpl::AllocateVmem(std::uint64_t bytes,
                                              std::string_view name) {
  Sync();
  if (bytes == 0) {
    return InvalidArgumentError(
        fmt::format("AllocateVmem: bytes must be > 0 (buffer \"{}\")", name));
  }
  RPA_CHECK_MSG(next_buffer_id_ != 0, "VMEM buffer ids exhausted");
  const std::uint64_t rounded = VmemArena::Rounded(bytes);
  const std::optional<std::uint64_t> offset = vmem_.Allocate(bytes);
  if (!offset.has_value()) {
    return ResourceExhaustedError(fmt::format(
        "VMEM exhausted: need {}, have {} (buffer \"{}\" of {} bytes in "
        "{}-byte granules; {} of {} bytes free in total)",
        rounded, vmem_.largest_free_extent_bytes(), name, bytes,
        kVmemGranuleBytes, vmem_.free_bytes(), vmem_.capacity_bytes()));
  }
  const std::uint32_t id = next_buffer_id_++;
  Buffer buffer;
  buffer.name = std::string(name);
  buffer.data = vmem_.base() + *offset;
  buffer.offset = *offset;
  buffer.bytes = bytes;
  buffers_.emplace(id, buffer);
  races_.AddBuffer(id, buffer.name);
  vmem_used_bytes_ += rounded;
  vmem_high_water_bytes_ = std::max(vmem_high_water_bytes_, vmem_used_bytes_);
  return VmemBuffer{.id = id, .data = buffer.data, .bytes = bytes};
}

void DeviceImpl::FreeVmem(VmemBuffer handle) {
  Sync();
  auto it = buffers_.find(handle.id);
  if (it == buffers_.end()) return;
  if (it->second.dmas_in_flight != 0) {
    const std::string message =
        fmt::format("FreeVmem of buffer \"{}\" with {} DMA(s) in flight on it",
                    it->second.name, it->second.dmas_in_flight);
    rpa::internal::CheckFailed(__FILE__, __LINE__, "dmas_in_flight == 0",
                               message.c_str());
  }
  vmem_.Free(it->second.offset, it->second.bytes);
  vmem_used_bytes_ -= VmemArena::Rounded(it->second.bytes);
  races_.RemoveBuffer(handle.id);
  buffers_.erase(it);
}

const DeviceImpl::Buffer* DeviceImpl::FindBuffer(
    const VmemBuffer& handle) const {
  auto it = buffers_.find(handle.id);
  if (it == buffers_.end()) return nullptr;
  if (it->second.data != handle.data || it->second.bytes != handle.bytes) {
    return nullptr;  // a forged or corrupted handle
  }
  return &it->second;
}

// ---- statistics -------------------------------------------------------------

DeviceStats DeviceImpl::Stats() {
  Sync();
  const std::int64_t now = NowNs();
  DeviceStats out = stats_;
  out.now = runtime::TimePoint(runtime::Duration(now));
  out.hbm_busy = runtime::Duration(dma_.hbm_busy_ns(now));
  const std::vector<std::int64_t> engine_busy = dma_.engine_busy_ns(now);
  out.dma_engine_busy.clear();
  for (std::int64_t ns : engine_busy) {
    out.dma_engine_busy.push_back(runtime::Duration(ns));
  }
  out.vmem_high_water_bytes = vmem_high_water_bytes_;
  out.races = races_.count();
  return out;
}

}  // namespace internal

// ---- Device -----------------------------------------------------------------

StatusOr<std::unique_ptr<Device>> Device::Create(const DeviceSpec& spec,
                                                 runtime::Executor* executor,
                                                 const DeviceOptions& options) {
  RPA_RETURN_IF_ERROR(ValidateDeviceSpec(spec));
  if (executor == nullptr) {
    return InvalidArgumentError("Device::Create: executor is null");
  }
  if (executor->clock() != runtime::ClockKind::kVirtual) {
    return InvalidArgumentError(
        "Device::Create: the executor's clock must be ClockKind::kVirtual, "
        "got kReal");
  }
  if (executor->num_workers() != 0) {
    return InvalidArgumentError(fmt::format(
        "Device::Create: the executor's num_workers must be 0, got {}",
        executor->num_workers()));
  }
  RPA_ASSIGN_OR_RETURN(internal::VmemArena vmem,
                       internal::VmemArena::Create(spec.vmem_bytes));
  auto impl = std::make_unique<internal::DeviceImpl>(spec, executor, options,
                                                     std::move(vmem));
  return std::unique_ptr<Device>(new Device(std::move(impl)));
}

Device::Device(std::unique_ptr<internal::DeviceImpl> impl)
    : impl_(std::move(impl)) {}
Device::~Device() = default;

const DeviceSpec& Device::spec() const { return impl_->spec(); }

Status Device::RegisterHbm(std::span<std::byte> range, std::string_view name) {
  return impl_->RegisterHbm(range, name);
}
void Device::UnregisterAllHbm() { impl_->UnregisterAllHbm(); }

StatusOr<VmemBuffer> Device::AllocateVmem(std::uint64_t bytes,
                                          std::string_view name) {
  return impl_->AllocateVmem(bytes, name);
}
void Device::FreeVmem(VmemBuffer buffer) { impl_->FreeVmem(buffer); }
std::uint64_t Device::vmem_free_bytes() const {
  return impl_->vmem_free_bytes();
}

Status Device::StartDma(const DmaRequest& request) {
  return impl_->StartDma(request);
}

ComputeOp Device::MatMul(std::uint64_t m, std::uint64_t k, std::uint64_t n,
                         std::span<const VmemAccess> accesses,
                         runtime::TimePoint not_before,
                         std::string_view label) {
  return impl_->MatMul(m, k, n, accesses, not_before, label);
}
ComputeOp Device::Vector(double ops, std::span<const VmemAccess> accesses,
                         runtime::TimePoint not_before,
                         std::string_view label) {
  return impl_->Vector(ops, accesses, not_before, label);
}

void Device::WaitUntil(runtime::TimePoint t) { impl_->WaitUntil(t); }
runtime::TimePoint Device::Now() const { return impl_->Now(); }

const std::vector<RaceReport>& Device::races() const { return impl_->races(); }
DeviceStats Device::Stats() const { return impl_->Stats(); }
std::string Device::TraceJson() const {
  impl_->Sync();  // transfers landing now are in the trace
  return impl_->TraceJson();
}

}  // namespace rpa::device
