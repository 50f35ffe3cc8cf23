// Google Benchmark of pipeline overlap: the batches of
// scheduler/include/rpa/scheduler/pipeline_bench.h with the serial and the
// pipelined schedule, on the tpu7x preset (simulated) and on the host.
//
//   BM_DevicePipeline/<batch>/<schedule>  wall time = the simulator's speed;
//       counters: makespan_us (simulated), overlap_efficiency, mbu, mfu.
//   BM_HostPipeline/<schedule>            the host's staged decode pipeline;
//       wall time is the makespan; counters: overlap_efficiency, mbu, mfu.
// `rpa bench pipeline` prints the same figures as a table or JSON.

#include "rpa/scheduler/pipeline_bench.h"

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

[[noreturn]] void Die(const rpa::Status& status) {
  std::fprintf(stderr, "rpa_pipeline_bench: %s\n", status.ToString().c_str());
  std::exit(1);
}

void Report(benchmark::State& state, const rpa::scheduler::PipelineRow& row) {
  state.counters["makespan_us"] = row.makespan_us;
  state.counters["overlap_efficiency"] = row.overlap_efficiency;
  state.counters["mbu"] = row.mbu;
  state.counters["mfu"] = row.mfu;
}

void BM_DevicePipeline(benchmark::State& state, const char* batch,
                       const char* schedule) {
  rpa::scheduler::PipelineRow last;
  for (auto _ : state) {
    rpa::scheduler::PipelineBenchOptions options;
    options.host = false;
    options.filter = batch;
    auto rows = rpa::scheduler::RunPipelineBench(options);
    if (!rows.ok()) Die(rows.status());
    for (const auto& row : *rows) {
      if (row.schedule == schedule) last = row;
    }
  }
  Report(state, last);
}

void BM_HostPipeline(benchmark::State& state, const char* schedule) {
  rpa::scheduler::PipelineRow last;
  for (auto _ : state) {
    rpa::scheduler::PipelineBenchOptions options;
    options.device = "";
    options.host_repetitions = 1;
    auto rows = rpa::scheduler::RunPipelineBench(options);
    if (!rows.ok()) Die(rows.status());
    for (const auto& row : *rows) {
      if (row.schedule == schedule) last = row;
    }
    state.SetIterationTime(last.makespan_us * 1e-6);
  }
  Report(state, last);
}

BENCHMARK_CAPTURE(BM_DevicePipeline, decode_64x2048 / serial, "decode_64x2048",
                  "serial")
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);
BENCHMARK_CAPTURE(BM_DevicePipeline, decode_64x2048 / pipelined,
                  "decode_64x2048", "pipelined")
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);
BENCHMARK_CAPTURE(BM_DevicePipeline, prefill_1x2048 / serial, "prefill_1x2048",
                  "serial")
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);
BENCHMARK_CAPTURE(BM_DevicePipeline, prefill_1x2048 / pipelined,
                  "prefill_1x2048", "pipelined")
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);
BENCHMARK_CAPTURE(BM_HostPipeline, serial, "serial")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3);
BENCHMARK_CAPTURE(BM_HostPipeline, pipelined, "pipelined")
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
