// RunOnDevice's report (it adds up, two runs are identical, empty ranges) and
// its rejected runs, which write nothing: VMEM that is too small, the tensor
// checks shared with Run, an invalid device spec.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/device_run_fixture.h"
#include "attention/oracle.h"

#include "rpa/attention/device_run.h"
#include "rpa/attention/plan.h"
#include "rpa/device/device_spec.h"

namespace rpa::attention {
namespace {

using namespace ::rpa::attention::device_run_fixture;  // NOLINT: test helpers

void ExpectNothingWritten(const TestBatch& batch,
                          const std::vector<std::byte>& cache_before) {
  EXPECT_EQ(std::memcmp(batch.cache_bytes().data(), cache_before.data(),
                        cache_before.size()),
            0)
      << "the cache changed";
  for (const float value : batch.out) {
    ASSERT_TRUE(std::isnan(value)) << "out was written";
  }
}

TEST(DeviceRunTest, TooLittleVmemIsAnInvalidArgumentAndWritesNothing) {
  TestBatch batch = BuildBatch(DecodeHeavySpec());
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const std::vector<std::byte> cache_before = CacheCopy(batch);
  StatusOr<device::DeviceSpec> tiny =
      device::ParseDeviceSpec(R"({"base": "tpu7x", "vmem_bytes": 4096})");
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  StatusOr<DeviceRunReport> report = RunOnDevice(*plan, batch.tensors(), *tiny);
  ASSERT_EQ(report.status().code(), StatusCode::kInvalidArgument);
  const std::string& message = report.status().message();
  EXPECT_NE(message.find("VMEM"), std::string::npos) << message;
  EXPECT_NE(message.find("decode kernel"), std::string::npos) << message;
  EXPECT_NE(message.find("kv_pages_per_block"), std::string::npos) << message;
  EXPECT_NE(message.find("vmem_bytes = 4096"), std::string::npos) << message;
  ExpectNothingWritten(batch, cache_before);

  // Block sizes the caller fixed are never shrunk: too large for the real
  // VMEM is the same error, naming them.
  DeviceRunOptions options;
  options.decode_blocks.kv_pages_per_block = 1U << 20;
  report = RunOnDevice(*plan, batch.tensors(), Tpu7x(), options);
  ASSERT_EQ(report.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(report.status().message().find("kv_pages_per_block 1048576"),
            std::string::npos)
      << report.status().message();
  ExpectNothingWritten(batch, cache_before);

  // Defaults shrink to fit a small VMEM that can hold some blocks.
  StatusOr<device::DeviceSpec> small =
      device::ParseDeviceSpec(R"({"base": "tpu7x", "vmem_bytes": 200000})");
  ASSERT_TRUE(small.ok()) << small.status();
  report = RunOnDevice(*plan, batch.tensors(), *small);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_LE(report->vmem_high_water_bytes, 200000U);
  EXPECT_EQ(testutil::CompareWithOracle(
                batch, testutil::RunOracle(batch.original_oracle_input())),
            "");
}

TEST(DeviceRunTest, TwoRunsAreIdenticalReportsIncluded) {
  BatchSpec spec = SweepCases()[3].spec;  // all three ranges
  TestBatch batch = BuildBatch(spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  DeviceRunOptions options = TinyBlocks(DeviceSchedule::kPipelined);
  options.record_trace = true;
  StatusOr<DeviceRunReport> first =
      RunOnDevice(*plan, batch.tensors(), Tpu7x(), options);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::vector<float> first_out = batch.out;
  const std::vector<std::byte> first_cache = CacheCopy(batch);
  batch.Reset();
  StatusOr<DeviceRunReport> second =
      RunOnDevice(*plan, batch.tensors(), Tpu7x(), options);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(SameBits(batch.out, first_out));
  EXPECT_EQ(CacheCopy(batch), first_cache);
  EXPECT_EQ(first->simulated_us, second->simulated_us);
  EXPECT_EQ(first->hbm_busy_us, second->hbm_busy_us);
  EXPECT_EQ(first->dma_engine_busy_us, second->dma_engine_busy_us);
  EXPECT_EQ(first->matrix_busy_us, second->matrix_busy_us);
  EXPECT_EQ(first->vector_busy_us, second->vector_busy_us);
  EXPECT_EQ(first->overlap_efficiency, second->overlap_efficiency);
  EXPECT_EQ(first->dma_transfers, second->dma_transfers);
  EXPECT_EQ(first->vmem_high_water_bytes, second->vmem_high_water_bytes);
  EXPECT_EQ(first->num_races, second->num_races);
  EXPECT_FALSE(first->trace_json.empty());
  EXPECT_EQ(first->trace_json, second->trace_json);
}

TEST(DeviceRunTest, ReportAddsUp) {
  BatchSpec spec = SweepCases()[3].spec;
  TestBatch batch = BuildBatch(spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const device::DeviceSpec tpu = Tpu7x();
  StatusOr<DeviceRunReport> report = RunOnDevice(*plan, batch.tensors(), tpu);
  ASSERT_TRUE(report.ok()) << report.status();
  const double seconds = report->simulated_us * 1e-6;
  EXPECT_EQ(report->bytes_moved, static_cast<double>(plan->cost().bytes()));
  EXPECT_EQ(report->flops, plan->cost().flops);
  EXPECT_NEAR(report->mbu, report->bytes_moved / seconds / tpu.hbm_bytes_per_s,
              1e-9);
  EXPECT_NEAR(report->mfu, report->flops / seconds / tpu.matrix_peak_flops,
              1e-9);
  EXPECT_NEAR(report->overlap_efficiency,
              std::max({report->hbm_busy_us, report->matrix_busy_us,
                        report->vector_busy_us}) /
                  report->simulated_us,
              1e-9);
  EXPECT_EQ(report->dma_engine_busy_us.size(), tpu.num_dma_engines);
  EXPECT_GT(report->dma_transfers, 0U);
  EXPECT_GT(report->vmem_high_water_bytes, 0U);
  EXPECT_LE(report->vmem_high_water_bytes, tpu.vmem_bytes);
  EXPECT_TRUE(report->trace_json.empty());
  for (int r = 0; r < 3; ++r) {
    const DeviceBlockSizes& blocks = report->blocks_used[r];
    EXPECT_GT(blocks.q_tokens_per_block, 0U) << r;
    EXPECT_GT(blocks.kv_pages_per_block, 0U) << r;
    EXPECT_GT(blocks.compute_kv_tokens, 0U) << r;
  }
  EXPECT_EQ(DeviceScheduleName(DeviceSchedule::kSerial), "serial");
  EXPECT_EQ(DeviceScheduleName(DeviceSchedule::kPipelined), "pipelined");
}

TEST(DeviceRunTest, EmptyRangesReportNoBlocksAndAnEmptyBatchRunsNothing) {
  BatchSpec spec = Base(4, 2, 32, 8, StorageType::kF32);
  spec.sequences = {{3, 10}, {1, 5}};
  spec.distribution = std::array<std::int32_t, 3>{0, 0, 1};
  TestBatch batch = BuildBatch(spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  StatusOr<DeviceRunReport> report =
      RunOnDevice(*plan, batch.tensors(), Tpu7x());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->blocks_used[0].kv_pages_per_block, 0U);
  EXPECT_EQ(report->blocks_used[1].q_tokens_per_block, 0U);
  EXPECT_GT(report->blocks_used[2].q_tokens_per_block, 0U);
  EXPECT_EQ(testutil::CompareWithOracle(
                batch, testutil::RunOracle(batch.original_oracle_input())),
            "");

  spec.distribution = std::array<std::int32_t, 3>{0, 0, 0};
  TestBatch empty = BuildBatch(spec);
  auto empty_plan = PlanFor(empty);
  ASSERT_TRUE(empty_plan.ok()) << empty_plan.status();
  const std::vector<std::byte> cache_before = CacheCopy(empty);
  report = RunOnDevice(*empty_plan, empty.tensors(), Tpu7x());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->simulated_us, 0.0);
  EXPECT_EQ(report->dma_transfers, 0U);
  EXPECT_EQ(CacheCopy(empty), cache_before);
}

TEST(DeviceRunTest, TensorChecksAreTheHostRunsChecks) {
  TestBatch batch = BuildBatch(SweepCases()[3].spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const std::vector<std::function<void(BatchTensors*)>> mutations = {
      [](BatchTensors* t) { t->q = t->q.first(t->q.size() - 1); },
      [](BatchTensors* t) { t->k = t->k.first(t->k.size() - 16); },
      [](BatchTensors* t) { t->v = t->v.subspan(1); },
      [](BatchTensors* t) { t->out = t->out.first(t->out.size() - 1); },
      [](BatchTensors* t) { t->cache.data = nullptr; },
      [](BatchTensors* t) { t->cache.num_pages -= 1; },
      [](BatchTensors* t) { t->cache.page_size_tokens *= 2; },
      [](BatchTensors* t) { t->cache.num_combined_heads += 2; },
      [](BatchTensors* t) { t->cache.head_dim /= 2; },
      [](BatchTensors* t) { t->cache.storage = StorageType::kF16; },
      [](BatchTensors* t) { t->cache.token_bytes += 4; },
      [](BatchTensors* t) { t->cache.page_bytes -= 4; },
  };
  const std::vector<std::byte> cache_before = CacheCopy(batch);
  for (std::size_t i = 0; i < mutations.size(); ++i) {
    BatchTensors tensors = batch.tensors();
    mutations[i](&tensors);
    const Status host = attention::Run(*plan, tensors);
    ASSERT_EQ(host.code(), StatusCode::kInvalidArgument) << i;
    StatusOr<DeviceRunReport> device = RunOnDevice(*plan, tensors, Tpu7x());
    EXPECT_EQ(device.status(), host) << i;
    ExpectNothingWritten(batch, cache_before);
  }
}

TEST(DeviceRunTest, AnInvalidDeviceSpecIsRejected) {
  TestBatch batch = BuildBatch(DecodeHeavySpec());
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const std::vector<std::byte> cache_before = CacheCopy(batch);
  device::DeviceSpec spec = Tpu7x();
  spec.hbm_bytes_per_s = 0;
  StatusOr<DeviceRunReport> report = RunOnDevice(*plan, batch.tensors(), spec);
  EXPECT_EQ(report.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(report.status().message().find("hbm_bytes_per_s"),
            std::string::npos)
      << report.status().message();
  ExpectNothingWritten(batch, cache_before);
}

}  // namespace
}  // namespace rpa::attention
