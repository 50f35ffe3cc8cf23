// The plan's decode work decomposition: long sequences split along their
// keys when threads would idle (at page boundaries, honouring the minimum and
// the window, one partial slot per kv head), short ones across kv heads, and
// each split run against the double-precision oracle.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/oracle.h"
#include "attention/plan_run_fixture.h"
#include "plan_data.h"

#include "rpa/attention/plan.h"

namespace rpa::attention {
namespace {

using namespace ::rpa::attention::plan_run_fixture;  // NOLINT: test helpers

TEST(PlanRunTest, LongDecodeIsSplitAlongKvWhenThreadsWouldIdle) {
  TestBatch batch = BuildBatch(LongDecodeSpec(3000, StorageType::kF16));
  auto serial = PlanFor(batch);
  ASSERT_TRUE(serial.ok()) << serial.status();
  EXPECT_EQ(serial->num_work_items(), 1U);  // parallelism 1: no split

  PlanOptions options;
  options.parallelism = 2;
  auto split = PlanFor(batch, options);
  ASSERT_TRUE(split.ok()) << split.status();
  const auto& data = split->data();
  EXPECT_GT(split->num_work_items(), 1U);
  ASSERT_EQ(data.merges.size(), 1U);
  EXPECT_EQ(data.num_partials, static_cast<std::int32_t>(data.items.size()));
  // The pieces tile [0, kv_len) at page boundaries, each >= the minimum.
  std::vector<std::pair<std::int32_t, std::int32_t>> ranges;
  for (const auto& item : data.items) {
    EXPECT_GE(item.partial, 0);
    ranges.emplace_back(item.kv_begin, item.kv_end);
  }
  std::sort(ranges.begin(), ranges.end());
  ASSERT_FALSE(ranges.empty());
  EXPECT_EQ(ranges.front().first, 0);
  EXPECT_EQ(ranges.back().second, 3000);
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    if (i > 0) {
      EXPECT_EQ(ranges[i].first, ranges[i - 1].second);
    }
    EXPECT_EQ(ranges[i].first % 16, 0);
    EXPECT_GE(ranges[i].second - ranges[i].first, 512);
  }

