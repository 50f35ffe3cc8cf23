// The race checker: broken pipeline patterns are reported (buffer, range,
// what), correct ones report nothing, and races never stop the simulation.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "device/device_test_util.h"

namespace rpa::device {
namespace {

using ::testing::HasSubstr;
using testing_util::At;
using testing_util::MustPreset;
using testing_util::NowNs;
using testing_util::Ns;
using testing_util::SimulatedDevice;
using testing_util::Transfer;

constexpr std::uint64_t kBytes = 370'000;  // 100 ns alone on tpu7x

VmemAccess Read(VmemBuffer buffer, std::uint64_t offset, std::uint64_t bytes) {
  return {.buffer = buffer, .offset = offset, .bytes = bytes, .write = false};
}
VmemAccess Write(VmemBuffer buffer, std::uint64_t offset, std::uint64_t bytes) {
  return {.buffer = buffer, .offset = offset, .bytes = bytes, .write = true};
}

TEST(RaceTest, ComputingOnABufferBeforeWaitingForItsDmaIsReported) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(kBytes, 0x42);
  const VmemBuffer kv = sim.Vmem(kBytes, "kv0");
  DmaSemaphore landed;
  std::byte seen{0xFF};
  sim.RunFiber([&] {
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, kv, 0,
                         kBytes, &landed)
                    .ok());
    // The bug: no landed.Wait() before computing on kv.
    const VmemAccess reads[] = {Read(kv, 0, kBytes)};
    seen = kv.data[0];  // what the kernel's arithmetic would see
    const ComputeOp op = sim->MatMul(8, 128, 256, reads, {}, "qk");
    sim->WaitUntil(op.end);
    landed.Wait(kBytes);
  });
  EXPECT_EQ(seen, std::byte{0});  // stale: the bytes had not landed
  ASSERT_EQ(sim->races().size(), 1u);
  const RaceReport& race = sim->races()[0];
  EXPECT_EQ(race.buffer, "kv0");
  EXPECT_EQ(race.offset, 0u);
  EXPECT_EQ(race.bytes, kBytes);
  EXPECT_THAT(race.what, HasSubstr("\"qk\" reads"));
  EXPECT_THAT(race.what, HasSubstr("has not landed"));
  EXPECT_EQ(Ns(race.time), 0);
  EXPECT_EQ(sim->Stats().races, 1u);
  // The simulation went on: the transfer landed as usual.
  EXPECT_EQ(kv.data[0], std::byte{0x42});
}

TEST(RaceTest, ACorrectDoubleBufferedPipelineReportsNothing) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  constexpr int kBlocks = 6;
  std::byte* hbm = sim.Hbm(kBlocks * kBytes, 1);
  std::byte* out = sim.Hbm(kBlocks * 4096, 0, "out");
  const VmemBuffer slots[2] = {sim.Vmem(kBytes, "kv0"),
                               sim.Vmem(kBytes, "kv1")};
  const VmemBuffer result[2] = {sim.Vmem(4096, "o0"), sim.Vmem(4096, "o1")};
  DmaSemaphore fetched[2], written[2];
  sim.RunFiber([&] {
    std::vector<runtime::TimePoint> slot_free(2);
    bool pending_write[2] = {false, false};
    auto fetch = [&](int b) {
      const auto s = static_cast<std::size_t>(b % 2);
      sim->WaitUntil(slot_free[s]);  // the last op on the slot has ended
      ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem,
                           hbm + static_cast<std::uint64_t>(b) * kBytes,
                           slots[s], 0, kBytes, &fetched[s])
                      .ok());
    };
    fetch(0);
    for (int b = 0; b < kBlocks; ++b) {
      const auto s = static_cast<std::size_t>(b % 2);
      if (b + 1 < kBlocks) fetch(b + 1);  // prefetch into the other slot
      fetched[s].Wait(kBytes);
      if (pending_write[s]) written[s].Wait(4096);  // o[s] free again
      const VmemAccess qk[] = {Read(slots[s], 0, kBytes)};
      const ComputeOp op1 = sim->MatMul(8, 128, 1024, qk, {}, "qk");
      const VmemAccess pv[] = {Read(slots[s], 0, kBytes),
                               Write(result[s], 0, 4096)};
      const ComputeOp op2 = sim->MatMul(8, 1024, 128, pv, op1.end, "pv");
      slot_free[s] = op2.end;
      sim->WaitUntil(op2.end);  // the output is computed
      ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kVmemToHbm,
                           out + static_cast<std::uint64_t>(b) * 4096,
                           result[s], 0, 4096, &written[s])
                      .ok());
      pending_write[s] = true;
    }
    for (std::size_t s = 0; s < 2; ++s) {
      if (pending_write[s]) written[s].Wait(4096);
    }
  });
  EXPECT_TRUE(sim->races().empty()) << sim->races()[0].what;
  EXPECT_EQ(sim->Stats().races, 0u);
  EXPECT_EQ(sim->Stats().dma_transfers, 2u * kBlocks);
}

