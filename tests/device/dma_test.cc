// DMA timing on the virtual clock (exact nanoseconds for known sizes),
// semaphore byte counting, and data landing at completion.
//
// tpu7x: 3.7e12 B/s = 3700 B/ns, issue latency 1000 ns, 20 ns per chunk, so
// a 3.7 MB transfer alone streams for exactly 1000 ns and lands at 2020 ns.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "device/device_test_util.h"

namespace rpa::device {
namespace {

using testing_util::At;
using testing_util::MustPreset;
using testing_util::NowNs;
using testing_util::Ns;
using testing_util::SimulatedDevice;
using testing_util::Transfer;

constexpr std::uint64_t k37MB = 3'700'000;  // 1000 ns alone on tpu7x
constexpr std::uint64_t k370KB = 370'000;   // 100 ns alone on tpu7x

TEST(DmaTest, OneTransferAloneLandsAtLatencyPlusDescriptorPlusStreaming) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(k37MB, 0xAB);
  const VmemBuffer vmem = sim.Vmem(k37MB);
  DmaSemaphore landed;
  std::int64_t landed_ns = -1;
  sim.RunFiber([&] {
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, vmem, 0,
                         k37MB, &landed)
                    .ok());
    landed.Wait(k37MB);
    landed_ns = NowNs();
  });
  EXPECT_EQ(landed_ns, 1000 + 20 + 1000);
  // Nothing (no stale timer) ran the clock past the last landing.
  EXPECT_EQ(Ns(sim.executor().Now()), 2020);
  const DeviceStats stats = sim->Stats();
  EXPECT_EQ(stats.bytes_hbm_to_vmem, k37MB);
  EXPECT_EQ(stats.bytes_vmem_to_hbm, 0u);
  EXPECT_EQ(stats.dma_transfers, 1u);
  EXPECT_EQ(stats.dma_chunks, 1u);
  EXPECT_EQ(Ns(stats.hbm_busy), 1000);
  ASSERT_EQ(stats.dma_engine_busy.size(), 4u);
  EXPECT_EQ(Ns(stats.dma_engine_busy[0]), 2020);  // issue to landing
  EXPECT_EQ(Ns(stats.dma_engine_busy[1]), 0);
}

TEST(DmaTest, TwoConcurrentTransfersShareTheBandwidth) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(2 * k37MB, 1);
  const VmemBuffer vmem = sim.Vmem(2 * k37MB);
  DmaSemaphore a, b;
  std::vector<std::int64_t> landed(2, -1);
  sim.executor().Spawn([&] {
    a.Wait(k37MB);
    landed[0] = NowNs();
  });
  sim.executor().Spawn([&] {
    b.Wait(k37MB);
    landed[1] = NowNs();
  });
  sim.RunFiber([&] {
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, vmem, 0,
                         k37MB, &a)
                    .ok());
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm + k37MB,
                         vmem, k37MB, k37MB, &b)
                    .ok());
  });
  // Both stream from 1020 at half the bandwidth: 2 x 1000 ns.
  EXPECT_EQ(landed[0], 1020 + 2000);
  EXPECT_EQ(landed[1], 1020 + 2000);
  const DeviceStats stats = sim->Stats();
  EXPECT_EQ(Ns(stats.hbm_busy), 2000);
  EXPECT_EQ(Ns(stats.dma_engine_busy[0]), 3020);
  EXPECT_EQ(Ns(stats.dma_engine_busy[1]), 3020);
}