  ASSERT_TRUE(attention::Run(*split, batch.tensors()).ok());
  EXPECT_EQ(CompareWithOracle(batch, RunOracle(batch.original_oracle_input())),
            "");
}

TEST(PlanRunTest, DecodeSplitsHonourTheMinimumAndTheWindow) {
  for (const std::int32_t window : {0, 100, 700}) {
    BatchSpec spec = LongDecodeSpec(1000, StorageType::kF32);
    if (window > 0) spec.params.sliding_window = window;
    TestBatch batch = BuildBatch(spec);
    PlanOptions options;
    options.parallelism = 4;
    options.decode_min_kv_tokens_per_split = 50;  // rounds up to 64
    auto plan = PlanFor(batch, options);
    ASSERT_TRUE(plan.ok()) << plan.status();
    const std::int32_t visible = window > 0 ? window : 1000;
    std::int32_t covered = 0;
    for (const auto& item : plan->data().items) {
      covered += item.kv_end - item.kv_begin;
      if (plan->num_work_items() > 1) {
        EXPECT_EQ(item.kv_end == 1000 || item.kv_end % 16 == 0, true);
      }
    }
    EXPECT_EQ(covered, visible) << "window " << window;
    EXPECT_EQ(plan->num_work_items() > 1, visible >= 128)
        << "window " << window;
    ASSERT_TRUE(attention::Run(*plan, batch.tensors()).ok());
    EXPECT_EQ(
        CompareWithOracle(batch, RunOracle(batch.original_oracle_input())), "")
        << "window " << window;
  }
}

TEST(PlanRunTest, ManyItemsAreNotSplit) {
  BatchSpec spec = LongDecodeSpec(3000, StorageType::kF32);
  spec.num_kv_heads = 4;
  spec.num_q_heads = 8;
  spec.sequences.assign(8, {1, 3000});
  spec.distribution = std::array<std::int32_t, 3>{8, 8, 8};
  TestBatch batch = BuildBatch(spec);
  PlanOptions options;
  options.parallelism = 2;  // 8 items >= 4 x 2
  auto plan = PlanFor(batch, options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->num_work_items(), 8U);
  EXPECT_TRUE(plan->data().merges.empty());
}

// A decode item covers every kv head of its sequence, so that the kernel
// reads each page's tokens whole.
TEST(PlanRunTest, DecodeItemsCoverEveryKvHead) {
  BatchSpec spec = DecodeSpec(StorageType::kF16);
  spec.num_q_heads = 8;
  spec.num_kv_heads = 4;
  TestBatch batch = BuildBatch(spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->num_work_items(), spec.sequences.size());
  for (const auto& item : plan->data().items) {
    EXPECT_EQ(item.kv_head, 0U);
    EXPECT_EQ(item.num_kv_heads, 4U);
    EXPECT_EQ(item.partial, -1);
  }
  ASSERT_TRUE(attention::Run(*plan, batch.tensors()).ok());
  EXPECT_EQ(CompareWithOracle(batch, RunOracle(batch.original_oracle_input())),
            "");
}

// A KV split of an all-heads item writes one slot per (piece, kv head); each
// (sequence, kv head) merge group owns exactly the slots of its head. (Here
// 5 pieces of >= 512 keys are fewer than the 8 items wanted, so the pieces
// are also split across heads.)
TEST(PlanRunTest, SplitAllHeadsItemsWriteOneSlotPerHead) {
  BatchSpec spec = LongDecodeSpec(3000, StorageType::kF16);
  spec.num_q_heads = 12;
  spec.num_kv_heads = 3;
  TestBatch batch = BuildBatch(spec);
  PlanOptions options;
  options.parallelism = 2;
  auto plan = PlanFor(batch, options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const auto& data = plan->data();
  ASSERT_GT(data.items.size(), 1U);
  ASSERT_EQ(data.merges.size(), 3U);
  // slot -> kv head that writes it.
  std::vector<int> writer(static_cast<std::size_t>(data.num_partials), -1);
  std::set<std::int32_t> pieces;  // distinct KV pieces
  for (const auto& item : data.items) {
    pieces.insert(item.kv_begin);
    ASSERT_GE(item.partial, 0);
    for (std::uint32_t i = 0; i < item.num_kv_heads; ++i) {
      const std::int32_t slot = item.partial + static_cast<std::int32_t>(i) *
                                                   item.partial_head_stride;
      ASSERT_GE(slot, 0);
      ASSERT_LT(slot, data.num_partials);
      EXPECT_EQ(writer[static_cast<std::size_t>(slot)], -1) << "slot " << slot;
      writer[static_cast<std::size_t>(slot)] =
          static_cast<int>(item.kv_head + i);
    }
  }
  for (const auto& group : data.merges) {
    EXPECT_EQ(group.num_partials, static_cast<std::int32_t>(pieces.size()));
    for (std::int32_t j = 0; j < group.num_partials; ++j) {
      EXPECT_EQ(writer[static_cast<std::size_t>(group.first_partial + j)],
                static_cast<int>(group.kv_head));
    }
  }
  ASSERT_TRUE(attention::Run(*plan, batch.tensors()).ok());
  EXPECT_EQ(CompareWithOracle(batch, RunOracle(batch.original_oracle_input())),
            "");
}

// A sequence too short for a KV split is split across kv heads instead, so
// that every thread still has work; no merge is needed.
TEST(PlanRunTest, ShortDecodeIsSplitAcrossKvHeads) {
  BatchSpec spec = LongDecodeSpec(100, StorageType::kBf16);
  spec.num_q_heads = 10;
  spec.num_kv_heads = 5;
  TestBatch batch = BuildBatch(spec);
  PlanOptions options;
  options.parallelism = 2;
  auto plan = PlanFor(batch, options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const auto& data = plan->data();
  EXPECT_GE(data.items.size(), 2U);
  EXPECT_TRUE(data.merges.empty());
  EXPECT_EQ(data.num_partials, 0);
  std::vector<int> covered(5, 0);
  for (const auto& item : data.items) {
    EXPECT_EQ(item.partial, -1);
    EXPECT_EQ(item.kv_begin, 0);
    EXPECT_EQ(item.kv_end, 100);
    for (std::uint32_t i = 0; i < item.num_kv_heads; ++i) {
      ++covered[item.kv_head + i];
    }
  }
  EXPECT_EQ(covered, std::vector<int>(5, 1));
  ASSERT_TRUE(attention::Run(*plan, batch.tensors()).ok());
  EXPECT_EQ(CompareWithOracle(batch, RunOracle(batch.original_oracle_input())),
            "");
}

}  // namespace
}  // namespace rpa::attention