TEST(RaceTest, TheReportedRangeIsTheOverlap) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(8192, 1);
  const VmemBuffer buf = sim.Vmem(8192, "buf");
  DmaSemaphore sem;
  sim.RunFiber([&] {
    // Two chunks: [1024, 2048) and [4096, 5120).
    const DmaChunk chunks[2] = {
        {.hbm = hbm, .vmem_offset = 1024, .bytes = 1024},
        {.hbm = hbm + 1024, .vmem_offset = 4096, .bytes = 1024}};
    ASSERT_TRUE(sim->StartDma({.direction = DmaDirection::kHbmToVmem,
                               .vmem = buf,
                               .chunks = chunks,
                               .semaphore = &sem,
                               .engine = -1,
                               .label = "two chunks"})
                    .ok());
    const VmemAccess clear[] = {Read(buf, 0, 1024), Read(buf, 2048, 2048),
                                Write(buf, 5120, 3072)};
    (void)sim->Vector(100, clear, {}, "between the chunks");
    const VmemAccess hits[] = {Write(buf, 1536, 3000)};
    (void)sim->Vector(100, hits, {}, "softmax");
    sem.Wait(2048);
  });
  ASSERT_EQ(sim->races().size(), 1u);
  EXPECT_EQ(sim->races()[0].offset, 1536u);  // [1536, 2048) ... [4096, 4536)
  EXPECT_EQ(sim->races()[0].bytes, 4536u - 1536u);
  EXPECT_THAT(sim->races()[0].what, HasSubstr("\"softmax\" writes"));
}

TEST(RaceTest, WritingWhatAnOutgoingDmaIsStillReadingIsReported) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(4096, 0);
  const VmemBuffer out = sim.Vmem(4096, "out");
  DmaSemaphore sem;
  sim.RunFiber([&] {
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kVmemToHbm, hbm, out, 0,
                         4096, &sem)
                    .ok());
    const VmemAccess read[] = {Read(out, 0, 4096)};
    (void)sim->Vector(10, read, {}, "reads are fine");
    const VmemAccess write[] = {Write(out, 0, 64)};
    (void)sim->Vector(10, write, {}, "next block");
    sem.Wait(4096);
    (void)sim->Vector(10, write, {}, "after the wait");
  });
  ASSERT_EQ(sim->races().size(), 1u);
  EXPECT_EQ(sim->races()[0].buffer, "out");
  EXPECT_EQ(sim->races()[0].bytes, 64u);
  EXPECT_THAT(sim->races()[0].what, HasSubstr("outgoing DMA #1"));
  EXPECT_THAT(sim->races()[0].what, HasSubstr("still reading"));
}

TEST(RaceTest, ADmaIntoABufferAReservedOpStillUsesIsReported) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(4096, 1);
  const VmemBuffer buf = sim.Vmem(4096, "kv1");
  DmaSemaphore sem;
  std::int64_t op_end = -1;
  sim.RunFiber([&] {
    const VmemAccess read[] = {Read(buf, 0, 4096)};
    const ComputeOp op = sim->MatMul(4096, 4096, 4096, read, {}, "pv");
    op_end = Ns(op.end);
    // The bug: refill the buffer while the op on it is still running.
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, buf, 0,
                         4096, &sem)
                    .ok());
    sem.Wait(4096);
    // Correct: wait for the op to end before the refill.
    const ComputeOp op2 = sim->MatMul(8, 128, 128, read, {}, "pv2");
    sim->WaitUntil(op2.end);
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, buf, 0,
                         4096, &sem)
                    .ok());
    sem.Wait(4096);
  });
  ASSERT_GT(op_end, 1000);
  ASSERT_EQ(sim->races().size(), 1u);
  EXPECT_EQ(sim->races()[0].buffer, "kv1");
  EXPECT_THAT(sim->races()[0].what, HasSubstr("DMA #1 into"));
  EXPECT_THAT(sim->races()[0].what, HasSubstr("\"pv\""));
  EXPECT_THAT(sim->races()[0].what,
              HasSubstr("ends at " + std::to_string(op_end) + " ns"));
}

