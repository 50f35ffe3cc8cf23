// Benchmarks of the runtime (executor, fibers, Channel) with their baselines
// measured in the same run:
//
//   Boost.Context  raw fiber switch round trip (the floor of any switch)
//   Boost.Fiber    yield between two fibers; launch + join of an empty fiber
//   io_uring       NOP submitted and reaped one at a time, and 32 per submit
//   std::thread    condition_variable ping-pong and wake-up of a parked
//                  thread; 1 us work units on plain threads (no executor)
//
// Every row reports its figure as a counter in nanoseconds per operation
// (ns_per_yield, ns_per_task, ...), measured on the wall clock; latency rows
// report p50_ns / p99_ns over many samples. After the run,
// runtime_bench_report.cc prints each rpa figure next to its baseline and the
// target of the runtime issue, taking the best (minimum) repetition of each:
// the machine is shared, so noise only ever adds time.
//
// Run: rpa_runtime_bench [--rpa_summary_out=FILE] [benchmark flags]
// Five repetitions are the default (--benchmark_repetitions=N overrides);
// the whole default run takes about a minute.

#include <benchmark/benchmark.h>
#include <liburing.h>
#include <malloc.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <boost/context/fiber.hpp>
#include <boost/fiber/fiber.hpp>
#include <boost/fiber/operations.hpp>

#include "rpa/runtime/channel.h"
#include "rpa/runtime/check.h"
#include "rpa/runtime/executor.h"
#include "rpa/runtime/internal/spin_lock.h"
#include "rpa/runtime/join_handle.h"
#include "rpa/runtime/status.h"
#include "rpa/runtime/this_fiber.h"
#include "rpa/runtime/wait_group.h"

namespace rpa::runtime {
namespace {

using std::chrono::microseconds;

std::int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

using ::rpa::runtime::internal::CpuRelax;

// Wall-clock nanoseconds from construction; the benchmark's own timer is not
// used for the counters because several loops run on a worker thread.
class WallTimer {
 public:
  WallTimer() : start_ns_(NowNs()) {}
  double ElapsedNs() const { return static_cast<double>(NowNs() - start_ns_); }

