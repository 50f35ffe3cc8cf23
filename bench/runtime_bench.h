#pragma once

// What the rpa_runtime_bench files share (runtime_bench.cc: the baselines;
// runtime_bench_executor.cc: the executor and Channel rows;
// runtime_bench_overhead.cc: the 1 us overhead rows): the wall clock, the
// counter helpers, the executor set-up and the wake-up sample parameters.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "rpa/runtime/check.h"
#include "rpa/runtime/executor.h"
#include "rpa/runtime/join_handle.h"
#include "rpa/runtime/status.h"

namespace rpa::runtime::bench {

using std::chrono::microseconds;

inline std::int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Wall-clock nanoseconds from construction; the benchmark's own timer is not
// used for the counters because several loops run on a worker thread.
class WallTimer {
 public:
  WallTimer() : start_ns_(NowNs()) {}
  double ElapsedNs() const { return static_cast<double>(NowNs() - start_ns_); }

 private:
  std::int64_t start_ns_;
};

inline void SetNsPerOp(benchmark::State& state, const char* name,
                       double elapsed_ns, double ops_per_iteration) {
  const double ops =
      static_cast<double>(state.iterations()) * ops_per_iteration;
  if (ops > 0) state.counters[name] = elapsed_ns / ops;
}

// p50 / p99 / max of latency samples, as counters in nanoseconds.
inline void SetLatencyCounters(benchmark::State& state,
                               std::vector<std::int64_t> samples_ns) {
  if (samples_ns.empty()) return;
  std::sort(samples_ns.begin(), samples_ns.end());
  const std::size_t n = samples_ns.size();
  state.counters["p50_ns"] = static_cast<double>(samples_ns[n / 2]);
  state.counters["p99_ns"] =
      static_cast<double>(samples_ns[std::min(n - 1, n * 99 / 100)]);
  state.counters["max_ns"] = static_cast<double>(samples_ns[n - 1]);
}

inline std::unique_ptr<Executor> MakeExecutor(benchmark::State& state,
                                              int num_workers) {
  ExecutorOptions options;
  options.num_workers = num_workers;
  StatusOr<std::unique_ptr<Executor>> executor = Executor::Create(options);
  if (!executor.ok()) {
    state.SkipWithError(executor.status().ToString().c_str());
    return nullptr;
  }
  return std::move(*executor);
}

inline void ShutdownOrFail(benchmark::State& state, Executor& executor) {
  Status status = executor.Shutdown();
  if (!status.ok()) state.SkipWithError(status.ToString().c_str());
}

// Runs `body` as one task on `executor` and waits for it from this thread.
// The benchmark loop may run inside it: a started task never changes worker,
// so the benchmark's timer starts and stops on one thread.
template <typename F>
void RunInTask(Executor& executor, F&& body) {
  Status status = executor.Spawn(std::forward<F>(body)).Join();
  RPA_CHECK_MSG(status.ok(), status.ToString().c_str());
}

// Idle gap before each wake-up sample: far longer than the executor's
// ExecutorOptions::spin (20 us), so its workers are parked.
inline constexpr microseconds kIdleGap{300};
inline constexpr int kWakeupSamples = 2000;

}  // namespace rpa::runtime::bench
