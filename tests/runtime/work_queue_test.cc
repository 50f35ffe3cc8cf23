#include "work_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "support/deterministic_schedule.h"

namespace rpa::runtime::internal {
namespace {

using test::DeterministicAtomic;
using test::DeterministicSchedule;

TEST(WorkQueueTest, FifoAndGrowth) {
  std::vector<int> items(1000);
  WorkQueue<int*> queue(4);
  EXPECT_EQ(queue.Take(), nullptr);
  for (int i = 0; i < 10; ++i) queue.Push(&items[static_cast<std::size_t>(i)]);
  for (int i = 0; i < 5; ++i)
    EXPECT_EQ(queue.Take(), &items[static_cast<std::size_t>(i)]);
  for (int i = 10; i < 1000; ++i)
    queue.Push(&items[static_cast<std::size_t>(i)]);
  EXPECT_EQ(queue.size_hint(), 995u);
  for (int i = 5; i < 1000; ++i)
    EXPECT_EQ(queue.Take(), &items[static_cast<std::size_t>(i)]);
  EXPECT_TRUE(queue.empty_hint());
}

// The owner pushes (through several grows) and takes; two thieves take. Under
// every seeded interleaving each item is taken exactly once.
TEST(WorkQueueTest, DeterministicInterleavingsTakeEachItemOnce) {
  constexpr int kItems = 40;
  for (std::uint64_t seed = 1; seed <= 60; ++seed) {
    std::vector<int> items(kItems);
    std::vector<int> taken(kItems, 0);
    WorkQueue<int*, DeterministicAtomic> queue(2);
    auto record = [&](int* item) {
      ++taken[static_cast<std::size_t>(item - items.data())];
    };
    DeterministicSchedule schedule(seed);
    auto thief = [&] {
      for (int i = 0; i < kItems; ++i) {
        if (int* item = queue.Take()) record(item);
      }
    };
    schedule.Run({[&] {
                    for (int i = 0; i < kItems; ++i) {
                      queue.Push(&items[static_cast<std::size_t>(i)]);
                      if (i % 3 == 0) {
                        if (int* item = queue.Take()) record(item);
                      }
                    }
                  },
                  thief, thief});
    while (int* item = queue.Take()) record(item);
    for (int i = 0; i < kItems; ++i) {
      ASSERT_EQ(taken[static_cast<std::size_t>(i)], 1)
          << "seed " << seed << " item " << i;
    }
  }
}

TEST(WorkQueueTest, ConcurrentThievesUnderRealThreads) {
  constexpr int kItems = 200'000;
  std::vector<int> items(kItems);
  std::vector<std::atomic<int>> taken(kItems);
  WorkQueue<int*> queue;
  std::atomic<bool> done{false};
  auto thief = [&] {
    for (;;) {
      if (int* item = queue.Take()) {
        taken[static_cast<std::size_t>(item - items.data())].fetch_add(1);
      } else if (done.load()) {
        if (queue.empty_hint()) return;
      }
    }
  };
  std::thread t1(thief), t2(thief);
  for (int i = 0; i < kItems; ++i)
    queue.Push(&items[static_cast<std::size_t>(i)]);
  done.store(true);
  t1.join();
  t2.join();
  for (int i = 0; i < kItems; ++i)
    ASSERT_EQ(taken[static_cast<std::size_t>(i)].load(), 1);
}

struct Node {
  Node* next = nullptr;
  int value = 0;
};

TEST(IntrusiveStackTest, DeterministicProducersTakeAllInFifoOrderPerProducer) {
  for (std::uint64_t seed = 1; seed <= 40; ++seed) {
    std::vector<Node> nodes(30);
    for (int i = 0; i < 30; ++i) nodes[static_cast<std::size_t>(i)].value = i;
    IntrusiveStack<Node, DeterministicAtomic> stack;
    std::vector<int> seen;
    DeterministicSchedule schedule(seed);
    auto producer = [&](int base) {
      return [&, base] {
        for (int i = base; i < base + 15; ++i)
          stack.Push(&nodes[static_cast<std::size_t>(i)]);
      };
    };
    auto consume = [&] {
      for (Node* n = stack.TakeAll(); n != nullptr; n = n->next)
        seen.push_back(n->value);
    };
    schedule.Run({producer(0), producer(15), [&] {
                    for (int i = 0; i < 5; ++i) consume();
                  }});
    consume();
    ASSERT_EQ(seen.size(), 30u) << "seed " << seed;
    // Each producer's nodes come out in push order.
    int last_a = -1, last_b = -1;
    for (int v : seen) {
      int& last = v < 15 ? last_a : last_b;
      ASSERT_GT(v, last) << "seed " << seed;
      last = v;
    }
  }
}

}  // namespace
}  // namespace rpa::runtime::internal
