// Event, WaitGroup, Semaphore, Mutex and Channel under contention, over
// worker counts, from fibers and from plain threads.

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "executor_fixture.h"

#include "rpa/runtime/channel.h"
#include "rpa/runtime/event.h"
#include "rpa/runtime/mutex.h"
#include "rpa/runtime/semaphore.h"
#include "rpa/runtime/this_fiber.h"
#include "rpa/runtime/wait_group.h"

namespace rpa::runtime {
namespace {

using PrimitivesTest = ExecutorTest;

TEST_P(PrimitivesTest, EventReleasesEveryWaiter) {
  Executor& ex = Make();
  Event event;
  std::atomic<int> woke{0};
  std::vector<JoinHandle<void>> waiters;
  for (int i = 0; i < 50; ++i) {
    waiters.push_back(ex.Spawn([&] {
      event.Wait();
      woke.fetch_add(1);
    }));
  }
  auto setter = ex.Spawn([&] {
    for (int i = 0; i < 10; ++i) this_fiber::Yield();
    EXPECT_EQ(woke.load(), 0);  // nobody passes an unset event
    event.Set();
  });
  for (auto& w : waiters) EXPECT_TRUE(w.Join().ok());
  EXPECT_TRUE(setter.Join().ok());
  EXPECT_EQ(woke.load(), 50);
  EXPECT_TRUE(event.IsSet());
  event.Reset();
  EXPECT_FALSE(event.IsSet());
}

TEST_P(PrimitivesTest, PlainThreadWaitsForAFiber) {
  Executor& ex = Make();
  Event event;
  int payload = 0;
  auto task = ex.Spawn([&] {
    payload = 99;
    event.Set();
  });
  if (num_workers() == 0) {
    ASSERT_TRUE(ex.RunUntilIdle().ok());
  }
  event.Wait();  // this thread blocks (it is not a fiber)
  EXPECT_EQ(payload, 99);
  EXPECT_TRUE(task.Join().ok());
}

TEST_P(PrimitivesTest, FiberWaitsForAForeignThread) {
  Executor& ex = Make();
  Event event;
  std::atomic<int> payload{0};
  auto waiter = ex.Spawn([&] {
    event.Wait();
    return payload.load();
  });
  std::thread setter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    payload.store(5);
    event.Set();  // wakes a fiber from a thread the executor does not own
  });
  EXPECT_EQ(*waiter.Join(), 5);
  setter.join();
}

TEST_P(PrimitivesTest, WaitGroupWaitsForAll) {
  Executor& ex = Make();
  std::atomic<int> done{0};
  auto parent = ex.Spawn([&] {
    WaitGroup wg;
    for (int i = 0; i < 64; ++i) {
      wg.Add();
      Executor::Current()
          ->Spawn([&, i] {
            for (int y = 0; y < i % 4; ++y) this_fiber::Yield();
            done.fetch_add(1);
            wg.Done();
          })
          .Detach();
    }
    wg.Wait();
    EXPECT_EQ(done.load(), 64);
    EXPECT_EQ(wg.count(), 0u);
  });
  EXPECT_TRUE(parent.Join().ok());
}

// The last Done() must not touch the group after a Wait() that saw zero
// returned: the group dies right then (ASan catches a use after scope). Many
// short rounds, Done() from every worker, some Wait()s racing the last Done.
TEST_P(PrimitivesTest, WaitGroupMayDieAsSoonAsWaitReturns) {
  Executor& ex = Make();
  auto parent = ex.Spawn([&] {
    for (int round = 0; round < 300; ++round) {
      auto wg = std::make_unique<WaitGroup>(4);
      for (int i = 0; i < 4; ++i) {
        Executor::Current()
            ->Spawn([group = wg.get(), i, round] {
              for (int y = 0; y < (i + round) % 3; ++y) this_fiber::Yield();
              group->Done();
            })
            .Detach();
      }
      if (round % 2 == 0) this_fiber::Yield();
      wg->Wait();
      EXPECT_EQ(wg->count(), 0u);
      wg.reset();  // heap, so ASan sees the lifetime exactly
    }
  });
  EXPECT_TRUE(parent.Join().ok());
}

TEST(WaitGroupTest, PlainThreadsAddDoneWaitAndReuse) {
  WaitGroup wg;
  wg.Wait();  // zero: returns at once
  for (int round = 0; round < 50; ++round) {
    std::atomic<int> done{0};
    wg.Add(3);
    std::vector<std::thread> threads;
    for (int i = 0; i < 3; ++i) {
      threads.emplace_back([&] {
        done.fetch_add(1);
        wg.Done();
      });
    }
    std::thread second_waiter([&] { wg.Wait(); });
    wg.Wait();
    EXPECT_EQ(done.load(), 3);  // everything before Done() is visible
    EXPECT_EQ(wg.count(), 0u);
    second_waiter.join();
    for (std::thread& thread : threads) thread.join();
  }
}