TEST(DmaTest, StaggeredStartGetsHalfThenFullBandwidth) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(2 * k37MB, 1);
  const VmemBuffer vmem = sim.Vmem(2 * k37MB);
  DmaSemaphore a, b;
  std::int64_t a_ns = -1, b_ns = -1;
  sim.executor().Spawn([&] {
    a.Wait(k37MB);
    a_ns = NowNs();
  });
  sim.RunFiber([&] {
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, vmem, 0,
                         k37MB, &a)
                    .ok());
    sim->WaitUntil(At(500));
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm + k37MB,
                         vmem, k37MB, k37MB, &b)
                    .ok());
    b.Wait(k37MB);
    b_ns = NowNs();
  });
  // A streams alone over [1020, 1520): half its bytes. Then both share:
  // A's other half takes 1000 ns (lands 2520) while B gets half its bytes;
  // B's rest streams alone in 500 ns.
  EXPECT_EQ(a_ns, 2520);
  EXPECT_EQ(b_ns, 3020);
  EXPECT_EQ(Ns(sim.executor().Now()), 3020);
  EXPECT_EQ(Ns(sim->Stats().hbm_busy), 2000);
}

TEST(DmaTest, MoreTransfersThanEnginesQueueFifo) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(6 * k370KB, 1);
  const VmemBuffer vmem = sim.Vmem(6 * k370KB);
  std::vector<DmaSemaphore> sems(6);
  std::vector<std::int64_t> landed(6, -1);
  for (int i = 0; i < 6; ++i) {
    sim.executor().Spawn([&, i] {
      sems[static_cast<std::size_t>(i)].Wait(k370KB);
      landed[static_cast<std::size_t>(i)] = NowNs();
    });
  }
  sim.RunFiber([&] {
    for (std::uint64_t i = 0; i < 6; ++i) {
      ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem,
                           hbm + i * k370KB, vmem, i * k370KB, k370KB, &sems[i])
                      .ok());
    }
  });
  // Four run at once (4 x 100 ns of streaming at a quarter share: 400 ns);
  // the two queued ones take engines 0 and 1 at 1420 and share by two.
  EXPECT_THAT(landed,
              ::testing::ElementsAre(1420, 1420, 1420, 1420, 1420 + 1020 + 200,
                                     1420 + 1020 + 200));
  const DeviceStats stats = sim->Stats();
  EXPECT_EQ(Ns(stats.dma_engine_busy[0]), 2640);
  EXPECT_EQ(Ns(stats.dma_engine_busy[1]), 2640);
  EXPECT_EQ(Ns(stats.dma_engine_busy[2]), 1420);
  EXPECT_EQ(Ns(stats.dma_engine_busy[3]), 1420);
  EXPECT_EQ(Ns(stats.hbm_busy), 400 + 200);
}

TEST(DmaTest, TransfersPinnedToOneEngineRunOneAfterAnother) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(3 * k370KB, 1);
  const VmemBuffer vmem = sim.Vmem(3 * k370KB);
  std::vector<DmaSemaphore> sems(3);
  std::vector<std::int64_t> landed;
  sim.RunFiber([&] {
    for (std::uint64_t i = 0; i < 3; ++i) {
      ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem,
                           hbm + i * k370KB, vmem, i * k370KB, k370KB, &sems[i],
                           /*engine=*/2)
                      .ok());
    }
    for (DmaSemaphore& s : sems) {
      s.Wait(k370KB);
      landed.push_back(NowNs());
    }
  });
  EXPECT_THAT(landed, ::testing::ElementsAre(1120, 2240, 3360));
  const DeviceStats stats = sim->Stats();
  EXPECT_EQ(Ns(stats.dma_engine_busy[2]), 3360);
  EXPECT_EQ(Ns(stats.dma_engine_busy[0]), 0);
  EXPECT_EQ(Ns(stats.hbm_busy), 300);
}

