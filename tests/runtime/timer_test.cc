// Timers in real time (over worker counts) and in virtual time (a
// zero-worker executor whose clock jumps; these tests never sleep).

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <vector>

#include "executor_fixture.h"

#include "rpa/runtime/channel.h"
#include "rpa/runtime/event.h"
#include "rpa/runtime/semaphore.h"
#include "rpa/runtime/this_fiber.h"
#include "rpa/runtime/wait_group.h"

namespace rpa::runtime {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;

using RealTimerTest = ExecutorTest;

TEST_P(RealTimerTest, SleepForWaitsAtLeastTheDurationWithoutBlockingTheWorker) {
  Executor& ex = Make();
  std::atomic<int> ticks{0};
  auto sleeper = ex.Spawn([] {
    const TimePoint start = this_fiber::Now();
    this_fiber::SleepFor(milliseconds(3));
    return this_fiber::Now() - start;
  });
  // Runs while the sleeper sleeps, on the same worker when there is one.
  auto ticker = ex.Spawn([&] {
    for (int i = 0; i < 100; ++i) {
      ticks.fetch_add(1);
      this_fiber::Yield();
    }
  });
  StatusOr<Duration> slept = sleeper.Join();
  ASSERT_TRUE(slept.ok());
  EXPECT_GE(*slept, milliseconds(3));
  EXPECT_LT(*slept, milliseconds(500));
  EXPECT_TRUE(ticker.Join().ok());
  EXPECT_EQ(ticks.load(), 100);
}

TEST_P(RealTimerTest, ManySleepersWakeInDeadlineOrderOnOneWorker) {
  Executor& ex = Make();
  std::vector<JoinHandle<TimePoint>> sleepers;
  for (int i = 0; i < 64; ++i) {
    sleepers.push_back(ex.Spawn([i] {
      this_fiber::SleepFor(microseconds(200 + 30 * (63 - i)));
      return this_fiber::Now();
    }));
  }
  for (auto& s : sleepers) ASSERT_TRUE(s.Join().ok());
}

TEST_P(RealTimerTest, SmallRingAppliesBackPressureInsteadOfFailing) {
  // 4 SQEs, so at most 7 timers in flight per worker; 64 sleepers all finish.
  Executor& ex = Make({.ring_entries = 4});
  std::vector<JoinHandle<void>> sleepers;
  for (int i = 0; i < 64; ++i) {
    sleepers.push_back(
        ex.Spawn([] { this_fiber::SleepFor(microseconds(300)); }));
  }
  for (auto& s : sleepers) EXPECT_TRUE(s.Join().ok());
}

TEST_P(RealTimerTest, FallbackBackendSleepsToo) {
  Executor& ex = Make({.io_backend = IoBackend::kThreads});
  EXPECT_EQ(ex.io_backend(), IoBackend::kThreads);
  auto sleeper = ex.Spawn([] {
    const TimePoint start = this_fiber::Now();
    this_fiber::SleepFor(milliseconds(2));
    return this_fiber::Now() - start;
  });
  StatusOr<Duration> slept = sleeper.Join();
  ASSERT_TRUE(slept.ok());
  EXPECT_GE(*slept, milliseconds(2));
}

RPA_INSTANTIATE_OVER_WORKERS(RealTimerTest);

class VirtualTimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto created = Executor::Create({.clock = ClockKind::kVirtual});
    ASSERT_TRUE(created.ok()) << created.status();
    ex_ = std::move(created).value();
    wall_start_ = std::chrono::steady_clock::now();
  }
  void TearDown() override {
    // Virtual time never sleeps: hours of simulated time take no wall time.
    EXPECT_LT(std::chrono::steady_clock::now() - wall_start_,
              std::chrono::seconds(2));
    if (ex_ != nullptr && expect_clean_) {
      EXPECT_TRUE(ex_->Shutdown().ok());
      ExecutorStats stats = ex_->Stats();
      EXPECT_EQ(stats.tasks_spawned, stats.tasks_completed);
    }
    ex_.reset();
  }
  static TimePoint At(Duration d) { return TimePoint(d); }

  std::unique_ptr<Executor> ex_;
  bool expect_clean_ = true;
  std::chrono::steady_clock::time_point wall_start_;
};

TEST_F(VirtualTimeTest, TimeStartsAtZeroAndJumpsToTheNextTimer) {
  EXPECT_EQ(ex_->Now(), At(Duration::zero()));
  std::vector<std::string> log;
  ex_->Spawn([&] {
       this_fiber::SleepFor(std::chrono::hours(3));
       log.push_back(
           "a@" + std::to_string(this_fiber::Now().time_since_epoch().count()));
     })
      .Detach();
  ex_->Spawn([&] {
       this_fiber::SleepFor(nanoseconds(5));
       log.push_back(
           "b@" + std::to_string(this_fiber::Now().time_since_epoch().count()));
       this_fiber::SleepUntil(At(nanoseconds(7)));
       log.push_back(
           "b@" + std::to_string(this_fiber::Now().time_since_epoch().count()));
     })
      .Detach();
  ASSERT_TRUE(ex_->Run().ok());
  EXPECT_EQ(log, (std::vector<std::string>{"b@5", "b@7", "a@10800000000000"}));
  EXPECT_EQ(ex_->Now(), At(std::chrono::hours(3)));
}

