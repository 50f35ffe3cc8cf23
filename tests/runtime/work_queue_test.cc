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

TEST(WorkQueueTest, StealHalfMovesTheOlderHalfAndReturnsTheOldest) {
  std::vector<int> items(9);
  WorkQueue<int*> victim(4);
  WorkQueue<int*> thief(2);
  std::size_t stolen = 0;
  EXPECT_EQ(victim.StealHalf(thief, 64, &stolen), nullptr);
  EXPECT_EQ(stolen, 0u);
  for (int& item : items) victim.Push(&item);
  // 9 queued: 5 move (rounded up); the oldest is returned, 4 land in `thief`.
  EXPECT_EQ(victim.StealHalf(thief, 64, &stolen), &items[0]);
  EXPECT_EQ(stolen, 5u);
  EXPECT_EQ(thief.size_hint(), 4u);
  EXPECT_EQ(victim.size_hint(), 4u);
  for (int i = 1; i <= 4; ++i)
    EXPECT_EQ(thief.Take(), &items[static_cast<std::size_t>(i)]);
  // The cap bounds the batch; a single item is stolen alone.
  EXPECT_EQ(victim.StealHalf(thief, 1, &stolen), &items[5]);
  EXPECT_EQ(stolen, 1u);
  EXPECT_TRUE(thief.empty_hint());
  EXPECT_TRUE(victim.TakeIfOldest(&items[6]));
  EXPECT_FALSE(victim.TakeIfOldest(&items[8]));  // not the oldest
  EXPECT_EQ(victim.Take(), &items[7]);
  EXPECT_EQ(victim.StealHalf(thief, 64, &stolen), &items[8]);
  EXPECT_FALSE(victim.TakeIfOldest(&items[8]));  // empty
}

// The owner pushes (through grows) and takes, from the top and by value
// (TakeIfOldest, as a joiner does); two thieves steal half-batches into their
// own queues (growing those too) and drain them, while stealing from each
// other's. Under every seeded interleaving each item is taken exactly once.
TEST(WorkQueueTest, DeterministicInterleavingsStealHalfTakesEachItemOnce) {
  constexpr int kItems = 48;
  for (std::uint64_t seed = 1; seed <= 80; ++seed) {
    std::vector<int> items(kItems);
    std::vector<int> taken(kItems, 0);
    using Queue = WorkQueue<int*, DeterministicAtomic>;
    Queue owner(2);
    Queue thief_queues[2] = {Queue(2), Queue(2)};
    auto record = [&](int* item) {
      ++taken[static_cast<std::size_t>(item - items.data())];
    };
    DeterministicSchedule schedule(seed);
    auto thief = [&](int self) {
      return [&, self] {
        Queue& mine = thief_queues[self];
        Queue& other = thief_queues[1 - self];
        std::size_t stolen = 0;
        for (int round = 0; round < kItems / 4; ++round) {
          int* item = owner.StealHalf(mine, 1 + seed % 8, &stolen);
          if (item == nullptr) item = other.StealHalf(mine, 4, &stolen);
          if (item != nullptr) record(item);
          if (int* local = mine.Take()) record(local);
        }
      };
    };
    schedule.Run({[&] {
                    for (int i = 0; i < kItems; ++i) {
                      owner.Push(&items[static_cast<std::size_t>(i)]);
                      if (i % 3 == 0) {
                        if (int* item = owner.Take()) record(item);
                      } else if (i % 3 == 1 &&
                                 owner.TakeIfOldest(
                                     &items[static_cast<std::size_t>(i - 1)])) {
                        record(&items[static_cast<std::size_t>(i - 1)]);
                      }
                    }
                  },
                  thief(0), thief(1)});
    for (Queue* queue : {&owner, &thief_queues[0], &thief_queues[1]}) {
      while (int* item = queue->Take()) record(item);
    }
    for (int i = 0; i < kItems; ++i) {
      ASSERT_EQ(taken[static_cast<std::size_t>(i)], 1)
          << "seed " << seed << " item " << i;
    }
  }
}

TEST(WorkQueueTest, StealHalfUnderRealThreads) {
  constexpr int kItems = 200'000;
  std::vector<int> items(kItems);
  std::vector<std::atomic<int>> taken(kItems);
  WorkQueue<int*> queue;
  std::atomic<bool> done{false};
  auto thief = [&] {
    WorkQueue<int*> mine;
    std::size_t stolen = 0;
    auto record = [&](int* item) {
      taken[static_cast<std::size_t>(item - items.data())].fetch_add(1);
    };
    for (;;) {
      while (int* item = mine.Take()) record(item);
      if (int* item = queue.StealHalf(mine, 32, &stolen)) {
        record(item);
      } else if (done.load() && queue.empty_hint()) {
        while (int* rest = mine.Take()) record(rest);
        return;
      }
    }
  };
  std::thread t1(thief), t2(thief);
  for (int i = 0; i < kItems; ++i) {
    queue.Push(&items[static_cast<std::size_t>(i)]);
    if (i % 7 == 0) {
      if (int* item = queue.Take())
        taken[static_cast<std::size_t>(item - items.data())].fetch_add(1);
    }
  }
  done.store(true);
  t1.join();
  t2.join();
  for (int i = 0; i < kItems; ++i)
    ASSERT_EQ(taken[static_cast<std::size_t>(i)].load(), 1) << "item " << i;
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

// A link that counts the writes to it, to see which nodes Push touches.
struct CountingNode;
struct CountedLink {
  CountingNode* target = nullptr;
  int writes = 0;
  operator CountingNode*() const {
    return target;
  }  // NOLINT: a pointer stand-in
  CountedLink& operator=(CountingNode* value) {
    ++writes;
    target = value;
    return *this;
  }
};
struct CountingNode {
  CountedLink next;
};

// A push onto an empty stack must not write the node (a woken fiber's line
// stays with its own worker); a push onto a non-empty one links it.
TEST(IntrusiveStackTest, PushOntoAnEmptyStackLeavesTheNodeUntouched) {
  IntrusiveStack<CountingNode> stack;
  CountingNode first;
  CountingNode second;
  stack.Push(&first);
  EXPECT_EQ(first.next.writes, 0);
  stack.Push(&second);
  EXPECT_EQ(first.next.writes, 0);
  EXPECT_EQ(second.next.writes, 1);
  EXPECT_EQ(second.next.target, &first);

  CountingNode* taken = stack.TakeAll();  // oldest first
  ASSERT_EQ(taken, &first);
  EXPECT_EQ(static_cast<CountingNode*>(first.next), &second);
  EXPECT_EQ(static_cast<CountingNode*>(second.next), nullptr);
  EXPECT_EQ(stack.TakeAll(), nullptr);
}

}  // namespace
}  // namespace rpa::runtime::internal