TEST(DmaTest, AnyEngineTakesTheEngineThatFreesFirst) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(6 * k370KB, 1);
  const VmemBuffer vmem = sim.Vmem(6 * k370KB);
  DmaSemaphore sem;
  std::int64_t done_ns = -1;
  sim.RunFiber([&] {
    // Engines 0..2 busy with a long transfer each, engine 3 with a short one
    // issued last: the queued "any" transfer must take engine 3.
    for (std::uint64_t i = 0; i < 3; ++i) {
      ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem,
                           hbm + i * k370KB, vmem, i * k370KB, k370KB, nullptr,
                           static_cast<int>(i))
                      .ok());
    }
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem,
                         hbm + 3 * k370KB, vmem, 3 * k370KB, 3700, nullptr, 3)
                    .ok());
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem,
                         hbm + 4 * k370KB, vmem, 4 * k370KB, 3700, &sem)
                    .ok());
    sem.Wait(3700);
    done_ns = NowNs();
  });
  // 3700 B at a quarter share takes 4 ns: engine 3 frees at 1024 and the
  // queued transfer takes it (not engines 0..2, still busy). The long ones
  // then share by three and land at 1024 + 366300 B / 1233.3 B/ns = 1321, so
  // the queued one streams alone from 2044: 1 ns.
  EXPECT_EQ(done_ns, 1024 + 1020 + 1);
  const DeviceStats stats = sim->Stats();
  EXPECT_EQ(Ns(stats.dma_engine_busy[3]), 1024 + 1021);
  EXPECT_EQ(Ns(stats.dma_engine_busy[0]), 1321);
}

TEST(DmaTest, DescriptorCostScalesWithChunks) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(k370KB, 1);
  const VmemBuffer vmem = sim.Vmem(k370KB);
  std::vector<DmaChunk> chunks;
  for (std::uint64_t i = 0; i < 10; ++i) {
    chunks.push_back(
        {.hbm = hbm + i * 37'000, .vmem_offset = i * 37'000, .bytes = 37'000});
  }
  DmaSemaphore one, ten;
  std::int64_t one_ns = -1, ten_ns = -1;
  sim.RunFiber([&] {
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, vmem, 0,
                         k370KB, &one)
                    .ok());
    one.Wait(k370KB);
    one_ns = NowNs();
    ASSERT_TRUE(sim->StartDma({.direction = DmaDirection::kHbmToVmem,
                               .vmem = vmem,
                               .chunks = chunks,
                               .semaphore = &ten,
                               .engine = -1,
                               .label = "ten chunks"})
                    .ok());
    ten.Wait(k370KB);
    ten_ns = NowNs() - one_ns;
  });
  EXPECT_EQ(one_ns, 1000 + 1 * 20 + 100);
  EXPECT_EQ(ten_ns, 1000 + 10 * 20 + 100);
  EXPECT_EQ(sim->Stats().dma_chunks, 11u);
}

TEST(DmaTest, SemaphoreCountsBytesAndWaitReturnsAtLanding) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(2 * k37MB, 1);
  const VmemBuffer vmem = sim.Vmem(2 * k37MB);
  DmaSemaphore sem;
  std::vector<std::int64_t> times;
  sim.RunFiber([&] {
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, vmem, 0,
                         k37MB, &sem)
                    .ok());
    sim->WaitUntil(At(1000));
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm + k37MB,
                         vmem, k37MB, k37MB, &sem)
                    .ok());
    EXPECT_EQ(sem.available_bytes(), 0u);
    sem.Wait(1000);  // part of the first transfer: all of it lands at once
    times.push_back(NowNs());
    EXPECT_EQ(sem.available_bytes(), k37MB - 1000);
    sem.Wait(k37MB - 1000);  // the rest of the first: already there
    times.push_back(NowNs());
    sem.Wait(k37MB);  // the second
    times.push_back(NowNs());
    EXPECT_EQ(sem.available_bytes(), 0u);
  });
  // A alone over [1020, 2020) would land at 2020; B streams from 2020 too,
  // so A lands at 2020 exactly and B alone after it.
  EXPECT_THAT(times, ::testing::ElementsAre(2020, 2020, 3020));
}

TEST(DmaTest, DataLandsAtCompletionNotBefore) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(k37MB, 0xAB);
  const VmemBuffer vmem = sim.Vmem(k37MB);
  sim.RunFiber([&] {
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, vmem, 0,
                         k37MB, nullptr)
                    .ok());
    EXPECT_EQ(vmem.data[0], std::byte{0});
    sim->WaitUntil(At(2019));
    EXPECT_EQ(vmem.data[0], std::byte{0});  // a kernel would read stale data
    EXPECT_EQ(vmem.data[k37MB - 1], std::byte{0});
    sim->WaitUntil(At(2020));
    for (std::uint64_t i = 0; i < k37MB; i += 4099) {
      ASSERT_EQ(vmem.data[i], std::byte{0xAB}) << i;
    }
    EXPECT_EQ(vmem.data[k37MB - 1], std::byte{0xAB});
  });
}

