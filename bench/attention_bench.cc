// Google Benchmark of the attention kernels on the named workloads of
// scheduler/include/rpa/scheduler/attention_workloads.h (the same shapes as
// `rpa bench attention`): BM_Attention_<Shape>/threads:N.
//
// Counters: gbps and gflops (SPEC section 7 bytes and FLOPs over the
// measured wall time per Run), roofline_pct (the roofline floor over that
// time; the host roofline is measured once per thread count, in this
// process, before the first benchmark that needs it), bytes_processed.
// Threads: 1 runs the plan on the benchmark thread; N >= 2 on a
// runtime::Executor with N workers (PlanOptions::parallelism = N). The plan
// is made outside the timed loop.

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "rpa/attention/plan.h"
#include "rpa/runtime/executor.h"
#include "rpa/scheduler/attention_workloads.h"
#include "rpa/scheduler/roofline.h"

namespace {

using rpa::scheduler::AttentionWorkload;
using rpa::scheduler::HostRoofline;

[[noreturn]] void Die(const rpa::Status& status) {
  std::fprintf(stderr, "rpa_attention_bench: %s\n", status.ToString().c_str());
  std::exit(1);
}

const HostRoofline& RooflineFor(int threads) {
  static std::map<int, HostRoofline> rooflines;
  auto it = rooflines.find(threads);
  if (it == rooflines.end()) {
    auto roof = rpa::scheduler::MeasureHostRoofline({.threads = threads});
    if (!roof.ok()) Die(roof.status());
    it = rooflines.emplace(threads, *roof).first;
  }
  return it->second;
}

rpa::runtime::Executor* ExecutorFor(int threads) {
  static std::map<int, std::unique_ptr<rpa::runtime::Executor>> executors;
  if (threads < 2) return nullptr;
  auto it = executors.find(threads);
  if (it == executors.end()) {
    auto executor = rpa::runtime::Executor::Create({.num_workers = threads});
    if (!executor.ok()) Die(executor.status());
    it = executors.emplace(threads, std::move(*executor)).first;
  }
  return it->second.get();
}

// Google Benchmark calls a benchmark function several times (to size its
// iteration count); the workload (up to 1 GiB of cache) is built once and
// kept until another one is needed.
AttentionWorkload& WorkloadFor(const std::string& name) {
  static std::unique_ptr<AttentionWorkload> current;
  if (current == nullptr || current->name() != name) {
    current.reset();
    auto workload = AttentionWorkload::Create(name);
    if (!workload.ok()) Die(workload.status());
    current = std::move(*workload);
  }
  return *current;
}

void BM_Attention(benchmark::State& state, const std::string& name) {
  const int threads = static_cast<int>(state.range(0));
  const HostRoofline& roofline = RooflineFor(threads);
  rpa::runtime::Executor* executor = ExecutorFor(threads);
  AttentionWorkload& workload = WorkloadFor(name);
  rpa::attention::PlanOptions options;
  options.parallelism = threads;
  auto plan = rpa::attention::AttentionPlan::Create(
      workload.metadata(), workload.cache(), workload.params(), options);
  if (!plan.ok()) Die(plan.status());
  const rpa::attention::BatchTensors tensors = workload.tensors();
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    rpa::Status status = rpa::attention::Run(*plan, tensors, executor);
    if (!status.ok()) Die(status);
  }
  const double seconds_per_run =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count() /
      static_cast<double>(state.iterations());
  const rpa::attention::BatchCost& cost = plan->cost();
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(cost.bytes()));
  state.counters["gbps"] =
      rpa::scheduler::GigabytesPerSecond(cost, seconds_per_run);
  state.counters["gflops"] =
      rpa::scheduler::GigaflopsPerSecond(cost, seconds_per_run);
  state.counters["roofline_pct"] =
      rpa::scheduler::RooflinePercent(cost, roofline, seconds_per_run);
}

}  // namespace

int main(int argc, char** argv) {
  for (const auto& info : rpa::scheduler::AttentionWorkloads()) {
    std::string name(info.name);
    benchmark::RegisterBenchmark(
        ("BM_Attention_" + std::string(info.bench_name)).c_str(), BM_Attention,
        name)
        ->ArgName("threads")
        ->Arg(1)
        ->Arg(2)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
