#include "rpa/runtime/executor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "executor_fixture.h"

#include "rpa/runtime/channel.h"
#include "rpa/runtime/check.h"
#include "rpa/runtime/event.h"
#include "rpa/runtime/this_fiber.h"
#include "rpa/runtime/wait_group.h"

namespace rpa::runtime {
namespace {

TEST(ExecutorOptionsTest, InvalidOptionsNameTheField) {
  auto bad = Executor::Create({.num_workers = -1});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("num_workers"), std::string::npos);
  auto virtual_threads =
      Executor::Create({.num_workers = 2, .clock = ClockKind::kVirtual});
  ASSERT_FALSE(virtual_threads.ok());
  EXPECT_NE(virtual_threads.status().message().find("kVirtual"),
            std::string::npos);
  auto ring = Executor::Create({.ring_entries = 100});
  ASSERT_FALSE(ring.ok());
  EXPECT_NE(ring.status().message().find("ring_entries"), std::string::npos);
  auto stack = Executor::Create({.stack_bytes = 1024});
  ASSERT_FALSE(stack.ok());
  EXPECT_NE(stack.status().message().find("stack_bytes"), std::string::npos);
}

TEST(ExecutorOptionsTest, RunNeedsZeroWorkers) {
  auto executor = Executor::Create({.num_workers = 1});
  ASSERT_TRUE(executor.ok());
  EXPECT_EQ((*executor)->Run().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE((*executor)->Shutdown().ok());
}

using SpawnTest = ExecutorTest;

TEST_P(SpawnTest, JoinReturnsEveryKindOfResult) {
  Executor& ex = Make();
  auto value = ex.Spawn([] { return 42; });
  auto nothing = ex.Spawn([] {});
  auto ok = ex.Spawn([] { return OkStatus(); });
  auto error = ex.Spawn([] { return NotFoundError("page 7"); });
  auto statusor =
      ex.Spawn([]() -> StatusOr<std::string> { return std::string("kv"); });
  auto statusor_error = ex.Spawn(
      []() -> StatusOr<int> { return ResourceExhaustedError("full"); });
  auto thrown = ex.Spawn([]() -> int { throw std::runtime_error("boom"); });
  auto move_only = ex.Spawn([] { return std::make_unique<int>(5); });

  StatusOr<int> v = value.Join();
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, 42);
  EXPECT_FALSE(value.valid());
  EXPECT_TRUE(nothing.Join().ok());
  EXPECT_TRUE(ok.Join().ok());
  EXPECT_EQ(error.Join(), NotFoundError("page 7"));
  EXPECT_EQ(*statusor.Join(), "kv");
  EXPECT_EQ(statusor_error.Join().status(), ResourceExhaustedError("full"));
  EXPECT_EQ(thrown.Join().status(), InternalError("task threw: boom"));
  EXPECT_EQ(**move_only.Join(), 5);
}

TEST_P(SpawnTest, TasksInsideTasksAndHelpFirstJoin) {
  Executor& ex = Make();
  // fib(n) by spawning both halves: joins of tasks that have not started run
  // them inline, so this finishes even on one worker.
  struct Fib {
    static int Run(Executor* ex, int n) {
      if (n < 2) return n;
      auto a = ex->Spawn([ex, n] { return Run(ex, n - 1); });
      auto b = ex->Spawn([ex, n] { return Run(ex, n - 2); });
      return *a.Join() + *b.Join();
    }
  };
  auto root = ex.Spawn([&] { return Fib::Run(Executor::Current(), 15); });
  EXPECT_EQ(*root.Join(), 610);
}

// Regression: a join must run its task inline whenever it has not started,
// wherever its entry sits in this worker's queue (here: behind the outer
// levels' tasks), not only when it is the newest or the oldest entry. Waiting
// instead lets the loop start the oldest (outermost) tasks, each of which
// blocks in its own joins: fork-join recursion then holds thousands of
// blocked fibers (and their stacks) at once and runs many times slower.
TEST_P(SpawnTest, RecursiveForkJoinDoesNotPileUpBlockedFibers) {
  Executor& ex = Make();
  std::atomic<std::uint64_t> max_blocked{0};
  struct Fib {
    static int Run(Executor* ex, int n, std::atomic<std::uint64_t>* max) {
      if (n < 2) {
        const std::uint64_t blocked = ex->Stats().blocked_fibers;
        std::uint64_t seen = max->load();
        while (seen < blocked && !max->compare_exchange_weak(seen, blocked)) {
        }
        return n;
      }
      auto a = ex->Spawn([ex, n, max] { return Run(ex, n - 1, max); });
      auto b = ex->Spawn([ex, n, max] { return Run(ex, n - 2, max); });
      return *a.Join() + *b.Join();
    }
  };
  auto root =
      ex.Spawn([&] { return Fib::Run(Executor::Current(), 16, &max_blocked); });
  EXPECT_EQ(*root.Join(), 987);
  // A join blocks only on a task another worker is running: a few per
  // worker and recursion level, far below the ~1600 tasks of fib(16).
  EXPECT_LE(max_blocked.load(),
            std::uint64_t{16} * static_cast<std::uint64_t>(num_workers() + 1));
}

// A handle joined from a fiber on another worker than the spawner's: that
// joiner never claims the task out of its queue (only the spawning worker's
// joiners do), it takes it back if the entry is in its own queue, or waits.
TEST_P(SpawnTest, JoinsFromOtherWorkersWaitOrTakeTheEntry) {
  Executor& ex = Make();
  constexpr int kTasks = 2000;
  std::vector<JoinHandle<int>> handles;
  handles.reserve(kTasks);
  auto spawner = ex.Spawn([&] {
    for (int i = 0; i < kTasks; ++i)
      handles.push_back(Executor::Current()->Spawn([i] { return i; }));
  });
  ASSERT_TRUE(spawner.Join().ok());
  // Joined from other tasks, which may run on any worker, in reverse.
  std::atomic<std::int64_t> sum{0};
  auto root = ex.Spawn([&] {
    WaitGroup joined;
    for (int part = 0; part < 4; ++part) {
      joined.Add();
      Executor::Current()
          ->Spawn([&, part] {
            for (int i = kTasks - 1 - part; i >= 0; i -= 4)
              sum.fetch_add(*handles[static_cast<std::size_t>(i)].Join());
            joined.Done();
          })
          .Detach();
    }
    joined.Wait();
  });
  ASSERT_TRUE(root.Join().ok());
  EXPECT_EQ(sum.load(), std::int64_t{kTasks} * (kTasks - 1) / 2);
}

TEST_P(SpawnTest, SpawnOrderIsStartOrderOnOneWorker) {
  if (num_workers() > 1)
    GTEST_SKIP() << "stealing reorders starts across workers";
  Executor& ex = Make();
  std::vector<int> order;
  std::mutex mu;
  auto parent = ex.Spawn([&] {
    std::vector<JoinHandle<void>> children;
    for (int i = 0; i < 100; ++i) {
      children.push_back(Executor::Current()->Spawn([&, i] {
        std::lock_guard<std::mutex> lock(mu);
        order.push_back(i);
      }));
    }
    // Let them run by themselves (no inline joins) before joining.
    while (order.size() < 100) this_fiber::Yield();
    for (auto& child : children) EXPECT_TRUE(child.Join().ok());
  });
  ASSERT_TRUE(parent.Join().ok());
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(order[static_cast<std::size_t>(i)], i);
}

// Regression: tasks joined inline (help-first) while still in the run queue
// leave stale entries there. They must not count as work for the loop's
// "one task, then back to the ready fibers" budget, or a task that spawns a
// batch, yields and joins the batch piles them up without bound (each holds
// its task object): the queue must stay bounded by about one batch.
TEST_P(SpawnTest, StaleQueueEntriesOfInlineJoinsDoNotAccumulate) {
  Executor& ex = Make();
  constexpr int kBatch = 64;
  constexpr int kRounds = 300;
  std::uint64_t max_queued = 0;
  auto parent = ex.Spawn([&] {
    Executor* self = Executor::Current();
    std::vector<JoinHandle<void>> handles(kBatch);
    for (int round = 0; round < kRounds; ++round) {
      for (JoinHandle<void>& handle : handles) handle = self->Spawn([] {});
      this_fiber::Yield();
      for (JoinHandle<void>& handle : handles) EXPECT_TRUE(handle.Join().ok());
      max_queued = std::max(max_queued, self->Stats().queued_tasks);
    }
  });
  ASSERT_TRUE(parent.Join().ok());
  EXPECT_LE(max_queued, std::uint64_t{2 * kBatch})
      << "stale run-queue entries accumulate";
}

TEST_P(SpawnTest, ForeignThreadsSpawnAndJoin) {
  Executor& ex = Make();
  constexpr int kThreads = 4;
  constexpr int kTasksPerThread = 200;
  std::atomic<int> sum{0};
  if (num_workers() == 0) {
    // Nobody drives a zero-worker executor but its caller: spawn from the
    // threads, run here.
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < kTasksPerThread; ++i)
          ex.Spawn([&] { sum.fetch_add(1); }).Detach();
      });
    }
    for (auto& thread : threads) thread.join();
    ASSERT_TRUE(ex.Run().ok());
  } else {
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < kTasksPerThread; ++i) {
          auto handle = ex.Spawn([&] {
            sum.fetch_add(1);
            return this_fiber::WorkerIndex();
          });
          if (i % 10 ==
              0) {  // a foreign thread blocks in Join until a worker ran it
            StatusOr<int> worker = handle.Join();
            ASSERT_TRUE(worker.ok());
            EXPECT_GE(*worker, 0);
            EXPECT_LT(*worker, num_workers());
          }
        }
      });
    }
    for (auto& thread : threads) thread.join();
  }
  ASSERT_TRUE(ex.Shutdown().ok());
  EXPECT_EQ(sum.load(), kThreads * kTasksPerThread);
}