TEST_F(VirtualTimeTest, EqualDeadlinesWakeInSleepOrderAndRunsAreDeterministic) {
  auto simulate = [](Executor& ex) {
    std::vector<int> order;
    for (int i = 0; i < 20; ++i) {
      ex.Spawn([&order, i] {
          this_fiber::SleepFor(nanoseconds(100 * (i % 3)));
          order.push_back(i);
          this_fiber::SleepFor(nanoseconds(50));
          order.push_back(100 + i);
        }).Detach();
    }
    EXPECT_TRUE(ex.Run().ok());
    return order;
  };
  std::vector<int> first = simulate(*ex_);
  auto again = Executor::Create({.clock = ClockKind::kVirtual});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(first, simulate(**again));
  ASSERT_EQ(first.size(), 40u);
  // Deadline 0 (a yield) for i % 3 == 0 first, in spawn order.
  EXPECT_EQ(first[0], 0);
  EXPECT_EQ(first[1], 3);
}

TEST_F(VirtualTimeTest, DeadlockIsReportedInsteadOfHanging) {
  expect_clean_ = false;
  Event never;
  ex_->Spawn([&] { never.Wait(); }).Detach();
  ex_->Spawn([&] { never.Wait(); }).Detach();
  Status status = ex_->Run();
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("deadlock: 2 fibers blocked"),
            std::string::npos)
      << status;
  never.Set();  // unblocks them: the next Run finishes
  EXPECT_TRUE(ex_->Run().ok());
  EXPECT_TRUE(ex_->Shutdown().ok());
}

TEST_F(VirtualTimeTest, JoinFromTheCallerDrivesTheSimulation) {
  auto handle = ex_->Spawn([] {
    this_fiber::SleepFor(std::chrono::seconds(10));
    return this_fiber::Now();
  });
  StatusOr<TimePoint> woke = handle.Join();
  ASSERT_TRUE(woke.ok());
  EXPECT_EQ(*woke, At(std::chrono::seconds(10)));
}

TEST_F(VirtualTimeTest, RunUntilIdleDoesNotAdvanceTime) {
  bool woke = false;
  ex_->Spawn([&] {
       this_fiber::SleepFor(nanoseconds(10));
       woke = true;
     })
      .Detach();
  ASSERT_TRUE(ex_->RunUntilIdle().ok());
  EXPECT_FALSE(woke);
  EXPECT_EQ(ex_->Now(), At(Duration::zero()));
  ASSERT_TRUE(ex_->Run().ok());
  EXPECT_TRUE(woke);
}

// A discrete-event simulation written as ordinary tasks: two DMA engines move
// pages into a buffer (latency + bytes / bandwidth each), a compute unit
// consumes a page once its bytes landed (a byte-counting semaphore) and
// takes a fixed time per page. The pipeline overlaps: total time is the
// known closed form.
TEST_F(VirtualTimeTest, DmaAndComputePipelineHasTheExpectedMakespan) {
  constexpr int kPages = 16;
  constexpr std::uint64_t kPageBytes = 4096;
  constexpr auto kDmaLatency = nanoseconds(500);
  constexpr auto kDmaPerPage = nanoseconds(1000);  // 4096 B at ~4 GB/s
  constexpr auto kComputePerPage = nanoseconds(800);
  Semaphore landed(0);
  Channel<int> work(kPages);
  for (int i = 0; i < kPages; ++i) ASSERT_TRUE(work.TrySend(std::move(i)).ok());
  work.Close();
  WaitGroup engines;
  for (int engine = 0; engine < 2; ++engine) {
    engines.Add();
    ex_->Spawn([&] {
         while (auto page = work.Receive()) {
           this_fiber::SleepFor(kDmaLatency + kDmaPerPage);
           landed.Release(kPageBytes);
         }
         engines.Done();
       })
        .Detach();
  }
  auto compute = ex_->Spawn([&] {
    for (int page = 0; page < kPages; ++page) {
      landed.Acquire(kPageBytes);
      this_fiber::SleepFor(kComputePerPage);
    }
    engines.Wait();
    return this_fiber::Now();
  });
  StatusOr<TimePoint> end = compute.Join();
  ASSERT_TRUE(end.ok());
  // Two engines deliver a pair of pages every 1500 ns; compute (800 ns a
  // page, 1600 per pair) is the bottleneck after the first pair lands:
  // 1500 + 16 * 800.
  EXPECT_EQ(end->time_since_epoch(), nanoseconds(1500 + kPages * 800));
}

}  // namespace
}  // namespace rpa::runtime
