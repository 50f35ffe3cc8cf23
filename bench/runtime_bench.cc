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
// This file holds the baselines; runtime_bench_executor.cc the executor and
// Channel rows, runtime_bench_overhead.cc the 1 us overhead rows, and
// runtime_bench.h what they share. The rows register in that order (the
// order of the sources in bench/CMakeLists.txt), which is the listed order.
//
// Run: rpa_runtime_bench [--rpa_summary_out=FILE] [benchmark flags]
// Five repetitions are the default (--benchmark_repetitions=N overrides);
// the whole default run takes about a minute.

#include "runtime_bench.h"

#include <benchmark/benchmark.h>
#include <liburing.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include <boost/context/fiber.hpp>
#include <boost/fiber/fiber.hpp>
#include <boost/fiber/operations.hpp>

#include "rpa/runtime/check.h"

namespace rpa::runtime::bench {
namespace {

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

}  // namespace
}  // namespace rpa::runtime::bench
