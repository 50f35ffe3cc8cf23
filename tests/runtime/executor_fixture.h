#pragma once

// The fixture every executor test uses: parameterized over worker counts
// {0 (caller thread), 1, 2, 4, 8}, and asserting in TearDown that nothing
// leaked: every spawned task completed, no fiber is left blocked, and every
// fiber stack went back (the process-wide count of mapped stacks returns to
// where it was).

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <utility>

#include "fiber.h"  // internal::StackPool::LiveStacks

#include "rpa/runtime/executor.h"

namespace rpa::runtime {

inline const int kWorkerCounts[] = {0, 1, 2, 4, 8};

class ExecutorTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    live_stacks_before_ = internal::StackPool::LiveStacks();
  }

  void TearDown() override {
    if (executor_ != nullptr) {
      Status status = executor_->Shutdown();
      if (expect_clean_shutdown_) {
        EXPECT_TRUE(status.ok()) << status;
        ExecutorStats stats = executor_->Stats();
        EXPECT_EQ(stats.tasks_spawned, stats.tasks_completed);
        EXPECT_EQ(stats.tasks_failed_at_shutdown, 0u);
      }
      EXPECT_EQ(executor_->Stats().blocked_fibers, 0u);
      executor_.reset();
    }
    EXPECT_EQ(internal::StackPool::LiveStacks(), live_stacks_before_)
        << "fiber stacks leaked";
  }

  int num_workers() const { return GetParam(); }

  Executor& Make(ExecutorOptions options = {}) {
    options.num_workers = GetParam();
    auto created = Executor::Create(options);
    EXPECT_TRUE(created.ok()) << created.status();
    executor_ = std::move(created).value();
    return *executor_;
  }

  std::unique_ptr<Executor> executor_;
  bool expect_clean_shutdown_ = true;

 private:
  std::int64_t live_stacks_before_ = 0;
};

inline std::string WorkersName(const ::testing::TestParamInfo<int>& info) {
  return "workers" + std::to_string(info.param);
}

#define RPA_INSTANTIATE_OVER_WORKERS(suite)                                    \
  INSTANTIATE_TEST_SUITE_P(Workers, suite, ::testing::ValuesIn(kWorkerCounts), \
                           WorkersName)

}  // namespace rpa::runtime