TEST_P(PrimitivesTest, SemaphoreCountsBytesAndNeverOvercommits) {
  Executor& ex = Make();
  constexpr std::uint64_t kBudget = 4096;
  Semaphore budget(kBudget);
  std::atomic<std::int64_t> in_use{0};
  std::atomic<std::int64_t> peak{0};
  std::vector<JoinHandle<void>> tasks;
  for (int i = 0; i < 40; ++i) {
    const std::uint64_t bytes =
        512u * (1u + static_cast<std::uint64_t>(i % 8));  // 512..4096
    tasks.push_back(ex.Spawn([&, bytes] {
      budget.Acquire(bytes);
      const std::int64_t now =
          in_use.fetch_add(static_cast<std::int64_t>(bytes)) +
          static_cast<std::int64_t>(bytes);
      std::int64_t p = peak.load();
      while (now > p && !peak.compare_exchange_weak(p, now)) {
      }
      this_fiber::Yield();
      in_use.fetch_sub(static_cast<std::int64_t>(bytes));
      budget.Release(bytes);
    }));
  }
  for (auto& t : tasks) EXPECT_TRUE(t.Join().ok());
  EXPECT_LE(peak.load(), static_cast<std::int64_t>(kBudget));
  EXPECT_EQ(budget.available(), kBudget);
}

