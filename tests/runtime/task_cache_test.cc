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

// Allocates `num_blocks` blocks of every class from `cache`, twice (the
// second round reuses what the first freed), and checks that each starts a
// cache line and that no block is handed out twice at once.
template <typename Cache>
void ExpectEveryBlockStartsACacheLine(Cache& cache, std::size_t num_blocks) {
  for (std::size_t task_class = 0; task_class < kNumTaskClasses; ++task_class) {
    for (int round = 0; round < 2; ++round) {
      std::vector<void*> blocks;
      std::set<void*> distinct;
      for (std::size_t i = 0; i < num_blocks; ++i) {
        blocks.push_back(cache.Allocate(task_class));
        EXPECT_TRUE(OnItsOwnLines(blocks.back()))
            << "class " << task_class << " round " << round << " block " << i;
        distinct.insert(blocks.back());
      }
      EXPECT_EQ(distinct.size(), num_blocks);
      for (void* block : blocks) cache.Free(task_class, block);
    }
  }
}

// A worker's cache, on every path: new blocks (empty pool), blocks refilled
// from the pool after an overflow, and blocks freed back into the cache.
TEST(TaskBlockCacheTest, EveryBlockStartsACacheLine) {
  TaskBlockPool pool;
  TaskBlockCache cache(&pool);
  ExpectEveryBlockStartsACacheLine(cache, 3 * TaskBlockCache::kCapacity);
}

// A service thread's cache: the first kCapacity freed blocks stay cached, the
// rest go back to the allocator.
TEST(TaskBlockCacheTest, ForeignThreadBlocksStartACacheLine) {
  ForeignTaskCache cache;
  ExpectEveryBlockStartsACacheLine(cache, 2 * ForeignTaskCache::kCapacity);
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
