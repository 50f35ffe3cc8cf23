// Compute reservations: padded tile math, list scheduling per unit,
// not_before, and the statistics they feed.
//
// The spec: tpu7x with matrix_peak_flops = 2^20 * 1e9, so one padded
// 8 x 256 x 256 tile (2 * 8 * 256 * 256 = 2^20 flops) takes exactly 1 ns;
// clock = 4 GHz, vector rate 4096 * 4e9 = 16384 ops/ns.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>

#include "device/device_test_util.h"

namespace rpa::device {
namespace {

using testing_util::At;
using testing_util::MustPreset;
using testing_util::NowNs;
using testing_util::Ns;
using testing_util::SimulatedDevice;

DeviceSpec RoundSpec() {
  DeviceSpec spec = MustPreset("tpu7x");
  spec.matrix_peak_flops = 1048576e9;
  EXPECT_DOUBLE_EQ(spec.clock_hz(), 4e9);
  return spec;
}

std::int64_t Duration(const ComputeOp& op) { return Ns(op.end - op.start); }

TEST(ComputeTest, MatMulIsChargedForPaddedTiles) {
  SimulatedDevice sim(RoundSpec());
  // m pads to 8, k and n to the 256 tile.
  EXPECT_EQ(Duration(sim->MatMul(1, 1, 1, {})), 1);
  EXPECT_EQ(Duration(sim->MatMul(8, 256, 256, {})), 1);
  EXPECT_EQ(Duration(sim->MatMul(9, 256, 256, {})), 2);
  EXPECT_EQ(Duration(sim->MatMul(8, 257, 256, {})), 2);
  EXPECT_EQ(Duration(sim->MatMul(8, 256, 257, {})), 2);
  EXPECT_EQ(Duration(sim->MatMul(9, 257, 1, {})), 4);
  EXPECT_EQ(Duration(sim->MatMul(64, 512, 1024, {})), 8 * 2 * 4);
  EXPECT_EQ(Duration(sim->MatMul(0, 512, 1024, {})), 0);  // empty
  const DeviceStats stats = sim->Stats();
  const double tile = 2.0 * 8 * 256 * 256;
  EXPECT_DOUBLE_EQ(stats.matrix_flops_charged,
                   tile * (1 + 1 + 2 + 2 + 2 + 4 + 64));
  EXPECT_DOUBLE_EQ(stats.matrix_flops_useful,
                   2.0 * (1 + 8 * 256 * 256 + 9 * 256 * 256 + 8 * 257 * 256 +
                          8 * 256 * 257 + 9 * 257 + 64 * 512 * 1024));
  EXPECT_EQ(Ns(stats.matrix_busy), 1 + 1 + 2 + 2 + 2 + 4 + 64);
}

TEST(ComputeTest, ANonEmptyOpTakesAtLeastOneNanosecond) {
  SimulatedDevice sim(MustPreset("tpu7x"));  // one tile: 0.9 ns
  EXPECT_EQ(Duration(sim->MatMul(1, 1, 1, {})), 1);
  EXPECT_EQ(Duration(sim->Vector(1, {})), 1);
  EXPECT_EQ(Duration(sim->Vector(0, {})), 0);
}

TEST(ComputeTest, V5eUses128Tiles) {
  DeviceSpec spec = MustPreset("v5e");
  spec.matrix_peak_flops = 2.0 * 8 * 128 * 128 * 1e9 * 4;  // 4 tiles per ns
  SimulatedDevice sim(spec);
  EXPECT_EQ(Duration(sim->MatMul(8, 128, 128 * 4, {})), 1);
  EXPECT_EQ(Duration(sim->MatMul(8, 129, 128 * 4, {})), 2);
}

TEST(ComputeTest, VectorIsChargedOpsOverTheVectorRate) {
  SimulatedDevice sim(RoundSpec());
  EXPECT_EQ(Duration(sim->Vector(16384, {})), 1);
  EXPECT_EQ(Duration(sim->Vector(16384 * 10, {})), 10);
  EXPECT_EQ(Duration(sim->Vector(16384 * 10 + 1, {})), 11);
  const DeviceStats stats = sim->Stats();
  EXPECT_DOUBLE_EQ(stats.vector_ops, 16384.0 * 21 + 1);
  EXPECT_EQ(Ns(stats.vector_busy), 22);
}

TEST(ComputeTest, OpsQueueBackToBackPerUnitAndUnitsRunInParallel) {
  SimulatedDevice sim(RoundSpec());
  sim.RunFiber([&] {
    const ComputeOp a = sim->MatMul(8, 256, 256 * 4, {});
    const ComputeOp b = sim->MatMul(8, 256, 256 * 4, {});
    const ComputeOp v = sim->Vector(16384 * 10, {});
    EXPECT_EQ(Ns(a.start), 0);
    EXPECT_EQ(Ns(a.end), 4);
    EXPECT_EQ(Ns(b.start), 4);  // the matrix unit was busy
    EXPECT_EQ(Ns(b.end), 8);
    EXPECT_EQ(Ns(v.start), 0);  // the vector unit was free
    EXPECT_EQ(Ns(v.end), 10);
    EXPECT_EQ(NowNs(), 0);  // reserving does not suspend
    sim->WaitUntil(b.end);
    EXPECT_EQ(NowNs(), 8);
    // The unit is free again: the next op starts now.
    sim->WaitUntil(At(100));
    const ComputeOp c = sim->MatMul(8, 256, 256, {});
    EXPECT_EQ(Ns(c.start), 100);
    EXPECT_EQ(Ns(c.end), 101);
  });
}

TEST(ComputeTest, NotBeforeDelaysTheStartAndLaterOpsQueueBehindIt) {
  SimulatedDevice sim(RoundSpec());
  sim.RunFiber([&] {
    const ComputeOp qk = sim->MatMul(8, 256, 256, {}, At(0), "qk");
    const ComputeOp softmax = sim->Vector(16384 * 5, {}, qk.end, "softmax");
    const ComputeOp pv = sim->MatMul(8, 256, 256, {}, softmax.end, "pv");
    const ComputeOp next = sim->MatMul(8, 256, 256, {}, At(0), "qk2");
    EXPECT_EQ(Ns(qk.start), 0);
    EXPECT_EQ(Ns(softmax.start), 1);
    EXPECT_EQ(Ns(softmax.end), 6);
    EXPECT_EQ(Ns(pv.start), 6);
    EXPECT_EQ(Ns(pv.end), 7);
    // In issue order per unit: qk2 does not slip into the gap before pv.
    EXPECT_EQ(Ns(next.start), 7);
    EXPECT_EQ(Ns(next.end), 8);
  });
  const DeviceStats stats = sim->Stats();
  EXPECT_EQ(Ns(stats.matrix_busy), 3);
  EXPECT_EQ(Ns(stats.vector_busy), 5);
  EXPECT_EQ(Ns(stats.now), 0);  // nobody waited: time never moved
}

TEST(ComputeTest, WaitUntilThePastReturnsAtOnce) {
  SimulatedDevice sim(RoundSpec());
  sim.RunFiber([&] {
    sim->WaitUntil(At(50));
    sim->WaitUntil(At(10));
    EXPECT_EQ(NowNs(), 50);
    EXPECT_EQ(Ns(sim->Now()), 50);
  });
}

}  // namespace
}  // namespace rpa::device
