#pragma once

// Shared helpers of the Device tests: a virtual-clock executor with a device
// on it, HBM buffers, and time in integer nanoseconds.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "rpa/device/device.h"
#include "rpa/device/device_spec.h"
#include "rpa/runtime/executor.h"
#include "rpa/runtime/this_fiber.h"

namespace rpa::device::testing_util {

inline std::int64_t Ns(runtime::TimePoint t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             t.time_since_epoch())
      .count();
}
inline std::int64_t Ns(runtime::Duration d) { return d.count(); }
inline runtime::TimePoint At(std::int64_t ns) {
  return runtime::TimePoint(runtime::Duration(ns));
}
// Simulated time of the calling fiber, in ns.
inline std::int64_t NowNs() { return Ns(runtime::this_fiber::Now()); }

inline DeviceSpec MustPreset(std::string_view name) {
  auto spec = DevicePreset(name);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : DeviceSpec{};
}

// A virtual-clock executor and a device on it. Destroys the device before the
// executor (the device's precondition).
class SimulatedDevice {
 public:
  explicit SimulatedDevice(const DeviceSpec& spec,
                           const DeviceOptions& options = {}) {
    auto executor = runtime::Executor::Create(
        {.num_workers = 0, .clock = runtime::ClockKind::kVirtual});
    EXPECT_TRUE(executor.ok()) << executor.status();
    executor_ = std::move(*executor);
    auto device = Device::Create(spec, executor_.get(), options);
    EXPECT_TRUE(device.ok()) << device.status();
    device_ = std::move(*device);
  }
  ~SimulatedDevice() { device_.reset(); }

  Device& device() { return *device_; }
  Device* operator->() { return device_.get(); }
  runtime::Executor& executor() { return *executor_; }

  // Spawns fn and runs the executor until every task finished.
  template <typename F>
  void RunFiber(F&& fn) {
    executor_->Spawn(std::forward<F>(fn));
    const Status status = executor_->Run();
    EXPECT_TRUE(status.ok()) << status;
  }

  // A registered HBM buffer of `bytes`, filled with `fill`.
  std::byte* Hbm(std::size_t bytes, std::uint8_t fill = 0,
                 const std::string& name = "hbm") {
    hbm_.push_back(std::make_unique<std::byte[]>(bytes));
    std::byte* data = hbm_.back().get();
    std::memset(data, fill, bytes);
    const Status status = device_->RegisterHbm({data, bytes}, name);
    EXPECT_TRUE(status.ok()) << status;
    return data;
  }

  VmemBuffer Vmem(std::uint64_t bytes, const std::string& name = "vmem") {
    auto buffer = device_->AllocateVmem(bytes, name);
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    return buffer.ok() ? *buffer : VmemBuffer{};
  }

 private:
  std::unique_ptr<runtime::Executor> executor_;
  std::unique_ptr<Device> device_;
  std::vector<std::unique_ptr<std::byte[]>> hbm_;
};

// Starts a one-chunk transfer of `bytes` between hbm and vmem[offset...].
inline Status Transfer(Device& device, DmaDirection direction, std::byte* hbm,
                       VmemBuffer vmem, std::uint64_t offset,
                       std::uint64_t bytes, DmaSemaphore* semaphore,
                       int engine = -1, std::string_view label = {}) {
  const DmaChunk chunk{.hbm = hbm, .vmem_offset = offset, .bytes = bytes};
  return device.StartDma({.direction = direction,
                          .vmem = vmem,
                          .chunks = {&chunk, 1},
                          .semaphore = semaphore,
                          .engine = engine,
                          .label = label});
}

}  // namespace rpa::device::testing_util