TEST(RaceTest, ADmaOutOfARangeStillBeingFilledIsReported) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(8192, 1);
  const VmemBuffer buf = sim.Vmem(4096, "stage");
  DmaSemaphore in, out;
  sim.RunFiber([&] {
    ASSERT_TRUE(
        Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, buf, 0, 4096, &in)
            .ok());
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kVmemToHbm, hbm + 4096,
                         buf, 2048, 2048, &out)
                    .ok());
    in.Wait(4096);
    out.Wait(2048);
  });
  ASSERT_EQ(sim->races().size(), 1u);
  EXPECT_EQ(sim->races()[0].offset, 2048u);
  EXPECT_EQ(sim->races()[0].bytes, 2048u);
  EXPECT_THAT(sim->races()[0].what,
              HasSubstr("DMA #2 out of a range issued while incoming DMA #1"));
}

TEST(RaceTest, TwoDmasIntoOneRangeAreReportedButDisjointHalvesAreNot) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(8192, 1);
  const VmemBuffer buf = sim.Vmem(4096, "kv");
  DmaSemaphore sem;
  sim.RunFiber([&] {
    // Disjoint halves: fine.
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, buf, 0,
                         2048, &sem)
                    .ok());
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm + 2048,
                         buf, 2048, 2048, &sem)
                    .ok());
    sem.Wait(4096);
    EXPECT_TRUE(sim->races().empty());
    // Overlapping: whichever lands last wins. Reported.
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, buf, 0,
                         4096, &sem)
                    .ok());
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm + 4096,
                         buf, 1024, 64, &sem)
                    .ok());
    sem.Wait(4096 + 64);
  });
  ASSERT_EQ(sim->races().size(), 1u);
  EXPECT_EQ(sim->races()[0].offset, 1024u);
  EXPECT_EQ(sim->races()[0].bytes, 64u);
  EXPECT_THAT(sim->races()[0].what,
              HasSubstr("DMA #4 into a range issued while incoming DMA #3"));
}

TEST(RaceTest, ReportsAreCappedButAllCounted) {
  DeviceOptions options;
  options.max_race_reports = 2;
  SimulatedDevice sim(MustPreset("tpu7x"), options);
  std::byte* hbm = sim.Hbm(4096, 1);
  const VmemBuffer buf = sim.Vmem(4096, "kv");
  DmaSemaphore sem;
  sim.RunFiber([&] {
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, buf, 0,
                         4096, &sem)
                    .ok());
    const VmemAccess read[] = {Read(buf, 0, 4096)};
    for (int i = 0; i < 5; ++i) (void)sim->Vector(1, read, {}, "early");
    sem.Wait(4096);
  });
  EXPECT_EQ(sim->races().size(), 2u);
  EXPECT_EQ(sim->Stats().races, 5u);
}

TEST(RaceTest, AnOpIssuedAtTheLandingTimeSeesTheData) {
  // The landing and the op issue happen at the same simulated time: the op
  // must see landed data and no race, whichever fiber the executor runs
  // first (the device processes due landings on every call).
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(kBytes, 0x33);
  const VmemBuffer buf = sim.Vmem(kBytes, "kv");
  std::byte seen{0};
  sim.RunFiber([&] {
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, buf, 0,
                         kBytes, nullptr)
                    .ok());
    runtime::this_fiber::SleepUntil(At(1120));  // not through the device
    EXPECT_EQ(NowNs(), 1120);
    const VmemAccess read[] = {Read(buf, 0, kBytes)};
    (void)sim->Vector(1, read, {}, "at landing");
    seen = buf.data[kBytes - 1];
  });
  EXPECT_TRUE(sim->races().empty());
  EXPECT_EQ(seen, std::byte{0x33});
}

}  // namespace
}  // namespace rpa::device