TEST_P(SpawnTest, IdleWorkersWakeForForeignSubmissions) {
  if (num_workers() == 0) GTEST_SKIP() << "no worker threads to wake";
  Executor& ex = Make({.spin = Duration::zero()});  // park at once
  for (int round = 0; round < 50; ++round) {
    // Give the workers time to park, then submit from this (foreign) thread.
    if (round % 10 == 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    auto handle = ex.Spawn([round] { return round; });
    EXPECT_EQ(*handle.Join(), round);
  }
  EXPECT_GT(ex.Stats().parks, 0u);
}

TEST_P(SpawnTest, StealingSpreadsWorkOverWorkers) {
  if (num_workers() < 2) GTEST_SKIP() << "needs two workers";
  Executor& ex = Make();
  std::mutex mu;
  std::set<int> workers_seen;
  auto parent = ex.Spawn([&] {
    WaitGroup wg;
    // All spawned from one fiber onto one worker's queue: other workers only
    // get some by stealing.
    for (int i = 0; i < 400; ++i) {
      wg.Add(1);
      Executor::Current()
          ->Spawn([&] {
            const auto end = std::chrono::steady_clock::now() +
                             std::chrono::microseconds(50);
            while (std::chrono::steady_clock::now() < end) {
            }
            {
              std::lock_guard<std::mutex> lock(mu);
              workers_seen.insert(this_fiber::WorkerIndex());
            }
            wg.Done();
          })
          .Detach();
    }
    wg.Wait();
  });
  ASSERT_TRUE(parent.Join().ok());
  EXPECT_GE(workers_seen.size(), 2u);
  EXPECT_GT(ex.Stats().steals, 0u);
}

// Two workers, one fiber on each, handing values back and forth through
// channels: between hand-offs a worker is idle while its fiber waits, and
// only one of the two may search other queues at a time. The other watches
// its own inbox instead of parking, so the round trips cost no wake-ups
// (before, every round trip parked one worker: ~300 parks here).
TEST(ExecutorIdleTest, ChannelRoundTripsBetweenTwoWorkersDoNotPark) {
  auto created = Executor::Create(
      {.num_workers = 2, .spin = std::chrono::milliseconds(500)});
  ASSERT_TRUE(created.ok()) << created.status();
  Executor& ex = **created;
  constexpr int kRoundTrips = 300;
  Channel<int> ping(1);
  Channel<int> pong(1);
  std::atomic<bool> echo_started{false};
  std::atomic<int> echo_worker{-1};
  std::uint64_t parks = 0;
  int driver_worker = -1;
  auto driver = ex.Spawn([&] {
    driver_worker = this_fiber::WorkerIndex();
    // Spawned here, the echo task can only start on the other worker while
    // this one spins without yielding.
    auto echo = Executor::Current()->Spawn([&] {
      echo_worker.store(this_fiber::WorkerIndex());
      echo_started.store(true);
      while (std::optional<int> value = ping.Receive()) {
        RPA_CHECK(pong.Send(*value + 1).ok());
      }
    });
    while (!echo_started.load()) std::this_thread::yield();
    const std::uint64_t parks_before = ex.Stats().parks;
    for (int i = 0; i < kRoundTrips; ++i) {
      RPA_CHECK(ping.Send(i).ok());
      std::optional<int> reply = pong.Receive();
      RPA_CHECK(reply.has_value() && *reply == i + 1);
    }
    parks = ex.Stats().parks - parks_before;
    ping.Close();
    RPA_CHECK(echo.Join().ok());
  });
  ASSERT_TRUE(driver.Join().ok());
  EXPECT_NE(driver_worker, echo_worker.load());
  EXPECT_LT(parks, std::uint64_t{kRoundTrips / 10});
  ASSERT_TRUE(ex.Shutdown().ok());
}

TEST_P(SpawnTest, ShutdownRunsQueuedWorkAndReportsBlockedTasks) {
  Executor& ex = Make();
  expect_clean_shutdown_ = false;
  std::atomic<int> ran{0};
  Event never;
  for (int i = 0; i < 100; ++i) ex.Spawn([&] { ran.fetch_add(1); }).Detach();
  auto blocked = ex.Spawn([&] { never.Wait(); });
  auto sleeper = ex.Spawn([] {
    this_fiber::SleepFor(std::chrono::milliseconds(2));
    return 1;
  });
  Status status = ex.Shutdown();
  EXPECT_EQ(status.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("1 tasks never finished"), std::string::npos)
      << status;
  EXPECT_EQ(ran.load(), 100);     // queued work ran
  EXPECT_EQ(*sleeper.Join(), 1);  // timers were waited for
  EXPECT_EQ(blocked.Join().code(), StatusCode::kFailedPrecondition);
  auto late = ex.Spawn([] { return 1; });  // after shutdown: rejected
  EXPECT_EQ(late.Join().status().code(), StatusCode::kFailedPrecondition);
  ExecutorStats stats = ex.Stats();
  EXPECT_EQ(stats.tasks_spawned,
            stats.tasks_completed + stats.tasks_failed_at_shutdown);
  EXPECT_EQ(stats.tasks_failed_at_shutdown, 2u);
  never.Set();  // the abandoned waiter was unlinked: nothing to wake
}

TEST_P(SpawnTest, JoinFromAnotherExecutorsFiber) {
  Executor& ex = Make();
  auto other = Executor::Create({.num_workers = 1});
  ASSERT_TRUE(other.ok());
  auto inner = (*other)->Spawn([] {
    this_fiber::SleepFor(std::chrono::microseconds(200));
    return 7;
  });
  // The outer fiber suspends on a task of another executor; that executor's
  // worker wakes it through this executor's inbox.
  auto outer = ex.Spawn([&] { return *inner.Join() + 1; });
  EXPECT_EQ(*outer.Join(), 8);
  EXPECT_TRUE((*other)->Shutdown().ok());
}

RPA_INSTANTIATE_OVER_WORKERS(SpawnTest);

}  // namespace
}  // namespace rpa::runtime
