// The flash kernel (prefill and mixed ranges) against the double-precision
// oracle, through the public plan/run API with PlanOptions routing every
// range to kPrefill or kMixed, plus its tile-skipping counters.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/oracle.h"
#include "building_blocks.h"
#include "flash_stats.h"
#include "kernels.h"
#include "plan_data.h"

#include "rpa/attention/plan.h"
#include "rpa/runtime/executor.h"

namespace rpa::attention {
namespace {

using memory::StorageType;
using testutil::BatchSpec;
using testutil::BuildBatch;
using testutil::CompareWithOracle;
using testutil::RunOracle;
using testutil::TestBatch;

// Every range through the flash kernel `kind`, with the given tiles.
PlanOptions FlashOptions(KernelKind kind, BlockSizes blocks,
                         int parallelism = 1) {
  PlanOptions options;
  options.decode_range_kernel = kind;
  options.prefill_range_kernel = kind;
  options.mixed_range_kernel = kind;
  options.prefill_blocks = blocks;
  options.mixed_blocks = blocks;
  options.parallelism = parallelism;
  return options;
}

// Runs `spec` through Attend with `options` and compares out and the cache
// with the oracle; returns "" or what differs.
std::string RunAndCompare(const BatchSpec& spec, const PlanOptions& options,
                          runtime::Executor* executor = nullptr) {
  TestBatch batch = BuildBatch(spec);
  const testutil::OracleOutput want = RunOracle(batch.original_oracle_input());
  const Status status = Attend(batch.metadata(), batch.tensors(), batch.params,
                               options, executor);
  if (!status.ok()) {
    std::string message = "Attend failed: ";
    message += status.ToString();
    return message;
  }
  return CompareWithOracle(batch, want);
}

struct SweepCase {
  std::uint32_t head_dim;
  std::uint32_t group_size;
  StorageType storage;
};

std::string CaseName(const SweepCase& c) {
  // Built with += (GCC 12 warns falsely on "literal" + std::string at -O3).
  std::string name = "d";
  name += std::to_string(c.head_dim);
  name += "_g";
  name += std::to_string(c.group_size);
  name += '_';
  name += memory::StorageTypeName(c.storage);
  return name;
}

void PrintTo(const SweepCase& c, std::ostream* os) { *os << CaseName(c); }

class FlashKernelSweepTest : public ::testing::TestWithParam<SweepCase> {};

// Mixed-range batches (q_len 1..70, cached prefixes, page boundaries) under
// every mask and cap option, with tiles that divide nothing, tiles of one
// token and the defaults, through both flash kernel kinds.
TEST_P(FlashKernelSweepTest, MatchesOracle) {
  const SweepCase& c = GetParam();
  const std::vector<BlockSizes> tiles = {{},      {1, 1},   {3, 5},
                                         {7, 13}, {16, 48}, {50, 100}};
  struct Masking {
    bool causal;
    std::optional<std::int32_t> window;
    std::optional<float> soft_cap;
  };
  const std::vector<Masking> maskings = {{true, std::nullopt, std::nullopt},
                                         {false, std::nullopt, std::nullopt},
                                         {true, 9, std::nullopt},
                                         {true, std::nullopt, 5.0F},
                                         {false, 20, 30.0F}};
  std::uint64_t seed = c.head_dim * 131 + c.group_size * 7 +
                       static_cast<std::uint64_t>(c.storage);
  for (std::size_t m = 0; m < maskings.size(); ++m) {
    for (std::size_t t = 0; t < tiles.size(); ++t) {
      // Rotate the kernel kind and the value distribution over the cases.
      const KernelKind kind =
          (m + t) % 2 == 0 ? KernelKind::kMixed : KernelKind::kPrefill;
      BatchSpec spec;
      spec.sequences = {{1, 1}, {3, 40}, {8, 8}, {37, 70}, {2, 17}};
      spec.num_kv_heads = 2;
      spec.num_q_heads = 2 * c.group_size;
      spec.head_dim = c.head_dim;
      spec.page_size_tokens = (t % 3 == 0) ? 16 : 5;
      spec.storage = c.storage;
      spec.params.sm_scale = 1.0F / static_cast<float>(c.head_dim) * 4.0F;
      spec.params.causal = maskings[m].causal;
      spec.params.sliding_window = maskings[m].window;
      spec.params.soft_cap = maskings[m].soft_cap;
      if (t == 2) {
        spec.params.k_scale = 0.5F;
        spec.params.v_scale = 1.5F;
      }
      spec.values = (t % 2 == 0) ? testutil::ValueDistribution::kUniform
                                 : testutil::ValueDistribution::kNormal;
      spec.seed = ++seed;
      const std::string diff =
          RunAndCompare(spec, FlashOptions(kind, tiles[t]));
      EXPECT_EQ(diff, "") << CaseName(c) << " masking " << m << " tiles "
                          << tiles[t].q_tokens_per_block << "x"
                          << tiles[t].kv_tokens_per_block << " kernel "
                          << KernelKindName(kind);
    }
  }
}

std::vector<SweepCase> SweepCases() {
  std::vector<SweepCase> cases;
  const std::uint32_t head_dims[] = {64, 80, 96, 128, 240, 256};
  const std::uint32_t groups[] = {1, 3, 4, 5, 6};
  const StorageType storages[] = {StorageType::kF32, StorageType::kF16,
                                  StorageType::kBf16};
  // Every head dim and every group size with every storage type, without
  // the full cross product (each case is a few hundred oracle evaluations).
  std::size_t i = 0;
  for (std::uint32_t head_dim : head_dims) {
    for (StorageType storage : storages) {
      cases.push_back({head_dim, groups[i % 5], storage});
      ++i;
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(
    HeadDimsGroupsStorage, FlashKernelSweepTest,
    ::testing::ValuesIn(SweepCases()),
    [](const ::testing::TestParamInfo<SweepCase>& param_info) {
      return CaseName(param_info.param);
    });

// Odd head dims exercise the micro-kernels' remainder paths (D not a
// multiple of the 6-row micro-tile or of 8 lanes).
TEST(FlashKernelTest, OddHeadDims) {
  for (std::uint32_t head_dim : {1U, 2U, 7U, 13U, 33U}) {
    BatchSpec spec;
    spec.sequences = {{5, 9}, {19, 19}, {1, 4}};
    spec.num_q_heads = 6;
    spec.num_kv_heads = 2;
    spec.head_dim = head_dim;
    spec.page_size_tokens = 3;
    spec.storage = StorageType::kF16;
    spec.seed = head_dim;
    EXPECT_EQ(RunAndCompare(spec, FlashOptions(KernelKind::kMixed, {4, 7})), "")
        << "head_dim " << head_dim;
  }
}

// The prefill range (chunks of chunk_prefill_size) after a decode range,
// with the decode rows also served by the flash kernel (its mixed kernel on
// q_len 1 rows).
TEST(FlashKernelTest, PrefillRangeAndDecodeRowsThroughFlash) {
  BatchSpec spec;
  spec.sequences = {{1, 30}, {1, 1}, {1, 17}, {32, 32}, {32, 100}, {5, 60}};
  spec.distribution = std::array<std::int32_t, 3>{3, 5, 6};
  spec.params.chunk_prefill_size = 32;
  spec.num_q_heads = 8;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.page_size_tokens = 16;
  spec.storage = StorageType::kBf16;
  spec.params.sm_scale = 0.125F;
  for (KernelKind kind : {KernelKind::kPrefill, KernelKind::kMixed}) {
    for (BlockSizes blocks : {BlockSizes{}, BlockSizes{8, 24}}) {
      EXPECT_EQ(RunAndCompare(spec, FlashOptions(kind, blocks)), "")
          << KernelKindName(kind) << " " << blocks.q_tokens_per_block;
    }
  }
}

// Large scores (normal values, sm_scale 1, D 128) stress the online
// softmax's rescaling: a later block's max far above an earlier one's.
TEST(FlashKernelTest, LargeScoresRescaleStably) {
  BatchSpec spec;
  spec.sequences = {{64, 200}};
  spec.num_q_heads = 4;
  spec.num_kv_heads = 1;
  spec.head_dim = 128;
  spec.page_size_tokens = 16;
  spec.values = testutil::ValueDistribution::kNormal;
  spec.params.sm_scale = 1.0F;
  EXPECT_EQ(RunAndCompare(spec, FlashOptions(KernelKind::kPrefill, {16, 32})),
            "");
}

// Two worker threads: items of one plan run concurrently and write disjoint
// rows.
TEST(FlashKernelTest, RunsOnTwoWorkers) {
  auto executor = runtime::Executor::Create({.num_workers = 2});
  ASSERT_TRUE(executor.ok()) << executor.status().ToString();
  BatchSpec spec;
  spec.sequences = {{1, 9}, {2, 40}, {128, 128}, {96, 300}, {7, 7}};
  spec.num_q_heads = 8;
  spec.num_kv_heads = 2;
  spec.head_dim = 96;
  spec.page_size_tokens = 16;
  spec.storage = StorageType::kF16;
  spec.params.sliding_window = 50;
  EXPECT_EQ(RunAndCompare(spec, FlashOptions(KernelKind::kMixed, {16, 32}, 2),
                          executor->get()),
            "");
}

// Tiles the kernel computes for a causal sequence with q_len == kv_len (gap
// 0): per query block [a0, a1), the union of its rows' visible keys
// [lo, a1), in kv blocks starting at lo.
std::uint64_t ExpectedTiles(std::int32_t q_len, std::int32_t q_block,
                            std::int32_t kv_block,
                            std::optional<std::int32_t> window) {
  std::uint64_t tiles = 0;
  for (std::int32_t a0 = 0; a0 < q_len; a0 += q_block) {
    const std::int32_t a1 = std::min(q_len, a0 + q_block);
    const std::int32_t lo = window ? std::max(0, a0 - *window + 1) : 0;
    const std::int32_t hi = a1;  // causal: the last row sees up to a1 - 1
    tiles += static_cast<std::uint64_t>((hi - lo + kv_block - 1) / kv_block);
  }
  return tiles;
}

// A sliding window hides most of a long sequence from every query block:
// those tiles must not be computed (the counters say how many were), and the
// answer must still be right.
TEST(FlashKernelTest, WindowSkipsHiddenTiles) {
  constexpr std::int32_t kLen = 512;
  constexpr std::int32_t kWindow = 64;
  constexpr std::uint32_t kQBlock = 32;
  constexpr std::uint32_t kKvBlock = 32;
  BatchSpec spec;
  spec.sequences = {{kLen, kLen}};
  spec.num_q_heads = 4;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.page_size_tokens = 16;
  spec.params.sliding_window = kWindow;
  internal::ResetFlashTileCounts();
  EXPECT_EQ(RunAndCompare(
                spec, FlashOptions(KernelKind::kPrefill, {kQBlock, kKvBlock})),
            "");
  const internal::FlashTileCounts counts = internal::GetFlashTileCounts();
  const std::uint64_t blocks_per_head = kLen / kQBlock;
  EXPECT_EQ(counts.query_blocks, 2 * blocks_per_head);
  EXPECT_EQ(counts.grid_tiles, 2 * blocks_per_head * (kLen / kKvBlock));
  EXPECT_EQ(counts.full_tiles + counts.masked_tiles,
            2 * ExpectedTiles(kLen, kQBlock, kKvBlock, kWindow));
  // 16 query blocks x 16 kv blocks per head, at most 3 computed per query
  // block: most of the grid is skipped.
  EXPECT_GE(counts.skipped_tiles(), 2 * blocks_per_head * 12);
  // Tiles strictly inside the window and below the diagonal need no mask.
  EXPECT_GT(counts.full_tiles, 0U);
}

// Causal prefill: the tiles above the diagonal are skipped, those inside it
// computed without a mask, only the diagonal ones masked.
TEST(FlashKernelTest, CausalSkipsTilesAboveTheDiagonal) {
  constexpr std::int32_t kLen = 256;
  constexpr std::uint32_t kQBlock = 32;
  constexpr std::uint32_t kKvBlock = 32;
  BatchSpec spec;
  spec.sequences = {{kLen, kLen}};
  spec.num_q_heads = 2;
  spec.num_kv_heads = 1;
  spec.head_dim = 80;
  spec.page_size_tokens = 8;
  spec.storage = StorageType::kF16;
  internal::ResetFlashTileCounts();
  EXPECT_EQ(RunAndCompare(
                spec, FlashOptions(KernelKind::kPrefill, {kQBlock, kKvBlock})),
            "");
  const internal::FlashTileCounts counts = internal::GetFlashTileCounts();
  constexpr std::uint64_t kBlocks = kLen / kQBlock;  // 8
  EXPECT_EQ(counts.query_blocks, kBlocks);
  EXPECT_EQ(counts.full_tiles + counts.masked_tiles,
            ExpectedTiles(kLen, kQBlock, kKvBlock, std::nullopt));
  // Aligned blocks: exactly one diagonal tile per query block.
  EXPECT_EQ(counts.masked_tiles, kBlocks);
  EXPECT_EQ(counts.full_tiles, kBlocks * (kBlocks - 1) / 2);
  EXPECT_EQ(counts.skipped_tiles(), kBlocks * (kBlocks - 1) / 2);
}

// Non-causal without a window: every tile is computed and none is masked.
TEST(FlashKernelTest, NonCausalComputesEveryTileUnmasked) {
  BatchSpec spec;
  spec.sequences = {{40, 100}};
  spec.num_q_heads = 3;
  spec.num_kv_heads = 1;
  spec.head_dim = 64;
  spec.page_size_tokens = 16;
  spec.params.causal = false;
  internal::ResetFlashTileCounts();
  EXPECT_EQ(RunAndCompare(spec, FlashOptions(KernelKind::kMixed, {20, 25})),
            "");
  const internal::FlashTileCounts counts = internal::GetFlashTileCounts();
  EXPECT_EQ(counts.query_blocks, 2U);
  EXPECT_EQ(counts.grid_tiles, 8U);
  EXPECT_EQ(counts.full_tiles, 8U);
  EXPECT_EQ(counts.masked_tiles, 0U);
}

// A KV split of a one-token item (partial >= 0): the kernel writes
// unnormalised softmax states that MergePartialRows combines into the same
// answer as the oracle's. The plan never splits flash items today; this
// keeps the path correct for when it does.
TEST(FlashKernelTest, PartialStatesOfAKvSplitMerge) {
  BatchSpec spec;
  spec.sequences = {{1, 150}, {1, 33}};
  spec.num_q_heads = 8;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.page_size_tokens = 16;
  spec.storage = StorageType::kF16;
  spec.params.soft_cap = 20.0F;
  TestBatch batch = BuildBatch(spec);
  const testutil::OracleOutput want = RunOracle(batch.original_oracle_input());
  const PlanOptions options = FlashOptions(KernelKind::kMixed, {});
  StatusOr<AttentionPlan> plan = AttentionPlan::Create(
      batch.metadata(), batch.cache(), batch.params, options);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  // Run writes the new tokens into the cache (and out, overwritten below).
  ASSERT_TRUE(attention::Run(*plan, batch.tensors()).ok());
  const internal::ValidatedBatch& validated = plan->data().batch;
  const std::size_t slot_floats = internal::PartialSlotFloats(validated);
  constexpr std::int32_t kSplits = 3;
  const std::uint32_t num_kv_heads = validated.shape.num_kv_heads;
  std::vector<float> partials(kSplits * num_kv_heads * slot_floats);
  std::fill(batch.out.begin(), batch.out.end(), NAN);
  internal::KernelArgs args;
  args.batch = &validated;
  args.q = batch.q.data();
  args.cache = batch.cache();
  args.out = batch.out.data();
  args.partials = partials.data();
  const std::size_t group = validated.group_size;
  const std::size_t head_dim = validated.shape.head_dim;
  for (std::uint32_t s = 0; s < validated.sequences.size(); ++s) {
    const internal::SequenceSpan& seq = validated.sequences[s];
    // One item per split covering every kv head (the decode items' shape):
    // kv head h's state of split j goes to slot j + h * kSplits.
    for (std::int32_t split = 0; split < kSplits; ++split) {
      internal::WorkItem item;
      item.sequence = s;
      item.kv_head = 0;
      item.num_kv_heads = num_kv_heads;
      item.q_begin = 0;
      item.q_end = 1;
      item.kv_begin = seq.kv_len * split / kSplits;
      item.kv_end = seq.kv_len * (split + 1) / kSplits;
      item.partial = split;
      item.partial_head_stride = kSplits;
      item.kernel = KernelKind::kMixed;
      internal::RunFlashItem(args, item, {4, 16});
    }
    for (std::uint32_t h = 0; h < num_kv_heads; ++h) {
      for (std::size_t g = 0; g < group; ++g) {
        float* dst = batch.out.data() + (static_cast<std::size_t>(seq.q_begin) *
                                             validated.shape.num_q_heads +
                                         h * group + g) *
                                            head_dim;
        internal::MergePartialRows(
            partials.data() + h * kSplits * slot_floats + g * (head_dim + 2),
            kSplits, slot_floats, static_cast<std::uint32_t>(head_dim),
            validated.params.v_scale, dst);
      }
    }
  }
  EXPECT_EQ(CompareWithOracle(batch, want), "");
}

// The default tiles keep the Q and O panels within half of L2 and give every
// head dim and group at least one query token and a few keys per block.
TEST(FlashKernelTest, DefaultBlockSizesFitTheCaches) {
  for (std::uint32_t head_dim : {1U, 64U, 128U, 256U, 512U}) {
    for (std::uint32_t group : {1U, 4U, 6U, 64U}) {
      internal::ValidatedBatch batch;
      batch.shape = {1, group, 1, head_dim};
      batch.group_size = group;
      for (KernelKind kind : {KernelKind::kPrefill, KernelKind::kMixed}) {
        const BlockSizes sizes = internal::DefaultBlockSizes(kind, batch);
        EXPECT_GE(sizes.q_tokens_per_block, 1U);
        EXPECT_GE(sizes.kv_tokens_per_block, 16U);
        const std::uint64_t rows =
            static_cast<std::uint64_t>(sizes.q_tokens_per_block) * group;
        if (sizes.q_tokens_per_block > 1) {
          EXPECT_LE(2 * rows * head_dim * sizeof(float), 512U * 1024U)
              << "d " << head_dim << " g " << group;
        }
      }
    }
  }
}

}  // namespace
}  // namespace rpa::attention
