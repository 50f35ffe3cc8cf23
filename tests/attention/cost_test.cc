// The SPEC section 7 cost that ValidateBatch computes in closed form
// (attention/include/rpa/attention/cost.h), against brute force over every
// (query, key) pair, and without overflow at the int32 limits.

#include "rpa/attention/cost.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attention/batch_builder.h"
#include "validate.h"

#include "rpa/attention/plan.h"

namespace rpa::attention {
namespace {

using internal::ValidateBatch;
using memory::StorageType;
using testutil::BatchSpec;
using testutil::BuildBatch;
using testutil::TestBatch;

constexpr std::int32_t kInt32Max = std::numeric_limits<std::int32_t>::max();

// Brute force over every (query, key) pair of SPEC 2 step 5.
BatchCost BruteForceCost(const internal::ValidatedBatch& batch) {
  BatchCost total;
  const std::uint64_t hq_d =
      std::uint64_t{batch.shape.num_q_heads} * batch.shape.head_dim;
  const std::uint64_t kv_d =
      2 * std::uint64_t{batch.shape.num_kv_heads} * batch.shape.head_dim;
  const std::uint64_t element = memory::StorageBytes(batch.cache.storage);
  const internal::ResolvedParams& params = batch.params;
  for (const internal::SequenceSpan& seq : batch.sequences) {
    const std::int64_t gap = seq.kv_len - seq.q_len;
    std::vector<bool> cached_seen(static_cast<std::size_t>(gap), false);
    std::uint64_t pairs = 0;
    for (std::int64_t p = gap; p < seq.kv_len; ++p) {
      for (std::int64_t b = 0; b < seq.kv_len; ++b) {
        const bool visible =
            (!params.causal || b <= p) &&
            (params.sliding_window <= 0 || p - b < params.sliding_window);
        if (!visible) continue;
        ++pairs;
        if (b < gap) cached_seen[static_cast<std::size_t>(b)] = true;
      }
    }
    std::uint64_t cached = 0;
    for (bool seen : cached_seen) cached += seen ? 1 : 0;
    const auto q_len = static_cast<std::uint64_t>(seq.q_len);
    BatchCost cost;
    cost.q_bytes = q_len * hq_d * 4;
    cost.out_bytes = q_len * hq_d * 4;
    cost.new_kv_read_bytes = q_len * kv_d * 4;
    cost.cache_write_bytes = q_len * kv_d * element;
    cost.cached_kv_read_bytes = cached * kv_d * element;
    cost.visible_pairs = pairs;
    cost.flops = 4.0 * static_cast<double>(hq_d) * static_cast<double>(pairs);
    total += cost;
  }
  return total;
}

void ExpectCostEq(const BatchCost& actual, const BatchCost& expected,
                  const std::string& context) {
  EXPECT_EQ(actual.q_bytes, expected.q_bytes) << context;
  EXPECT_EQ(actual.new_kv_read_bytes, expected.new_kv_read_bytes) << context;
  EXPECT_EQ(actual.cache_write_bytes, expected.cache_write_bytes) << context;
  EXPECT_EQ(actual.cached_kv_read_bytes, expected.cached_kv_read_bytes)
      << context;
  EXPECT_EQ(actual.out_bytes, expected.out_bytes) << context;
  EXPECT_EQ(actual.visible_pairs, expected.visible_pairs) << context;
  EXPECT_EQ(actual.flops, expected.flops) << context;
}

TEST(CostTest, MatchesBruteForceUnderEveryMask) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    BatchSpec spec;
    const int num_seqs = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < num_seqs; ++i) {
      const auto kv_len = static_cast<std::int32_t>(1 + rng() % 40);
      const auto q_len = static_cast<std::int32_t>(
          1 + rng() % static_cast<std::uint32_t>(kv_len));
      spec.sequences.push_back({q_len, kv_len});
    }
    spec.num_q_heads = 6;
    spec.num_kv_heads = 3;
    spec.head_dim = 4;
    spec.page_size_tokens = 1 + rng() % 8;
    spec.storage = (trial % 2) == 0 ? StorageType::kF32 : StorageType::kBf16;
    spec.params.causal = (trial % 3) != 0;
    if (trial % 4 != 0) {
      spec.params.sliding_window = static_cast<std::int32_t>(1 + rng() % 45);
    }
    const TestBatch batch = BuildBatch(spec);
    const auto validated = ValidateBatch(batch.metadata(), batch.cache(),
                                         batch.params, PlanOptions{});
    ASSERT_TRUE(validated.ok()) << validated.status();
    const std::string context = "trial " + std::to_string(trial);
    ExpectCostEq(validated->cost, BruteForceCost(*validated), context);
    ExpectCostEq(validated->range_cost[2], validated->cost, context);
    EXPECT_EQ(validated->range_cost[0].bytes(), 0U) << context;
  }
}

