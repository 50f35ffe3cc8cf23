// Figures of RunOnDevice for the attention README (disabled tests that
// print, not check): Llama-3-8B attention on tpu7x.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "attention/batch_builder.h"
#include "attention/device_run_fixture.h"

#include "rpa/attention/device_run.h"
#include "rpa/attention/plan.h"
#include "rpa/device/device_spec.h"

namespace rpa::attention {
namespace {

using namespace ::rpa::attention::device_run_fixture;  // NOLINT: test helpers

// Figures (not a test: run with --gtest_also_run_disabled_tests
// --gtest_filter='*DISABLED_Llama3*'): Llama-3-8B attention (Hq 32, Hkv 8,
// D 128, bf16 cache) on tpu7x, decode 64 x kv 2048 and one causal 2048-token
// prefill chunk, both schedules, page sizes 128 and 16.

void PrintFigures(const std::string& name, const BatchSpec& spec) {
  const auto build_start = std::chrono::steady_clock::now();
  TestBatch batch = BuildBatch(spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const double build_s = std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - build_start)
                             .count();
  double serial_us = 0;
  for (const DeviceSchedule schedule :
       {DeviceSchedule::kSerial, DeviceSchedule::kPipelined}) {
    batch.Reset();
    DeviceRunOptions options;
    options.schedule = schedule;
    // RPA_DEVICE_TRACE_DIR=<dir> writes each run's Chrome trace there.
    const char* trace_dir =
        std::getenv("RPA_DEVICE_TRACE_DIR");  // NOLINT(concurrency-mt-unsafe)
    options.record_trace = trace_dir != nullptr;
    const auto start = std::chrono::steady_clock::now();
    StatusOr<DeviceRunReport> report =
        RunOnDevice(*plan, batch.tensors(), Tpu7x(), options);
    const double wall_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    ASSERT_TRUE(report.ok()) << report.status();
    if (schedule == DeviceSchedule::kSerial) serial_us = report->simulated_us;
    if (trace_dir != nullptr) {
      std::string file_name = std::string(trace_dir) + "/" + name + "_" +
                              std::string(DeviceScheduleName(schedule)) +
                              ".json";
      std::replace(file_name.begin() +
                       static_cast<std::ptrdiff_t>(std::strlen(trace_dir) + 1),
                   file_name.end(), ' ', '_');
      std::ofstream(file_name) << report->trace_json;
    }
    const int range =
        spec.distribution.has_value() && (*spec.distribution)[0] == 0 ? 1 : 0;
    const DeviceBlockSizes& blocks = report->blocks_used[range];
    std::printf(
        "%s %s: makespan %.2f us, MBU %.3f, MFU %.3f, overlap %.3f (hbm %.2f, "
        "matrix %.2f, vector %.2f us), serial/pipelined %.3f, %llu DMAs, "
        "VMEM high water %.1f MiB, blocks q %u kv_pages %u compute %u, "
        "races %llu, host wall %.2f s (batch build %.2f s)\n",
        name.c_str(), std::string(DeviceScheduleName(schedule)).c_str(),
        report->simulated_us, report->mbu, report->mfu,
        report->overlap_efficiency, report->hbm_busy_us, report->matrix_busy_us,
        report->vector_busy_us, serial_us / report->simulated_us,
        static_cast<unsigned long long>(report->dma_transfers),
        static_cast<double>(report->vmem_high_water_bytes) / (1 << 20),
        blocks.q_tokens_per_block, blocks.kv_pages_per_block,
        blocks.compute_kv_tokens,
        static_cast<unsigned long long>(report->num_races), wall_s, build_s);
  }
}

BatchSpec Llama3Spec(std::uint32_t page_size) {
  BatchSpec spec = Base(32, 8, 128, page_size, StorageType::kBf16);
  spec.params.sm_scale = 1.0F / std::sqrt(128.0F);
  spec.extra_pages = 0;
  spec.padding_tokens = 0;
  return spec;
}

TEST(DeviceRunFigures, DISABLED_Llama3Decode) {
  for (const std::uint32_t page_size : {128U, 16U}) {
    BatchSpec spec = Llama3Spec(page_size);
    spec.sequences.assign(64, {1, 2048});
    spec.distribution = std::array<std::int32_t, 3>{64, 64, 64};
    PrintFigures("decode 64 x 2048 page " + std::to_string(page_size), spec);
  }
}

TEST(DeviceRunFigures, DISABLED_Llama3Prefill) {
  for (const std::uint32_t page_size : {128U, 16U}) {
    BatchSpec spec = Llama3Spec(page_size);
    spec.sequences = {{2048, 2048}};
    spec.distribution = std::array<std::int32_t, 3>{0, 1, 1};
    spec.params.chunk_prefill_size = 2048;
    PrintFigures("prefill 2048 page " + std::to_string(page_size), spec);
  }
}

}  // namespace
}  // namespace rpa::attention