TEST_P(PrimitivesTest, SemaphoreServesWaitersInOrderAndTryAcquireRespectsThem) {
  Executor& ex = Make();
  Semaphore dma(0);  // a DMA completion semaphore: starts empty, counts bytes
  auto settle = [&] {
    if (num_workers() == 0) {
      ASSERT_TRUE(ex.RunUntilIdle().ok());
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  };
  auto big = ex.Spawn([&] { dma.Acquire(1000); });
  settle();  // the big request queues first
  auto small = ex.Spawn([&] { dma.Acquire(10); });
  settle();
  EXPECT_FALSE(dma.TryAcquire(1));  // waiters are queued: no barging
  dma.Release(500);  // would fit the small one, but the big one is first
  settle();
  EXPECT_FALSE(small.done());
  EXPECT_FALSE(big.done());
  EXPECT_EQ(dma.available(), 500u);
  dma.Release(510);  // now both fit, in order
  EXPECT_TRUE(big.Join().ok());
  EXPECT_TRUE(small.Join().ok());
  EXPECT_EQ(dma.available(), 0u);
}

TEST_P(PrimitivesTest, MutexExcludesAcrossSuspensions) {
  Executor& ex = Make();
  Mutex mu;
  int counter = 0;  // guarded by mu
  int inside = 0;   // guarded by mu
  std::vector<JoinHandle<void>> tasks;
  for (int t = 0; t < 16; ++t) {
    tasks.push_back(ex.Spawn([&] {
      for (int i = 0; i < 200; ++i) {
        MutexLock lock(mu);
        EXPECT_EQ(++inside, 1);
        const int seen = counter;
        if (i % 16 == 0) this_fiber::Yield();  // suspend while holding it
        counter = seen + 1;
        --inside;
      }
    }));
  }
  for (auto& t : tasks) EXPECT_TRUE(t.Join().ok());
  EXPECT_EQ(counter, 16 * 200);
  EXPECT_TRUE(mu.TryLock());
  EXPECT_FALSE(mu.TryLock());
  mu.Unlock();
}

TEST_P(PrimitivesTest, ChannelPreservesOrderPerSenderAndDeliversEverything) {
  Executor& ex = Make();
  constexpr int kSenders = 4;
  constexpr int kPerSender = 500;
  Channel<std::uint64_t> channel(8);
  std::vector<JoinHandle<void>> senders;
  for (int s = 0; s < kSenders; ++s) {
    senders.push_back(ex.Spawn([&, s] {
      for (int i = 0; i < kPerSender; ++i) {
        ASSERT_TRUE(channel
                        .Send(static_cast<std::uint64_t>(s) << 32 |
                              static_cast<std::uint64_t>(i))
                        .ok());
      }
    }));
  }
  auto closer = ex.Spawn([&] {
    for (auto& s : senders) EXPECT_TRUE(s.Join().ok());
    channel.Close();
  });
  std::vector<JoinHandle<std::vector<std::uint64_t>>> receivers;
  for (int r = 0; r < 3; ++r) {
    receivers.push_back(ex.Spawn([&] {
      std::vector<std::uint64_t> got;
      while (auto v = channel.Receive()) got.push_back(*v);
      return got;
    }));
  }
  std::vector<int> next(kSenders, 0);
  std::size_t total = 0;
  for (auto& r : receivers) {
    StatusOr<std::vector<std::uint64_t>> got = r.Join();
    ASSERT_TRUE(got.ok());
    std::vector<int> last(kSenders, -1);
    for (std::uint64_t v : *got) {
      const int s = static_cast<int>(v >> 32);
      const int i = static_cast<int>(v & 0xffffffffu);
      EXPECT_GT(i, last[static_cast<std::size_t>(
                       s)]);  // one receiver sees a sender's values in order
      last[static_cast<std::size_t>(s)] = i;
    }
    total += got->size();
  }
  EXPECT_TRUE(closer.Join().ok());
  EXPECT_EQ(total, static_cast<std::size_t>(kSenders * kPerSender));
}

TEST_P(PrimitivesTest, ChannelCloseSemantics) {
  Executor& ex = Make();
  Channel<int> channel(2);
  auto task = ex.Spawn([&] {
    EXPECT_TRUE(channel.Send(1).ok());
    EXPECT_TRUE(channel.TrySend(2).ok());
    int three = 3;
    EXPECT_EQ(channel.TrySend(std::move(three)).code(),
              StatusCode::kResourceExhausted);
    EXPECT_EQ(three, 3);  // untouched on failure
    channel.Close();
    EXPECT_EQ(channel.Send(4).code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(channel.Receive(), 1);  // drains what was buffered
    EXPECT_EQ(channel.TryReceive(), 2);
    EXPECT_EQ(channel.Receive(), std::nullopt);
  });
  EXPECT_TRUE(task.Join().ok());

  Channel<int> blocked(1);
  auto receiver = ex.Spawn([&] { return blocked.Receive().has_value(); });
  auto closer = ex.Spawn([&] {
    this_fiber::Yield();
    blocked.Close();  // wakes the waiting receiver with nullopt
  });
  EXPECT_FALSE(*receiver.Join());
  EXPECT_TRUE(closer.Join().ok());
}

TEST_P(PrimitivesTest, RendezvousChannelHandsOffDirectly) {
  Executor& ex = Make();
  Channel<int> channel(0);
  auto producer = ex.Spawn([&] {
    for (int i = 0; i < 100; ++i) EXPECT_TRUE(channel.Send(i).ok());
    channel.Close();
  });
  auto consumer = ex.Spawn([&] {
    int sum = 0;
    while (auto v = channel.Receive()) sum += *v;
    return sum;
  });
  EXPECT_EQ(*consumer.Join(), 4950);
  EXPECT_TRUE(producer.Join().ok());
}

TEST_P(PrimitivesTest, ChannelBetweenThreadsAndFibers) {
  Executor& ex = Make();
  Channel<int> to_fiber(4);
  Channel<int> to_thread(4);
  auto echo = ex.Spawn([&] {
    while (auto v = to_fiber.Receive())
      EXPECT_TRUE(to_thread.Send(*v * 2).ok());
    to_thread.Close();
  });
  if (num_workers() == 0) {
    std::thread driver([&] { EXPECT_TRUE(ex.Run().ok()); });
    for (int i = 0; i < 50; ++i) {
      ASSERT_TRUE(to_fiber.Send(i).ok());
      EXPECT_EQ(to_thread.Receive(), 2 * i);
    }
    to_fiber.Close();
    EXPECT_EQ(to_thread.Receive(), std::nullopt);
    driver.join();
  } else {
    for (int i = 0; i < 50; ++i) {
      ASSERT_TRUE(to_fiber.Send(i).ok());
      EXPECT_EQ(to_thread.Receive(), 2 * i);
    }
    to_fiber.Close();
    EXPECT_EQ(to_thread.Receive(), std::nullopt);
  }
  EXPECT_TRUE(echo.Join().ok());
}

RPA_INSTANTIATE_OVER_WORKERS(PrimitivesTest);

// Without any executor the primitives are ordinary thread synchronisation.
TEST(PrimitivesWithoutExecutorTest, PlainThreadsUseTheSamePrimitives) {
  EXPECT_FALSE(this_fiber::InFiber());
  EXPECT_EQ(this_fiber::WorkerIndex(), -1);
  EXPECT_EQ(Executor::Current(), nullptr);
  Event go;
  WaitGroup wg(3);
  Mutex mu;
  Semaphore tokens(1);
  int counter = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      go.Wait();
      for (int i = 0; i < 1000; ++i) {
        MutexLock lock(mu);
        ++counter;
      }
      tokens.Acquire();
      tokens.Release();
      wg.Done();
    });
  }
  go.Set();
  wg.Wait();
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(counter, 3000);
}

TEST(PrimitivesDeathTest, WaitGroupDoneWithoutAddIsABug) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  WaitGroup wg;
  EXPECT_DEATH(wg.Done(), "more often than Add");
}

}  // namespace
}  // namespace rpa::runtime