TEST(CostTest, RangesAddUp) {
  // 2 decode, 2 prefill (chunk 4), 2 mixed, 1 not processed.
  BatchSpec spec;
  spec.sequences = {{1, 9}, {1, 1}, {4, 12}, {4, 4}, {3, 20}, {5, 5}, {2, 6}};
  spec.distribution = std::array<std::int32_t, 3>{2, 4, 6};
  spec.num_q_heads = 4;
  spec.num_kv_heads = 2;
  spec.head_dim = 8;
  spec.page_size_tokens = 4;
  spec.params.chunk_prefill_size = 4;
  const TestBatch batch = BuildBatch(spec);
  const auto validated = ValidateBatch(batch.metadata(), batch.cache(),
                                       batch.params, PlanOptions{});
  ASSERT_TRUE(validated.ok()) << validated.status();
  BatchCost sum;
  for (const BatchCost& range : validated->range_cost) sum += range;
  ExpectCostEq(validated->cost, sum, "sum of ranges");
  ExpectCostEq(validated->cost, BruteForceCost(*validated), "brute force");
  // Decode: 2 tokens x 4 heads x 8 x 4 bytes of q.
  EXPECT_EQ(validated->range_cost[0].q_bytes, 2U * 4 * 8 * 4);
  // Sequence 0: kv 9, one query at position 8 sees 9 keys (8 cached);
  // sequence 1: one query, one key.
  EXPECT_EQ(validated->range_cost[0].visible_pairs, 10U);
  EXPECT_EQ(validated->range_cost[0].cached_kv_read_bytes, 8U * 2 * 2 * 8 * 4);
}

TEST(CostTest, LongSequencesDoNotOverflow) {
  // kv_len 2^31 - 1 with one page reused for every position (read only):
  // valid, and the closed forms must not overflow.
  BatchShape shape{
      .num_tokens = 1, .num_q_heads = 1, .num_kv_heads = 1, .head_dim = 1};
  const std::int32_t kv_len = kInt32Max;
  memory::KvLayerView cache{.data = nullptr,
                            .num_pages = 1,
                            .page_size_tokens = 1U << 16,
                            .num_combined_heads = 2,
                            .head_dim = 1,
                            .storage = StorageType::kF32,
                            .token_bytes = 8,
                            .page_bytes = 8U << 16};
  const std::vector<std::int32_t> kv_lens = {kv_len};
  const std::vector<std::int32_t> pages(1U << 15, 0);
  const std::vector<std::int32_t> cu = {0, 1};
  const std::vector<std::int32_t> dist = {1, 1, 1};
  const BatchMetadata meta{.shape = shape,
                           .kv_lens = kv_lens,
                           .page_indices = pages,
                           .cu_q_lens = cu,
                           .distribution = dist};
  AttentionParams params;
  auto validated = ValidateBatch(meta, cache, params, PlanOptions{});
  ASSERT_TRUE(validated.ok()) << validated.status();
  EXPECT_EQ(validated->cost.visible_pairs, std::uint64_t{kInt32Max});
  EXPECT_EQ(validated->cost.cached_kv_read_bytes,
            (std::uint64_t{kInt32Max} - 1) * 8);
  params.causal = false;
  params.sliding_window = 1 << 30;
  validated = ValidateBatch(meta, cache, params, PlanOptions{});
  ASSERT_TRUE(validated.ok()) << validated.status();
  EXPECT_EQ(validated->cost.visible_pairs, std::uint64_t{1} << 30);
}

}  // namespace
}  // namespace rpa::attention