TEST(DmaTest, WriteBackReadsVmemAtLandingAndWritesHbmThen) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(k370KB, 0x00);
  const VmemBuffer vmem = sim.Vmem(k370KB);
  std::memset(vmem.data, 0x11, k370KB);
  DmaSemaphore sem;
  sim.RunFiber([&] {
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kVmemToHbm, hbm, vmem, 0,
                         k370KB, &sem)
                    .ok());
    sim->WaitUntil(At(1119));
    EXPECT_EQ(hbm[0], std::byte{0});
    sem.Wait(k370KB);
    EXPECT_EQ(NowNs(), 1120);
    EXPECT_EQ(hbm[0], std::byte{0x11});
    EXPECT_EQ(hbm[k370KB - 1], std::byte{0x11});
  });
  EXPECT_EQ(sim->Stats().bytes_vmem_to_hbm, k370KB);
}

TEST(DmaTest, HbmBusyIsTheUnionOfStreamingIntervals) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(2 * k37MB, 1);
  const VmemBuffer vmem = sim.Vmem(2 * k37MB);
  DmaSemaphore sem;
  std::vector<std::int64_t> busy_at;
  sim.RunFiber([&] {
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, vmem, 0,
                         k37MB, &sem)
                    .ok());
    sim->WaitUntil(At(1520));
    busy_at.push_back(Ns(sim->Stats().hbm_busy));
    busy_at.push_back(Ns(sim->Stats().dma_engine_busy[0]));
    sim->WaitUntil(At(3000));
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm + k37MB,
                         vmem, k37MB, k37MB, &sem)
                    .ok());
    sem.Wait(2 * k37MB);
  });
  EXPECT_THAT(busy_at, ::testing::ElementsAre(500, 1520));
  const DeviceStats stats = sim->Stats();
  EXPECT_EQ(Ns(stats.now), 5020);
  EXPECT_EQ(Ns(stats.hbm_busy), 2000);  // the idle gap is not counted
  EXPECT_EQ(Ns(stats.dma_engine_busy[0]), 2020 + 2020);
}

TEST(DmaTest, LookingAtTheDeviceDoesNotMoveEvents) {
  // The same staggered pair, once untouched and once with Stats() polled
  // every 7 ns: identical landing times and statistics.
  auto run = [](bool poll) {
    SimulatedDevice sim(MustPreset("v5e"));
    std::byte* hbm = sim.Hbm(3'000'001, 1);
    const VmemBuffer vmem = sim.Vmem(3'000'001);
    DmaSemaphore a, b;
    std::vector<std::int64_t> out;
    if (poll) {
      sim.executor().Spawn([&] {
        for (int i = 0; i < 2000; ++i) {
          (void)sim->Stats();
          sim->WaitUntil(At(7 * i));
        }
      });
    }
    sim.RunFiber([&] {
      ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, vmem, 0,
                           1'000'003, &a)
                      .ok());
      sim->WaitUntil(At(500));
      ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem,
                           hbm + 1'000'003, vmem, 1'000'003, 1'999'998, &b)
                      .ok());
      a.Wait(1'000'003);
      out.push_back(NowNs());
      b.Wait(1'999'998);
      out.push_back(NowNs());
    });
    out.push_back(Ns(sim->Stats().hbm_busy));
    return out;
  };
  const std::vector<std::int64_t> quiet = run(false);
  EXPECT_EQ(run(true), quiet);
  // v5e: 820 B/ns. A alone over [1020, 1520): 410000 B; its other 590003 B
  // at 410 B/ns take 1439.03 ns: lands at ceil(2959.03) = 2960.
  EXPECT_EQ(quiet[0], 2960);
}

}  // namespace
}  // namespace rpa::device
