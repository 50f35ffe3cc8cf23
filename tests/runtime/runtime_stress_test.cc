// Stress: millions of tiny tasks and channel hand-offs across workers, with
// fixed seeds, ending with nothing leaked (every task completed, no fiber
// blocked, every stack unmapped). Sanitizer builds run a 20x smaller load.

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <random>
#include <vector>

#include "executor_fixture.h"

#include "rpa/runtime/channel.h"
#include "rpa/runtime/mutex.h"
#include "rpa/runtime/semaphore.h"
#include "rpa/runtime/this_fiber.h"
#include "rpa/runtime/wait_group.h"

namespace rpa::runtime {
namespace {

constexpr std::uint64_t kScale = RPA_SANITIZER_BUILD ? 20 : 1;

using StressTest = ExecutorTest;

TEST_P(StressTest, MillionsOfTinyTasks) {
  Executor& ex = Make();
  const std::uint64_t kTasks = 2'000'000 / kScale;
  constexpr std::uint64_t kFanOut = 1000;
  std::atomic<std::uint64_t> sum{0};
  auto root = ex.Spawn([&] {
    WaitGroup all;
    // A tree: the root spawns chunks (stolen by idle workers), each chunk
    // spawns tiny tasks; half are detached, half joined (inline or not).
    for (std::uint64_t chunk = 0; chunk < kTasks / kFanOut; ++chunk) {
      all.Add();
      Executor::Current()
          ->Spawn([&, chunk] {
            std::vector<JoinHandle<std::uint64_t>> joined;
            joined.reserve(kFanOut / 2);
            WaitGroup detached;
            for (std::uint64_t i = 0; i < kFanOut; ++i) {
              const std::uint64_t value = chunk * kFanOut + i;
              if (i % 2 == 0) {
                joined.push_back(
                    Executor::Current()->Spawn([value] { return value; }));
              } else {
                detached.Add();
                Executor::Current()
                    ->Spawn([&sum, &detached, value] {
                      sum.fetch_add(value, std::memory_order_relaxed);
                      detached.Done();
                    })
                    .Detach();
              }
            }
            for (auto& handle : joined)
              sum.fetch_add(*handle.Join(), std::memory_order_relaxed);
            detached.Wait();
            all.Done();
          })
          .Detach();
    }
    all.Wait();
  });
  ASSERT_TRUE(root.Join().ok());
  const std::uint64_t n = kTasks / kFanOut * kFanOut;
  EXPECT_EQ(sum.load(), n * (n - 1) / 2);
  EXPECT_GE(ex.Stats().tasks_spawned, n);
}

TEST_P(StressTest, ChannelHandOffsAcrossWorkers) {
  Executor& ex = Make();
  const int kMessages = static_cast<int>(1'000'000 / kScale);
  constexpr int kProducers = 4;
  constexpr int kConsumers = 4;
  Channel<std::uint64_t> channel(16);
  std::atomic<std::uint64_t> received_sum{0};
  std::atomic<int> received{0};
  WaitGroup producers;
  producers.Add(kProducers);
  std::vector<JoinHandle<void>> tasks;
  for (int p = 0; p < kProducers; ++p) {
    tasks.push_back(ex.Spawn([&, p] {
      std::mt19937_64 rng(1234 + static_cast<std::uint64_t>(p));  // fixed seeds
      for (int i = p; i < kMessages; i += kProducers) {
        ASSERT_TRUE(channel.Send(static_cast<std::uint64_t>(i)).ok());
        if (rng() % 64 == 0) this_fiber::Yield();
      }
      producers.Done();
    }));
  }
  tasks.push_back(ex.Spawn([&] {
    producers.Wait();
    channel.Close();
  }));
  for (int c = 0; c < kConsumers; ++c) {
    tasks.push_back(ex.Spawn([&, c] {
      std::mt19937_64 rng(99 + static_cast<std::uint64_t>(c));
      while (auto v = channel.Receive()) {
        received_sum.fetch_add(*v, std::memory_order_relaxed);
        received.fetch_add(1, std::memory_order_relaxed);
        if (rng() % 128 == 0) this_fiber::Yield();
      }
    }));
  }
  for (auto& task : tasks) ASSERT_TRUE(task.Join().ok());
  const auto n = static_cast<std::uint64_t>(kMessages);
  EXPECT_EQ(received.load(), kMessages);
  EXPECT_EQ(received_sum.load(), n * (n - 1) / 2);
}

// Random mixes of every primitive from fixed seeds: each task picks its
// operations from its own RNG.
TEST_P(StressTest, RandomMixOfPrimitives) {
  Executor& ex = Make();
  const int kTasks = static_cast<int>(4000 / kScale);
  Mutex mu;
  std::uint64_t guarded = 0;  // guarded by mu
  Semaphore bytes(64 * 1024);
  Channel<int> mailbox(4);
  std::atomic<int> mails{0};
  WaitGroup all;
  all.Add(static_cast<std::uint64_t>(kTasks));
  for (int t = 0; t < kTasks; ++t) {
    ex.Spawn([&, t] {
        std::mt19937 rng(static_cast<std::uint32_t>(t));
        for (int op = 0; op < 20; ++op) {
          switch (rng() % 5) {
            case 0: {
              MutexLock lock(mu);
              ++guarded;
              break;
            }
            case 1: {
              const std::uint64_t n = 1 + rng() % 16384;
              bytes.Acquire(n);
              this_fiber::Yield();
              bytes.Release(n);
              break;
            }
            case 2:
              if (mailbox.TrySend(int{t}).ok()) mails.fetch_add(1);
              break;
            case 3:
              if (mailbox.TryReceive()) mails.fetch_sub(1);
              break;
            default:
              if (rng() % 8 == 0) {
                this_fiber::SleepFor(std::chrono::microseconds(rng() % 50));
              } else {
                this_fiber::Yield();
              }
          }
        }
        all.Done();
      }).Detach();
  }
  auto waiter = ex.Spawn([&] { all.Wait(); });
  ASSERT_TRUE(waiter.Join().ok());
  EXPECT_EQ(bytes.available(), 64u * 1024);
  EXPECT_EQ(static_cast<std::size_t>(mails.load()), mailbox.size());
  MutexLock lock(mu);
  EXPECT_GT(guarded, 0u);
}

RPA_INSTANTIATE_OVER_WORKERS(StressTest);

}  // namespace
}  // namespace rpa::runtime
