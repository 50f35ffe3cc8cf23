// rpa_runtime_bench's executor overhead rows (runtime_bench.cc has the
// program's overview and the baselines): 20'000 calibrated ~1 us work units
// as tasks, against the same units on plain threads, with JoinHandles or
// detached tasks and a WaitGroup.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "runtime_bench.h"

#include "rpa/runtime/check.h"
#include "rpa/runtime/executor.h"
#include "rpa/runtime/internal/spin_lock.h"
#include "rpa/runtime/join_handle.h"
#include "rpa/runtime/wait_group.h"

namespace rpa::runtime::bench {
namespace {

using ::rpa::runtime::internal::CpuRelax;

// Calibrated busy work: a serial LCG chain (the compiler cannot shorten it).
std::uint64_t Spin(std::uint64_t iterations, std::uint64_t seed) {
  for (std::uint64_t i = 0; i < iterations; ++i) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
  }
  return seed;
}

// Spin() iterations that take about 1 us on this machine (best of 20 probes).
std::uint64_t SpinIterationsPerMicrosecond() {
  static const std::uint64_t kIterations = [] {
    constexpr std::uint64_t kProbe = 1'000'000;
    std::int64_t best_ns = std::numeric_limits<std::int64_t>::max();
    for (std::uint64_t trial = 0; trial < 20; ++trial) {
      const std::int64_t start_ns = NowNs();
      benchmark::DoNotOptimize(Spin(kProbe, trial));
      best_ns = std::min(best_ns, NowNs() - start_ns);
    }
    return std::max<std::uint64_t>(
        1, kProbe * 1000 / static_cast<std::uint64_t>(best_ns));
  }();
  return kIterations;
}

constexpr int kOverheadTasks = 20'000;  // of ~1 us each: ~10 ms on 2 cores

// The baseline: `num_threads` plain threads, each running its share of the
// work units in a loop; wall time from the start signal to the last end.
double RunOnPlainThreads(std::uint64_t spins, int num_threads) {
  std::atomic<bool> go{false};
  std::atomic<std::int64_t> last_end_ns{0};
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(num_threads));
  for (int t = 0; t < num_threads; ++t) {
    threads.emplace_back([&] {
      while (!go.load(std::memory_order_acquire)) CpuRelax();
      for (int i = 0; i < kOverheadTasks / num_threads; ++i) {
        benchmark::DoNotOptimize(Spin(spins, static_cast<std::uint64_t>(i)));
      }
      const std::int64_t end_ns = NowNs();
      std::int64_t seen = last_end_ns.load();
      while (seen < end_ns &&
             !last_end_ns.compare_exchange_weak(seen, end_ns)) {
      }
    });
  }
  std::this_thread::sleep_for(microseconds(200));  // all spin on `go`
  const std::int64_t start_ns = NowNs();
  go.store(true, std::memory_order_release);
  for (std::thread& thread : threads) thread.join();
  return static_cast<double>(last_end_ns.load() - start_ns);
}

enum class OverheadPattern {
  kJoinHandles,  // keep every JoinHandle, join them in spawn order
  kWaitGroup,    // detach every task; each calls Done() on one WaitGroup
};

// The same units as tasks: a root task spawns them all, then waits for them
// (its Joins run a task inline when they can take it back from the queue;
// another worker steals meanwhile).
double RunOnExecutor(Executor& executor, std::uint64_t spins,
                     OverheadPattern pattern) {
  double elapsed_ns = 0;
  RunInTask(executor, [&] {
    WallTimer timer;
    if (pattern == OverheadPattern::kJoinHandles) {
      std::vector<JoinHandle<void>> handles;
      handles.reserve(kOverheadTasks);
      for (int i = 0; i < kOverheadTasks; ++i) {
        handles.push_back(executor.Spawn([spins, i] {
          benchmark::DoNotOptimize(Spin(spins, static_cast<std::uint64_t>(i)));
        }));
      }
      for (JoinHandle<void>& handle : handles) RPA_CHECK(handle.Join().ok());
    } else {
      WaitGroup done(kOverheadTasks);
      for (int i = 0; i < kOverheadTasks; ++i) {
        executor
            .Spawn([spins, i, &done] {
              benchmark::DoNotOptimize(
                  Spin(spins, static_cast<std::uint64_t>(i)));
              done.Done();
            })
            .Detach();
      }
      done.Wait();
    }
    elapsed_ns = timer.ElapsedNs();
  });
  return elapsed_ns;
}

// Argument: workers (and plain threads). 2 is the target; 1 splits
// the per-task cost from the cross-worker (stealing) cost. One iteration:
// the plain baseline, then the executor, alternating so both see the same
// machine; each side keeps its best (least disturbed) time.
void ExecutorOverhead(benchmark::State& state, OverheadPattern pattern) {
  const int num_workers = static_cast<int>(state.range(0));
  const std::uint64_t spins = SpinIterationsPerMicrosecond();
  std::unique_ptr<Executor> executor = MakeExecutor(state, num_workers);
  if (executor == nullptr) return;
  double best_plain_ns = std::numeric_limits<double>::infinity();
  double best_executor_ns = std::numeric_limits<double>::infinity();
  const std::uint64_t steals_before = executor->Stats().steals;
  for (auto _ : state) {
    best_plain_ns =
        std::min(best_plain_ns, RunOnPlainThreads(spins, num_workers));
    best_executor_ns =
        std::min(best_executor_ns, RunOnExecutor(*executor, spins, pattern));
  }
  // One unit's duration on a plain thread, and the worker time each task
  // costs beyond it.
  state.counters["work_ns_per_task"] =
      best_plain_ns * num_workers / kOverheadTasks;
  state.counters["extra_cpu_ns_per_task"] =
      (best_executor_ns - best_plain_ns) * num_workers / kOverheadTasks;
  state.counters["overhead_pct"] = (best_executor_ns / best_plain_ns - 1) * 100;
  state.counters["steals_per_task"] =
      static_cast<double>(executor->Stats().steals - steals_before) /
      (static_cast<double>(state.iterations()) * kOverheadTasks);
  ShutdownOrFail(state, *executor);
}
void BM_Executor_Overhead1us(benchmark::State& state) {
  ExecutorOverhead(state, OverheadPattern::kJoinHandles);
}
BENCHMARK(BM_Executor_Overhead1us)
    ->ArgName("workers")
    ->Arg(2)
    ->Arg(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(25);

// The other common pattern: detached tasks counted down on a WaitGroup.
void BM_Executor_Overhead1usWaitGroup(benchmark::State& state) {
  ExecutorOverhead(state, OverheadPattern::kWaitGroup);
}
BENCHMARK(BM_Executor_Overhead1usWaitGroup)
    ->ArgName("workers")
    ->Arg(2)
    ->Arg(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(25);

}  // namespace
}  // namespace rpa::runtime::bench
