// rpa_runtime_bench's rows for the executor and Channel (runtime_bench.cc has
// the program's overview and the baselines): yield, spawn + join from a task
// or a thread, cross-worker Channel hand-off, and wake-up of a parked
// executor by a foreign thread.

#include <benchmark/benchmark.h>
#include <malloc.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "runtime_bench.h"

#include "rpa/runtime/channel.h"
#include "rpa/runtime/check.h"
#include "rpa/runtime/executor.h"
#include "rpa/runtime/internal/spin_lock.h"
#include "rpa/runtime/join_handle.h"
#include "rpa/runtime/status.h"
#include "rpa/runtime/this_fiber.h"

namespace rpa::runtime::bench {
namespace {

using ::rpa::runtime::internal::CpuRelax;

// Heap bytes in use (glibc's mallinfo2), in MiB.
double HeapInUseMb() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<double>(info.uordblks + info.hblkhd) / (1024 * 1024);
}

// Two tasks meet here; each spins without suspending until the other
// arrived, so neither gives up its worker and they necessarily run on two
// different workers. False (for both) when the other did not come in time:
// the executor did not hand the second task to the idle worker.
class Rendezvous {
 public:
  bool Meet() {
    const int before = arrived_.fetch_add(1, std::memory_order_acq_rel);
    if (before < 0) return false;  // the first one gave up
    if (before == 1) return true;
    const std::int64_t deadline_ns = NowNs() + 2'000'000'000;
    for (;;) {
      if (arrived_.load(std::memory_order_acquire) == 2) return true;
      if (NowNs() > deadline_ns) {
        int expected = 1;
        if (arrived_.compare_exchange_strong(expected, -1000,
                                             std::memory_order_acq_rel)) {
          return false;
        }
      }
      CpuRelax();
    }
  }

 private:
  std::atomic<int> arrived_{0};
};

// Two tasks on one worker; one iteration: the driver yields to the partner,
// which yields back (two yields).
void BM_Executor_Yield(benchmark::State& state) {
  std::unique_ptr<Executor> executor = MakeExecutor(state, 1);
  if (executor == nullptr) return;
  double elapsed_ns = 0;
  RunInTask(*executor, [&] {
    std::atomic<bool> stop{false};
    JoinHandle<void> partner = executor->Spawn([&stop] {
      while (!stop.load(std::memory_order_relaxed)) this_fiber::Yield();
    });
    WallTimer timer;
    for (auto _ : state) this_fiber::Yield();
    elapsed_ns = timer.ElapsedNs();
    stop.store(true, std::memory_order_relaxed);
    RPA_CHECK(partner.Join().ok());
  });
  SetNsPerOp(state, "ns_per_yield", elapsed_ns, 2);
  ShutdownOrFail(state, *executor);
}
BENCHMARK(BM_Executor_Yield)->UseRealTime();

enum class SpawnFrom {
  kTask,         // Spawn + Join in a task (Join runs a pending task inline)
  kTaskBatch64,  // 64 Spawns, a Yield (queued tasks get a turn), 64 Joins
  kThread0,      // the caller's thread, num_workers == 0 (Join drives it)
  kThread1,      // a foreign thread, num_workers == 1 (Join blocks)
};

void BM_Executor_SpawnJoin(benchmark::State& state, SpawnFrom from) {
  std::unique_ptr<Executor> executor =
      MakeExecutor(state, from == SpawnFrom::kThread0 ? 0 : 1);
  if (executor == nullptr) return;
  Executor& ex = *executor;
  const double heap_before_mb = HeapInUseMb();
  double elapsed_ns = 0;
  double tasks_per_iteration = 1;
  switch (from) {
    case SpawnFrom::kTask:
      RunInTask(ex, [&] {
        WallTimer timer;
        for (auto _ : state) {
          Status status = ex.Spawn([] {}).Join();
          benchmark::DoNotOptimize(status);
        }
        elapsed_ns = timer.ElapsedNs();
      });
      break;
    case SpawnFrom::kTaskBatch64:
      tasks_per_iteration = 64;
      RunInTask(ex, [&] {
        std::array<JoinHandle<void>, 64> handles;
        WallTimer timer;
        for (auto _ : state) {
          for (JoinHandle<void>& handle : handles) handle = ex.Spawn([] {});
          this_fiber::Yield();
          for (JoinHandle<void>& handle : handles) {
            Status status = handle.Join();
            benchmark::DoNotOptimize(status);
          }
        }
        elapsed_ns = timer.ElapsedNs();
      });
      break;
    case SpawnFrom::kThread0:
    case SpawnFrom::kThread1: {
      WallTimer timer;
      for (auto _ : state) {
        Status status = ex.Spawn([] {}).Join();
        benchmark::DoNotOptimize(status);
      }
      elapsed_ns = timer.ElapsedNs();
      break;
    }
  }
  SetNsPerOp(state, "ns_per_task", elapsed_ns, tasks_per_iteration);
  // Diagnostic: heap still held, before Shutdown, by tasks that finished
  // (should stay near 0).
  state.counters["heap_growth_mb"] = HeapInUseMb() - heap_before_mb;
  ShutdownOrFail(state, ex);
}
BENCHMARK_CAPTURE(BM_Executor_SpawnJoin, in_task, SpawnFrom::kTask)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Executor_SpawnJoin, batch64_in_task,
                  SpawnFrom::kTaskBatch64)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Executor_SpawnJoin, from_thread_0_workers,
                  SpawnFrom::kThread0)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Executor_SpawnJoin, from_thread_1_worker,
                  SpawnFrom::kThread1)
    ->UseRealTime();

