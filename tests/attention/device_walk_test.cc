// The device schedule's walk (internal::BuildDeviceWalk): every query row in
// exactly one Q block, tapered ends whose row pieces cover each row and each
// key once, on the RunOnDevice sweep's shapes and one large prefill chunk.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/device_run_fixture.h"
#include "building_blocks.h"
#include "device_blocks.h"
#include "plan_data.h"

#include "rpa/attention/device_run.h"
#include "rpa/attention/plan.h"
#include "rpa/device/device_spec.h"

namespace rpa::attention {
namespace {

using namespace ::rpa::attention::device_run_fixture;  // NOLINT: test helpers

// The walk's invariants, on the shapes the sweep runs and on one causal
// prefill chunk large enough for tpu7x to taper: every query row is in
// exactly one Q block; a step's pieces partition its rows in order, each
// computes exactly the keys its rows see in the step, and their new keys
// partition the step's compute range in order (so a piece's keys have been
// fetched by the time it computes); pieces fetch Q only for the first two Q
// blocks (whose slots are free) and write output only at a Q block's end.
void ExpectWalkInvariants(const TestBatch& batch,
                          const DeviceRunOptions& options,
                          const device::DeviceSpec& spec,
                          internal::DeviceWalk* walk_out = nullptr) {
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const internal::ValidatedBatch& validated = plan->data().batch;
  StatusOr<internal::DeviceBlockChoice> choice =
      internal::ChooseDeviceBlocks(*plan, options, spec);
  ASSERT_TRUE(choice.ok()) << choice.status();
  const internal::DeviceWalk walk =
      internal::BuildDeviceWalk(validated, *choice, spec);
  std::vector<int> row_blocks(
      batch.q.size() / (batch.shape.num_q_heads * batch.shape.head_dim), 0);
  for (const internal::DeviceQBlock& block : walk.q_blocks) {
    for (std::int32_t row = block.row_begin; row < block.row_end; ++row) {
      ++row_blocks[static_cast<std::size_t>(row)];
    }
  }
  for (const internal::SequenceSpan& span : validated.sequences) {
    for (std::int32_t row = 0; row < span.q_len; ++row) {
      ASSERT_EQ(row_blocks[static_cast<std::size_t>(span.q_begin + row)], 1)
          << "query row " << span.q_begin + row;
    }
  }
  for (std::size_t k = 0; k < walk.steps.size(); ++k) {
    SCOPED_TRACE("step " + std::to_string(k));
    const internal::DeviceStep& step = walk.steps[k];
    const internal::DeviceQBlock& block = walk.q_blocks[step.q_block];
    const internal::SequenceSpan& span = validated.sequences[step.sequence];
    ASSERT_GE(step.num_pieces, 1U);
    std::int32_t row = 0;
    std::int32_t needed = step.compute_begin;
    for (std::uint32_t p = 0; p < step.num_pieces; ++p) {
      const internal::DevicePiece& piece = walk.pieces[step.first_piece + p];
      EXPECT_EQ(piece.row_begin, row);
      EXPECT_LT(piece.row_begin, piece.row_end);
      row = piece.row_end;
      EXPECT_EQ(piece.new_begin, needed);
      needed = piece.new_end;
      std::int32_t seen_begin = step.compute_end;
      std::int32_t seen_end = step.compute_begin;
      for (std::int32_t r = piece.row_begin; r < piece.row_end; ++r) {
        const internal::KeyRange keys = internal::VisibleKeys(
            span.kv_len - span.q_len + step.first_query + r, span.kv_len,
            validated.params);
        const std::int32_t begin = std::max(keys.begin, step.compute_begin);
        const std::int32_t end = std::min(keys.end, step.compute_end);
        if (begin >= end) continue;
        seen_begin = std::min(seen_begin, begin);
        seen_end = std::max(seen_end, end);
      }
      if (seen_begin < seen_end) {
        EXPECT_EQ(piece.compute_begin, seen_begin);
        EXPECT_EQ(piece.compute_end, seen_end);
        EXPECT_LE(piece.compute_end, piece.new_end);
      } else {
        EXPECT_EQ(piece.compute_begin, piece.compute_end);
      }
    }
    EXPECT_EQ(row, step.num_rows);
    EXPECT_EQ(needed, step.compute_end);
    EXPECT_FALSE(step.num_pieces == 1 &&
                 (step.fetch_by_piece || step.q_by_piece || step.out_by_piece));
    if (step.q_by_piece) {
      EXPECT_TRUE(step.fetch_by_piece);
      EXPECT_LT(step.q_block, 2U);
      EXPECT_EQ(block.first_step, k);
    }
    if (step.out_by_piece) {
      EXPECT_EQ(block.last_step, k);
      EXPECT_EQ(block.row_end - block.row_begin, step.num_rows);
    }
  }
  if (walk_out != nullptr) *walk_out = walk;
}

TEST(DeviceWalkTest, TaperedEndsCoverEveryRowAndKeyOnce) {
  for (const SweepCase& sweep_case : SweepCases()) {
    SCOPED_TRACE(sweep_case.name);
    const TestBatch batch = BuildBatch(sweep_case.spec);
    for (const device::DeviceSpec& spec : {Tpu7x(), FastDma()}) {
      ExpectWalkInvariants(batch, DeviceRunOptions{}, spec);
      ExpectWalkInvariants(batch, TinyBlocks(DeviceSchedule::kPipelined), spec);
    }
  }
  // Llama-3-8B heads, one causal 2048-token chunk: 256-token Q blocks of
  // 4 MiB of queries, more than tpu7x's bandwidth-delay product (3.7 MB).
  BatchSpec spec = Base(32, 8, 128, 128, StorageType::kBf16);
  spec.sequences = {{2048, 2048}};
  spec.distribution = std::array<std::int32_t, 3>{0, 1, 1};
  spec.params.chunk_prefill_size = 2048;
  spec.extra_pages = 0;
  spec.padding_tokens = 0;
  internal::DeviceWalk walk;
  ExpectWalkInvariants(BuildBatch(spec), DeviceRunOptions{}, Tpu7x(), &walk);
  ASSERT_EQ(walk.q_blocks.size(), 8U);
  // The second Q block first, the first (the cheapest) last.
  EXPECT_EQ(walk.q_blocks.front().row_begin, 256);
  EXPECT_EQ(walk.q_blocks.back().row_begin, 0);
  // The first two steps fetch by piece, the last two Q blocks write back by
  // piece; the last piece is 1/8 of the rows.
  EXPECT_TRUE(walk.steps[0].q_by_piece && walk.steps[1].q_by_piece);
  EXPECT_TRUE(walk.steps[walk.q_blocks[6].last_step].out_by_piece);
  EXPECT_TRUE(walk.steps.back().out_by_piece);
  EXPECT_EQ(walk.pieces.back().row_end - walk.pieces.back().row_begin, 32);
  EXPECT_EQ(std::count_if(walk.steps.begin(), walk.steps.end(),
                          [](const internal::DeviceStep& step) {
                            return step.num_pieces > 1;
                          }),
            4);
}

}  // namespace
}  // namespace rpa::attention
