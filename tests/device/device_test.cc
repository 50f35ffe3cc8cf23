// Device: creation, HBM registration, VMEM buffers and StartDma validation
// (every bad request is an error that starts nothing).

#include "rpa/device/device.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <vector>

#include "device/device_test_util.h"

namespace rpa::device {
namespace {

using ::testing::HasSubstr;
using testing_util::At;
using testing_util::MustPreset;
using testing_util::Ns;
using testing_util::SimulatedDevice;
using testing_util::Transfer;

constexpr std::uint64_t kMiB = 1ull << 20;

TEST(DeviceTest, CreateRejectsARealClockOrWorkerThreads) {
  const DeviceSpec spec = MustPreset("v5e");
  auto real = runtime::Executor::Create({.num_workers = 0});
  ASSERT_TRUE(real.ok());
  auto on_real = Device::Create(spec, real->get());
  EXPECT_EQ(on_real.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(on_real.status().message(), HasSubstr("kVirtual"));

  auto threaded = runtime::Executor::Create({.num_workers = 1});
  ASSERT_TRUE(threaded.ok());
  auto on_threads = Device::Create(spec, threaded->get());
  EXPECT_EQ(on_threads.status().code(), StatusCode::kInvalidArgument);

  auto none = Device::Create(spec, nullptr);
  EXPECT_EQ(none.status().code(), StatusCode::kInvalidArgument);

  auto virt = runtime::Executor::Create(
      {.num_workers = 0, .clock = runtime::ClockKind::kVirtual});
  ASSERT_TRUE(virt.ok());
  DeviceSpec bad = spec;
  bad.mxu_tile = 100;
  auto on_bad = Device::Create(bad, virt->get());
  EXPECT_EQ(on_bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(on_bad.status().message(), HasSubstr("mxu_tile"));

  auto good = Device::Create(spec, virt->get());
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ((*good)->spec(), spec);
  EXPECT_EQ((*good)->vmem_free_bytes(), spec.vmem_bytes);
}

// Resident set size of this process, from /proc/self/statm.
std::uint64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t size_pages = 0, resident_pages = 0;
  statm >> size_pages >> resident_pages;
  return resident_pages * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

TEST(DeviceTest, CreatingManyDevicesIsCheap) {
  // VMEM backing is reserved, not touched: 200 x 128 MiB (25 GiB, more than
  // the machine has) must neither fail nor commit memory.
  auto executor = runtime::Executor::Create(
      {.num_workers = 0, .clock = runtime::ClockKind::kVirtual});
  ASSERT_TRUE(executor.ok());
  const std::uint64_t before = ResidentBytes();
  std::vector<std::unique_ptr<Device>> devices;
  for (int i = 0; i < 200; ++i) {
    auto device = Device::Create(MustPreset("v6e"), executor->get());
    ASSERT_TRUE(device.ok()) << device.status();
    devices.push_back(std::move(*device));
  }
  EXPECT_LT(ResidentBytes() - std::min(before, ResidentBytes()), 64 * kMiB);
}

TEST(DeviceTest, RegisterHbmRejectsEmptyAndOverlappingRanges) {
  SimulatedDevice sim(MustPreset("v5e"));
  std::vector<std::byte> memory(4096);
  EXPECT_EQ(sim->RegisterHbm({memory.data(), 0}, "empty").code(),
            StatusCode::kInvalidArgument);
  ASSERT_TRUE(sim->RegisterHbm({memory.data() + 1024, 1024}, "middle").ok());
  const Status overlap = sim->RegisterHbm({memory.data() + 2000, 100}, "late");
  EXPECT_EQ(overlap.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(overlap.message(), HasSubstr("\"late\""));
  EXPECT_THAT(overlap.message(), HasSubstr("\"middle\""));
  EXPECT_EQ(sim->RegisterHbm({memory.data(), 1025}, "early").code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(sim->RegisterHbm({memory.data(), 4096}, "all").code(),
            StatusCode::kInvalidArgument);
  // Adjacent ranges are fine.
  EXPECT_TRUE(sim->RegisterHbm({memory.data(), 1024}, "before").ok());
  EXPECT_TRUE(sim->RegisterHbm({memory.data() + 2048, 2048}, "after").ok());
  sim->UnregisterAllHbm();
  EXPECT_TRUE(sim->RegisterHbm({memory.data(), 4096}, "all").ok());
}

TEST(DeviceTest, VmemExhaustionNamesNeedAndLargestFreeExtentAndChangesNothing) {
  SimulatedDevice sim(MustPreset("tpu7x"));  // 64 MiB
  const VmemBuffer big = sim.Vmem(60 * kMiB, "big");
  EXPECT_EQ(sim->vmem_free_bytes(), 4 * kMiB);
  auto too_big = sim->AllocateVmem(8 * kMiB, "kv");
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(too_big.status().message().rfind(
                "VMEM exhausted: need 8388608, have 4194304", 0),
            0u)
      << too_big.status();
  EXPECT_THAT(too_big.status().message(), HasSubstr("\"kv\""));
  // Nothing changed: the free space is all still there.
  EXPECT_EQ(sim->vmem_free_bytes(), 4 * kMiB);
  const VmemBuffer rest = sim.Vmem(4 * kMiB, "rest");
  EXPECT_EQ(rest.data, big.data + 60 * kMiB);
  EXPECT_EQ(sim->vmem_free_bytes(), 0u);
  EXPECT_EQ(sim->Stats().vmem_high_water_bytes, 64 * kMiB);

  auto zero = sim->AllocateVmem(0, "zero");
  EXPECT_EQ(zero.status().code(), StatusCode::kInvalidArgument);
}

TEST(DeviceTest, LargestFreeExtentIsReportedNotTheTotal) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  const VmemBuffer a = sim.Vmem(16 * kMiB, "a");
  const VmemBuffer b = sim.Vmem(16 * kMiB, "b");
  const VmemBuffer c = sim.Vmem(16 * kMiB, "c");
  sim.Vmem(16 * kMiB, "d");
  sim->FreeVmem(a);
  sim->FreeVmem(c);  // 32 MiB free, in two 16 MiB holes
  auto split = sim->AllocateVmem(20 * kMiB, "x");
  ASSERT_FALSE(split.ok());
  EXPECT_EQ(split.status().message().rfind(
                "VMEM exhausted: need 20971520, have 16777216", 0),
            0u)
      << split.status();
  sim->FreeVmem(b);  // coalesces a, b, c into one 48 MiB extent
  const VmemBuffer x = sim.Vmem(40 * kMiB, "x");
  EXPECT_EQ(x.data, a.data);
}

TEST(DeviceTest, FreedVmemIsReusedAndZeroedAgain) {
  SimulatedDevice sim(MustPreset("v5e"));
  const VmemBuffer a = sim.Vmem(100, "a");  // rounded to a 64-byte granule
  const VmemBuffer b = sim.Vmem(64, "b");
  EXPECT_EQ(b.data, a.data + 128);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.data) % 64, 0u);
  EXPECT_NE(a.id, b.id);
  for (std::uint64_t i = 0; i < a.bytes; ++i)
    ASSERT_EQ(a.data[i], std::byte{0});
  std::memset(a.data, 0x7F, a.bytes);
  sim->FreeVmem(a);
  sim->FreeVmem(a);  // already freed: a no-op
  const VmemBuffer again = sim.Vmem(128, "again");
  EXPECT_EQ(again.data, a.data);  // first fit
  EXPECT_NE(again.id, a.id);      // ids are never reused
  for (std::uint64_t i = 0; i < again.bytes; ++i) {
    ASSERT_EQ(again.data[i], std::byte{0}) << i;
  }
  EXPECT_EQ(sim->vmem_free_bytes(), sim->spec().vmem_bytes - 128 - 64);
}

TEST(DeviceTest, StartDmaValidationErrorsStartNothing) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(4096, 1);
  std::vector<std::byte> unregistered(4096);
  const VmemBuffer vmem = sim.Vmem(1024, "buf");
  const VmemBuffer freed = sim.Vmem(1024, "freed");
  sim->FreeVmem(freed);
  DmaSemaphore sem;
  std::vector<Status> errors;
  sim.RunFiber([&] {
    auto one = [&](DmaChunk chunk, VmemBuffer buffer, int engine) {
      return sim->StartDma({.direction = DmaDirection::kHbmToVmem,
                            .vmem = buffer,
                            .chunks = {&chunk, 1},
                            .semaphore = &sem,
                            .engine = engine,
                            .label = "bad"});
    };
    errors.push_back(sim->StartDma({.direction = DmaDirection::kHbmToVmem,
                                    .vmem = vmem,
                                    .chunks = {},
                                    .semaphore = &sem,
                                    .engine = -1,
                                    .label = {}}));
    errors.push_back(one({.hbm = hbm, .vmem_offset = 0, .bytes = 0}, vmem, -1));
    errors.push_back(
        one({.hbm = hbm, .vmem_offset = 1000, .bytes = 25}, vmem, -1));
    errors.push_back(
        one({.hbm = hbm, .vmem_offset = UINT64_MAX, .bytes = 2}, vmem, -1));
    errors.push_back(one(
        {.hbm = unregistered.data(), .vmem_offset = 0, .bytes = 16}, vmem, -1));
    errors.push_back(
        one({.hbm = hbm + 4090, .vmem_offset = 0, .bytes = 16}, vmem, -1));
    errors.push_back(
        one({.hbm = nullptr, .vmem_offset = 0, .bytes = 16}, vmem, -1));
    errors.push_back(one({.hbm = hbm, .vmem_offset = 0, .bytes = 16}, vmem, 4));
    errors.push_back(
        one({.hbm = hbm, .vmem_offset = 0, .bytes = 16}, vmem, -2));
    errors.push_back(
        one({.hbm = hbm, .vmem_offset = 0, .bytes = 16}, freed, -1));
    // One good chunk and one bad: the whole request is refused.
    const DmaChunk mixed[2] = {{.hbm = hbm, .vmem_offset = 0, .bytes = 16},
                               {.hbm = hbm, .vmem_offset = 1020, .bytes = 16}};
    errors.push_back(sim->StartDma({.direction = DmaDirection::kVmemToHbm,
                                    .vmem = vmem,
                                    .chunks = mixed,
                                    .semaphore = &sem,
                                    .engine = -1,
                                    .label = {}}));
  });
  const char* expected[] = {"no chunks",
                            "chunk 0 has 0 bytes",
                            "outside buffer \"buf\"",
                            "outside buffer",
                            "not inside a registered HBM range",
                            "not inside a registered HBM range",
                            "not inside a registered HBM range",
                            "engine 4 out of range",
                            "engine -2 out of range",
                            "not allocated",
                            "chunk 1"};
  ASSERT_EQ(errors.size(), std::size(expected));
  for (std::size_t i = 0; i < errors.size(); ++i) {
    EXPECT_EQ(errors[i].code(), StatusCode::kInvalidArgument) << i;
    EXPECT_THAT(errors[i].message(), HasSubstr(expected[i])) << i;
  }
  // Nothing started: no transfer, no timer ran the clock, no byte moved.
  const DeviceStats stats = sim->Stats();
  EXPECT_EQ(stats.dma_transfers, 0u);
  EXPECT_EQ(Ns(stats.now), 0);
  EXPECT_EQ(sem.available_bytes(), 0u);
  EXPECT_EQ(vmem.data[0], std::byte{0});
}

TEST(DeviceTest, StartDmaFromTheDrivingThreadRunsOnTheNextRun) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(3700, 9);
  const VmemBuffer vmem = sim.Vmem(3700);
  DmaSemaphore sem;
  ASSERT_TRUE(
      Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, vmem, 0, 3700, &sem)
          .ok());
  ASSERT_TRUE(sim.executor().Run().ok());
  EXPECT_EQ(sem.available_bytes(), 3700u);
  EXPECT_EQ(Ns(sim.executor().Now()), 1021);
  EXPECT_EQ(vmem.data[3699], std::byte{9});
}

