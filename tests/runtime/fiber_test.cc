#include "fiber.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "rpa/runtime/executor.h"
#include "rpa/runtime/sanitizers.h"

namespace rpa::runtime::internal {
namespace {

struct PingPong {
  Fiber* main = nullptr;
  Fiber* a = nullptr;
  Fiber* b = nullptr;
  std::vector<int> trace;
};

PingPong* g_pp = nullptr;

void BodyA(void*) {
  for (int i = 0;; ++i) {
    g_pp->trace.push_back(10 + i);
    g_pp->a->SwitchTo(g_pp->b);
  }
}

void BodyB(void*) {
  for (int i = 0;; ++i) {
    g_pp->trace.push_back(20 + i);
    g_pp->b->SwitchTo(i < 2 ? g_pp->a : g_pp->main);
  }
}

TEST(FiberTest, SwitchesInterleaveAndReturnToTheThread) {
  StackPool pool(64 * 1024);
  const std::int64_t before = StackPool::LiveStacks();
  {
    PingPong pp;
    g_pp = &pp;
    Fiber main_fiber;
    Fiber a(&pool, &BodyA, nullptr);
    Fiber b(&pool, &BodyB, nullptr);
    pp.main = &main_fiber;
    pp.a = &a;
    pp.b = &b;
    EXPECT_EQ(StackPool::LiveStacks(), before + 2);
    main_fiber.SwitchTo(&a);
    EXPECT_EQ(pp.trace, (std::vector<int>{10, 20, 11, 21, 12, 22}));
    g_pp = nullptr;
  }  // the fibers are discarded suspended: their stacks go back to the pool
  EXPECT_EQ(pool.mapped(), 2u);
}

TEST(FiberTest, PoolReusesStacks) {
  StackPool pool(32 * 1024);
  Stack s1 = pool.Allocate();
  pool.Release(s1);
  Stack s2 = pool.Allocate();
  EXPECT_EQ(s1.mapping, s2.mapping);
  EXPECT_GE(s2.usable_bytes(), 32u * 1024);
  std::memset(s2.bottom(), 0xab, s2.usable_bytes());  // all of it is usable
  pool.Release(s2);
  EXPECT_EQ(pool.mapped(), 1u);
}

// Recursion with a frame the optimizer cannot elide, until the stack ends.
[[gnu::noinline]] int Recurse(int depth) {
  volatile char frame[1024];
  frame[0] = static_cast<char>(depth);
  return depth > 1'000'000'000 ? 0 : Recurse(depth + 1) + frame[0];
}

void Overflow(void*) { Recurse(0); }

TEST(FiberDeathTest, StackOverflowHitsTheGuardPage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        StackPool pool(64 * 1024);
        Fiber main_fiber;
        Fiber f(&pool, &Overflow, nullptr);
        main_fiber.SwitchTo(&f);
      },
      "");
}

TEST(FiberDeathTest, StackOverflowInATaskCrashesTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        auto executor =
            Executor::Create({.num_workers = 1, .stack_bytes = 64 * 1024});
        (*executor)->Spawn([] { Recurse(0); }).Join().IgnoreError();
      },
      "");
}

}  // namespace
}  // namespace rpa::runtime::internal