enum class HandOff {
  kPingPong,  // capacity 1 each way; one iteration = two hand-offs
  kStream,    // one way through capacity 64; one iteration = one value
};

// Two tasks pinned to the two workers by a Rendezvous; the benchmark loop
// runs in the driver.
void BM_Channel_CrossWorkerHandOff(benchmark::State& state, HandOff mode) {
  std::unique_ptr<Executor> executor = MakeExecutor(state, 2);
  if (executor == nullptr) return;
  Rendezvous rendezvous;
  Channel<std::int64_t> ping(mode == HandOff::kPingPong ? 1 : 64);
  Channel<std::int64_t> pong(1);
  std::atomic<std::int64_t> drained_ns{0};
  std::atomic<int> peer_worker{-1};
  JoinHandle<void> peer = executor->Spawn([&] {
    if (!rendezvous.Meet()) return;
    peer_worker.store(this_fiber::WorkerIndex(), std::memory_order_relaxed);
    while (std::optional<std::int64_t> value = ping.Receive()) {
      if (mode == HandOff::kPingPong) RPA_CHECK(pong.Send(*value).ok());
    }
    drained_ns.store(NowNs(), std::memory_order_relaxed);
  });
  const std::uint64_t parks_before = executor->Stats().parks;
  double elapsed_ns = 0;
  bool met = false;
  int driver_worker = -1;
  RunInTask(*executor, [&] {
    met = rendezvous.Meet();
    driver_worker = this_fiber::WorkerIndex();
    if (!met) {
      ping.Close();
      return;
    }
    const std::int64_t start_ns = NowNs();
    std::int64_t i = 0;
    for (auto _ : state) {
      RPA_CHECK(ping.Send(++i).ok());
      if (mode == HandOff::kPingPong) RPA_CHECK(pong.Receive().has_value());
    }
    ping.Close();
    if (mode == HandOff::kPingPong) {
      elapsed_ns = static_cast<double>(NowNs() - start_ns);
    } else {
      RPA_CHECK(peer.Join().ok());  // ends when every value was received
      elapsed_ns = static_cast<double>(
          drained_ns.load(std::memory_order_relaxed) - start_ns);
    }
  });
  if (peer.valid()) RPA_CHECK(peer.Join().ok());
  if (!met) {
    state.SkipWithError("the two tasks did not run on two workers within 2 s");
  } else {
    RPA_CHECK(driver_worker != peer_worker.load(std::memory_order_relaxed));
    const double per_iteration = mode == HandOff::kPingPong ? 2 : 1;
    SetNsPerOp(state, per_iteration == 2 ? "ns_per_handoff" : "ns_per_item",
               elapsed_ns, per_iteration);
    // Diagnostic: how often a worker went to sleep (a park costs a wake-up).
    state.counters["parks_per_op"] =
        static_cast<double>(executor->Stats().parks - parks_before) /
        (static_cast<double>(state.iterations()) * per_iteration);
  }
  ShutdownOrFail(state, *executor);
}
BENCHMARK_CAPTURE(BM_Channel_CrossWorkerHandOff, ping_pong, HandOff::kPingPong)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Channel_CrossWorkerHandOff, stream, HandOff::kStream)
    ->UseRealTime();

// One sample: after kIdleGap (the workers park), this thread spawns a task
// that records when it started; latency from before Spawn to that moment.
void BM_Executor_ForeignWakeup(benchmark::State& state) {
  std::unique_ptr<Executor> executor = MakeExecutor(state, 2);
  if (executor == nullptr) return;
  std::vector<std::int64_t> samples;
  std::vector<std::int64_t> spawn_call_ns;  // diagnostic: the submitter's cost
  samples.reserve(kWakeupSamples);
  spawn_call_ns.reserve(kWakeupSamples);
  const std::uint64_t parks_before = executor->Stats().parks;
  for (auto _ : state) {
    std::this_thread::sleep_for(kIdleGap);
    std::int64_t started_ns = 0;
    const std::int64_t submit_ns = NowNs();
    JoinHandle<void> handle =
        executor->Spawn([&started_ns] { started_ns = NowNs(); });
    spawn_call_ns.push_back(NowNs() - submit_ns);
    RPA_CHECK(handle.Join().ok());
    samples.push_back(started_ns - submit_ns);
    state.SetIterationTime(static_cast<double>(samples.back()) * 1e-9);
  }
  state.counters["parks_per_sample"] =
      static_cast<double>(executor->Stats().parks - parks_before) /
      static_cast<double>(std::max<std::size_t>(1, samples.size()));
  std::sort(spawn_call_ns.begin(), spawn_call_ns.end());
  if (!spawn_call_ns.empty()) {
    state.counters["p50_spawn_call_ns"] =
        static_cast<double>(spawn_call_ns[spawn_call_ns.size() / 2]);
  }
  SetLatencyCounters(state, std::move(samples));
  ShutdownOrFail(state, *executor);
}
BENCHMARK(BM_Executor_ForeignWakeup)
    ->UseManualTime()
    ->Iterations(kWakeupSamples);

}  // namespace
}  // namespace rpa::runtime::bench