TEST(DeviceDeathTest, FreeingABufferWithADmaInFlightIsABug) {
  auto body = [] {
    SimulatedDevice sim(MustPreset("tpu7x"));
    std::byte* hbm = sim.Hbm(4096);
    const VmemBuffer vmem = sim.Vmem(4096, "busy");
    sim.RunFiber([&] {
      (void)Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, vmem, 0, 4096,
                     nullptr);
      sim->FreeVmem(vmem);
    });
  };
  EXPECT_DEATH(body(),
               "FreeVmem of buffer \"busy\" with 1 DMA\\(s\\) in flight");
}

TEST(DeviceDeathTest, DestroyingADeviceWithADmaInFlightIsABug) {
  auto body = [] {
    SimulatedDevice sim(MustPreset("tpu7x"));
    std::byte* hbm = sim.Hbm(4096);
    const VmemBuffer vmem = sim.Vmem(4096);
    // Issued from the driving thread and never run.
    (void)Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, vmem, 0, 4096,
                   nullptr);
  };
  EXPECT_DEATH(body(), "Device destroyed with 1 DMA\\(s\\) in flight");
}

TEST(DeviceDeathTest, AComputeOpOutsideItsBufferIsABug) {
  auto body = [] {
    SimulatedDevice sim(MustPreset("tpu7x"));
    const VmemBuffer vmem = sim.Vmem(4096, "small");
    const VmemAccess access{
        .buffer = vmem, .offset = 4000, .bytes = 100, .write = false};
    (void)sim->Vector(1, {&access, 1}, At(0), "overrun");
  };
  EXPECT_DEATH(body(), "outside VMEM buffer \"small\"");
}

}  // namespace
}  // namespace rpa::device