 private:
  std::int64_t start_ns_;
};

void SetNsPerOp(benchmark::State& state, const char* name, double elapsed_ns,
                double ops_per_iteration) {
  const double ops =
      static_cast<double>(state.iterations()) * ops_per_iteration;
  if (ops > 0) state.counters[name] = elapsed_ns / ops;
}

// p50 / p99 / max of latency samples, as counters in nanoseconds.
void SetLatencyCounters(benchmark::State& state,
                        std::vector<std::int64_t> samples_ns) {
  if (samples_ns.empty()) return;
  std::sort(samples_ns.begin(), samples_ns.end());
  const std::size_t n = samples_ns.size();
  state.counters["p50_ns"] = static_cast<double>(samples_ns[n / 2]);
  state.counters["p99_ns"] =
      static_cast<double>(samples_ns[std::min(n - 1, n * 99 / 100)]);
  state.counters["max_ns"] = static_cast<double>(samples_ns[n - 1]);
}

// Heap bytes in use (glibc's mallinfo2), in MiB.
double HeapInUseMb() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<double>(info.uordblks + info.hblkhd) / (1024 * 1024);
}

std::unique_ptr<Executor> MakeExecutor(benchmark::State& state,
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

void ShutdownOrFail(benchmark::State& state, Executor& executor) {
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

// ---------------------------------------------------------------------------
// Baselines.

namespace ctx = boost::context;

// One iteration: main -> partner -> main (two raw switches).
void BM_BoostContext_SwitchRoundTrip(benchmark::State& state) {
  bool stop = false;
  ctx::fiber partner([&stop](ctx::fiber&& main) {
    while (!stop) main = std::move(main).resume();
    return std::move(main);
  });
  WallTimer timer;
  for (auto _ : state) partner = std::move(partner).resume();
  SetNsPerOp(state, "ns_per_round_trip", timer.ElapsedNs(), 1);
  stop = true;
  partner = std::move(partner).resume();
}
BENCHMARK(BM_BoostContext_SwitchRoundTrip)->UseRealTime();

// One iteration: the main fiber yields to the partner, which yields back.
void BM_BoostFiber_Yield(benchmark::State& state) {
  bool stop = false;
  boost::fibers::fiber partner([&stop] {
    while (!stop) boost::this_fiber::yield();
  });
  WallTimer timer;
  for (auto _ : state) boost::this_fiber::yield();
  SetNsPerOp(state, "ns_per_yield", timer.ElapsedNs(), 2);
  stop = true;
  partner.join();
}
BENCHMARK(BM_BoostFiber_Yield)->UseRealTime();

void BM_BoostFiber_LaunchJoin(benchmark::State& state) {
  WallTimer timer;
  for (auto _ : state) {
    boost::fibers::fiber fiber([] {});
    fiber.join();
  }
  SetNsPerOp(state, "ns_per_task", timer.ElapsedNs(), 1);
}
BENCHMARK(BM_BoostFiber_LaunchJoin)->UseRealTime();

// NOPs through a ring, `batch` per io_uring_submit_and_wait.
void IoUringNops(benchmark::State& state, unsigned batch) {
  io_uring ring{};
  if (int rc = io_uring_queue_init(64, &ring, 0); rc < 0) {
    state.SkipWithError("io_uring_queue_init failed");
    return;
  }
  WallTimer timer;
  for (auto _ : state) {
    for (unsigned i = 0; i < batch; ++i) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      RPA_CHECK(sqe != nullptr);
      io_uring_prep_nop(sqe);
    }
    RPA_CHECK(io_uring_submit_and_wait(&ring, batch) ==
              static_cast<int>(batch));
    unsigned head = 0;
    unsigned seen = 0;
    io_uring_cqe* cqe = nullptr;
    io_uring_for_each_cqe(&ring, head, cqe) {
      RPA_CHECK(cqe->res == 0);
      ++seen;
    }
    io_uring_cq_advance(&ring, seen);
  }
  SetNsPerOp(state, "ns_per_nop", timer.ElapsedNs(), batch);
  state.SetItemsProcessed(state.iterations() * batch);
  io_uring_queue_exit(&ring);
}
void BM_IoUring_Nop(benchmark::State& state) { IoUringNops(state, 1); }
void BM_IoUring_NopBatched(benchmark::State& state) { IoUringNops(state, 32); }
BENCHMARK(BM_IoUring_Nop)->UseRealTime();
BENCHMARK(BM_IoUring_NopBatched)->UseRealTime();

// One iteration: this thread hands the turn to a partner thread and waits
// for it back (two hand-offs through mutex + condition_variable).
void BM_CondVar_HandOff(benchmark::State& state) {
  std::mutex mu;
  std::condition_variable to_partner;
  std::condition_variable to_main;
  bool partner_turn = false;
  bool stop = false;
  std::thread partner([&] {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      to_partner.wait(lock, [&] { return partner_turn || stop; });
      if (stop) return;
      partner_turn = false;
      to_main.notify_one();
    }
  });
  WallTimer timer;
  for (auto _ : state) {
    std::unique_lock<std::mutex> lock(mu);
    partner_turn = true;
    to_partner.notify_one();
    to_main.wait(lock, [&] { return !partner_turn; });
  }
  SetNsPerOp(state, "ns_per_handoff", timer.ElapsedNs(), 2);
  {
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
  }
  to_partner.notify_one();
  partner.join();
}
BENCHMARK(BM_CondVar_HandOff)->UseRealTime();

// Idle gap before each wake-up sample: far longer than the executor's
// ExecutorOptions::spin (20 us), so its workers are parked.
constexpr microseconds kIdleGap{300};
constexpr int kWakeupSamples = 2000;

// One sample: a thread parked on a condition variable is notified by this
// thread; latency from the notify call to the moment the thread runs.
void BM_CondVar_ForeignWakeup(benchmark::State& state) {
  std::mutex mu;
  std::condition_variable wake;
  std::condition_variable done;
  bool go = false;
  bool stop = false;
  std::int64_t started_ns = 0;
  std::thread sleeper([&] {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      wake.wait(lock, [&] { return go || stop; });
      if (stop) return;
      started_ns = NowNs();
      go = false;
      done.notify_one();
    }
  });
  std::vector<std::int64_t> samples;
  samples.reserve(kWakeupSamples);
  for (auto _ : state) {
    std::this_thread::sleep_for(kIdleGap);
    const std::int64_t submit_ns = NowNs();
    std::unique_lock<std::mutex> lock(mu);
    go = true;
    wake.notify_one();
    done.wait(lock, [&] { return !go; });
    samples.push_back(started_ns - submit_ns);
    state.SetIterationTime(static_cast<double>(samples.back()) * 1e-9);
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
  }
  wake.notify_one();
  sleeper.join();
  SetLatencyCounters(state, std::move(samples));
}
BENCHMARK(BM_CondVar_ForeignWakeup)
    ->UseManualTime()
    ->Iterations(kWakeupSamples);

// ---------------------------------------------------------------------------
// rpa rows.

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
}  // namespace rpa::runtime
