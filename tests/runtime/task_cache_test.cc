#include "task_cache.h"

#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <set>
#include <vector>

#include "executor_fixture.h"
#include "worker.h"

#include "rpa/runtime/join_handle.h"

namespace rpa::runtime {
namespace {

using internal::ForeignTaskCache;
using internal::kNumTaskClasses;
using internal::kTaskClassBytes;
using internal::TaskBlockCache;
using internal::TaskBlockPool;

bool OnItsOwnLines(const void* block) {
  return reinterpret_cast<std::uintptr_t>(block) % kTaskClassBytes == 0;
}

// Every block a worker's cache hands out starts a cache line, whichever path
// it comes from: new blocks (empty pool), blocks refilled from the pool after
// an overflow, and blocks freed back into the cache.
TEST(TaskBlockCacheTest, EveryBlockStartsACacheLine) {
  TaskBlockPool pool;
  TaskBlockCache cache(&pool);
  constexpr std::size_t kBlocks = 3 * TaskBlockCache::kCapacity;
  for (std::size_t task_class = 0; task_class < kNumTaskClasses; ++task_class) {
    for (int round = 0; round < 2; ++round) {
      std::vector<void*> blocks;
      std::set<void*> distinct;
      for (std::size_t i = 0; i < kBlocks; ++i) {
        blocks.push_back(cache.Allocate(task_class));
        ASSERT_TRUE(OnItsOwnLines(blocks.back()))
            << "class " << task_class << " round " << round << " block " << i;
        distinct.insert(blocks.back());
      }
      EXPECT_EQ(distinct.size(), kBlocks);
      // Overflows into the pool; the next round refills from it.
      for (void* block : blocks) cache.Free(task_class, block);
    }
  }
}

TEST(TaskBlockCacheTest, ForeignThreadBlocksStartACacheLine) {
  ForeignTaskCache cache;
  constexpr std::size_t kBlocks = 2 * ForeignTaskCache::kCapacity;
  for (std::size_t task_class = 0; task_class < kNumTaskClasses; ++task_class) {
    for (int round = 0; round < 2; ++round) {
      std::vector<void*> blocks;
      for (std::size_t i = 0; i < kBlocks; ++i) {
        blocks.push_back(cache.Allocate(task_class));
        ASSERT_TRUE(OnItsOwnLines(blocks.back()))
            << "class " << task_class << " round " << round << " block " << i;
      }
      // The first kCapacity stay cached, the rest go back to the allocator.
      for (void* block : blocks) cache.Free(task_class, block);
    }
  }
}

// The task a fiber is running, as the worker sees it.
const void* RunningTask() {
  return internal::Worker::Current()->current()->task;
}

// Tasks of every size class, spawned from a task (the worker's cache) and
// from the test's thread (its foreign cache), run from blocks that start a
// cache line.
using TaskBlockAlignmentTest = ExecutorTest;

TEST_P(TaskBlockAlignmentTest, TasksOfEverySizeClassStartACacheLine) {
  Executor& executor = Make();
  auto spawn_all = [&executor] {
    std::vector<JoinHandle<bool>> handles;
    for (int i = 0; i < 50; ++i) {
      handles.push_back(
          executor.Spawn([] { return OnItsOwnLines(RunningTask()); }));
      handles.push_back(executor.Spawn([pad = std::array<char, 56>{}] {
        return pad[0] == 0 && OnItsOwnLines(RunningTask());
      }));
      handles.push_back(executor.Spawn([pad = std::array<char, 120>{}] {
        return pad[0] == 0 && OnItsOwnLines(RunningTask());
      }));
    }
    int aligned = 0;
    for (JoinHandle<bool>& handle : handles) {
      StatusOr<bool> result = handle.Join();
      if (result.ok() && *result) ++aligned;
    }
    return aligned == static_cast<int>(handles.size());
  };
  EXPECT_TRUE(spawn_all()) << "spawned from the test's thread";
  JoinHandle<bool> from_task = executor.Spawn(spawn_all);
  StatusOr<bool> result = from_task.Join();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(*result) << "spawned from a task";
}

RPA_INSTANTIATE_OVER_WORKERS(TaskBlockAlignmentTest);

}  // namespace
}  // namespace rpa::runtime
