// RunOnDevice: the RPA schedule on the simulated TPU against the host Run
// and the double-precision oracle (outputs within SPEC section 4, caches bit
// for bit), both schedules and the deliberately broken schedule. The report,
// determinism and rejected runs: device_run_report_test.cc; the walk:
// device_walk_test.cc.

#include "rpa/attention/device_run.h"

#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/device_run_fixture.h"
#include "attention/oracle.h"

#include "rpa/attention/plan.h"
#include "rpa/device/device_spec.h"

namespace rpa::attention {
namespace {

using namespace ::rpa::attention::device_run_fixture;  // NOLINT: test helpers

class DeviceRunSweepTest : public ::testing::TestWithParam<SweepCase> {};

// Runs the host Run and the device (default blocks, tiny blocks pipelined
// and serial) on the same batch.
TEST_P(DeviceRunSweepTest, MatchesHostAndOracle) {
  const SweepCase& param = GetParam();
  TestBatch batch = BuildBatch(param.spec);
  auto plan = PlanFor(batch, param.plan_options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch.original_oracle_input());
  ASSERT_TRUE(attention::Run(*plan, batch.tensors()).ok());
  ASSERT_EQ(testutil::CompareWithOracle(batch, expected), "");
  const std::vector<float> host_out = batch.out;
  const std::vector<std::byte> host_cache = CacheCopy(batch);

  struct DeviceCase {
    std::string name;
    DeviceRunOptions options;
    device::DeviceSpec spec;
  };
  // The fast-DMA runs cut their first and last steps into row pieces.
  const std::vector<DeviceCase> runs = {
      {"default_pipelined", DeviceRunOptions{}, Tpu7x()},
      {"tiny_pipelined", TinyBlocks(DeviceSchedule::kPipelined), Tpu7x()},
      {"tiny_serial", TinyBlocks(DeviceSchedule::kSerial), Tpu7x()},
      {"default_fast_dma", DeviceRunOptions{}, FastDma()},
      {"tiny_pipelined_fast_dma", TinyBlocks(DeviceSchedule::kPipelined),
       FastDma()},
      {"tiny_serial_fast_dma", TinyBlocks(DeviceSchedule::kSerial), FastDma()}};
  std::vector<float> tiny_pipelined_out;
  for (const auto& [name, options, spec] : runs) {
    SCOPED_TRACE(name);
    batch.Reset();
    StatusOr<DeviceRunReport> report =
        RunOnDevice(*plan, batch.tensors(), spec, options);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->num_races, 0U)
        << (report->races.empty() ? "" : report->races[0].what);
    EXPECT_EQ(testutil::CompareWithOracle(batch, expected), "");
    const std::vector<double> host(host_out.begin(), host_out.end());
    const testutil::Comparison against_host = testutil::CompareOutputs(
        batch.out, host, batch.shape.num_q_heads, batch.shape.head_dim);
    EXPECT_TRUE(against_host.ok) << against_host.first_bad;
    EXPECT_EQ(testutil::DescribeCacheDifference(
                  batch.cache(), batch.cache_bytes(), host_cache),
              "");
    EXPECT_GT(report->simulated_us, 0.0);
    EXPECT_LE(report->overlap_efficiency, 1.0 + 1e-9);
    if (name.starts_with("tiny_pipelined")) tiny_pipelined_out = batch.out;
    // The same blocks (and pieces) give the same arithmetic in either
    // schedule.
    if (name.starts_with("tiny_serial")) {
      EXPECT_TRUE(SameBits(batch.out, tiny_pipelined_out));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, DeviceRunSweepTest,
                         ::testing::ValuesIn(SweepCases()),
                         [](const auto& param_info) {
                           return param_info.param.name;
                         });

// SPEC section 2's example of the public kernel's defect: q_len 393,
// kv_len 393, window 128, kv blocks of 256 tokens, page 16. Every new token
// must reach the cache (the oracle's cache holds all of them).
TEST(DeviceRunTest, WindowHiddenTokensAreWrittenBack) {
  BatchSpec spec = Base(2, 1, 16, 16, StorageType::kBf16);
  spec.sequences = {{393, 393}};
  spec.distribution = std::array<std::int32_t, 3>{0, 1, 1};
  spec.params.chunk_prefill_size = 393;
  spec.params.sliding_window = 128;
  TestBatch batch = BuildBatch(spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch.original_oracle_input());
  // The fast-DMA device cuts the ends into row pieces, whose key ranges the
  // window shifts.
  for (const device::DeviceSpec& device_spec : {Tpu7x(), FastDma()}) {
    for (const std::uint32_t q_tokens : {393U, 64U}) {
      for (const DeviceSchedule schedule :
           {DeviceSchedule::kPipelined, DeviceSchedule::kSerial}) {
        SCOPED_TRACE(std::string(DeviceScheduleName(schedule)) + " q block " +
                     std::to_string(q_tokens) + " on " + device_spec.name);
        batch.Reset();
        DeviceRunOptions options;
        options.schedule = schedule;
        options.prefill_blocks = {.q_tokens_per_block = q_tokens,
                                  .kv_pages_per_block = 16,
                                  .compute_kv_tokens = 128};
        StatusOr<DeviceRunReport> report =
            RunOnDevice(*plan, batch.tensors(), device_spec, options);
        ASSERT_TRUE(report.ok()) << report.status();
        EXPECT_EQ(testutil::CompareWithOracle(batch, expected), "");
        EXPECT_EQ(report->num_races, 0U);
        EXPECT_EQ(report->blocks_used[1].kv_pages_per_block, 16U);
      }
    }
  }
}

DeviceRunOptions DecodeHeavyOptions(DeviceSchedule schedule) {
  DeviceRunOptions options;
  options.schedule = schedule;
  options.decode_blocks = {.q_tokens_per_block = 2,
                           .kv_pages_per_block = 4,
                           .compute_kv_tokens = 32};
  return options;
}

TEST(DeviceRunTest, PipelinedIsFasterThanSerialWithTheSameResult) {
  TestBatch batch = BuildBatch(DecodeHeavySpec());
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch.original_oracle_input());
  StatusOr<DeviceRunReport> serial =
      RunOnDevice(*plan, batch.tensors(), Tpu7x(),
                  DecodeHeavyOptions(DeviceSchedule::kSerial));
  ASSERT_TRUE(serial.ok()) << serial.status();
  EXPECT_EQ(testutil::CompareWithOracle(batch, expected), "");
  const std::vector<float> serial_out = batch.out;
  batch.Reset();
  StatusOr<DeviceRunReport> pipelined =
      RunOnDevice(*plan, batch.tensors(), Tpu7x(),
                  DecodeHeavyOptions(DeviceSchedule::kPipelined));
  ASSERT_TRUE(pipelined.ok()) << pipelined.status();
  EXPECT_EQ(testutil::CompareWithOracle(batch, expected), "");
  EXPECT_TRUE(SameBits(batch.out, serial_out));
  EXPECT_EQ(serial->num_races, 0U);
  EXPECT_EQ(pipelined->num_races, 0U);
  // The serial schedule pays every DMA latency in full; the pipeline hides
  // them behind the streaming of the block before.
  EXPECT_LT(pipelined->simulated_us, 0.75 * serial->simulated_us)
      << "pipelined " << pipelined->simulated_us << " us, serial "
      << serial->simulated_us << " us";
  EXPECT_GT(pipelined->overlap_efficiency, serial->overlap_efficiency);
  EXPECT_EQ(pipelined->dma_transfers, serial->dma_transfers);
}

TEST(DeviceRunTest, SkippingTheKvWaitGivesAWrongResultAndRaces) {
  TestBatch batch = BuildBatch(DecodeHeavySpec());
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch.original_oracle_input());
  DeviceRunOptions options = DecodeHeavyOptions(DeviceSchedule::kPipelined);
  options.skip_kv_wait_for_testing = true;
  StatusOr<DeviceRunReport> report =
      RunOnDevice(*plan, batch.tensors(), Tpu7x(), options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_GT(report->num_races, 0U);
  ASSERT_FALSE(report->races.empty());
  EXPECT_NE(report->races[0].what.find("not landed"), std::string::npos)
      << report->races[0].what;
  EXPECT_NE(report->races[0].buffer.find("kv"), std::string::npos)
      << report->races[0].buffer;
  const std::vector<double> want(expected.out.begin(), expected.out.end());
  const testutil::Comparison comparison = testutil::CompareOutputs(
      batch.out, want, batch.shape.num_q_heads, batch.shape.head_dim);
  EXPECT_FALSE(comparison.ok)
      << "the broken schedule computed the right output";
  // The cache update does not depend on the skipped wait.
  EXPECT_EQ(testutil::DescribeCacheDifference(
                batch.cache(), batch.cache_bytes(), expected.cache),
            "");
}

}  // namespace
}  // namespace rpa::attention
