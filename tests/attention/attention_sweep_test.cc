// Sweeps through the public API (Attend with the default kernels) against
// the double-precision oracle (tests/attention/oracle.h): kv_len around page
// boundaries, page sizes, head dims, GQA ratios, storage types, masks and
// parameters, on batches built to expose stray reads and writes (NaN-filled
// cache, shuffled page tables, garbage unused entries, NaN padding rows,
// sequences past distribution[2]). Every case checks out within the SPEC
// section 4 bound and the whole cache byte for byte.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/oracle.h"

#include "rpa/attention/plan.h"
#include "rpa/attention/storage_convert.h"

namespace rpa::attention {
namespace {

using memory::StorageType;
using testutil::BatchSpec;
using testutil::BuildBatch;
using testutil::SequenceSpec;
using testutil::TestBatch;

// Attend, then the oracle's out and cache.
void ExpectMatchesOracle(TestBatch* batch, const PlanOptions& options = {}) {
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch->original_oracle_input());
  const Status status =
      Attend(batch->metadata(), batch->tensors(), batch->params, options);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(testutil::CompareWithOracle(*batch, expected), "");
}

std::string StorageName(StorageType type) {
  return std::string(memory::StorageTypeName(type));
}

// --- kv_len around page boundaries x page sizes x storage ------------------

class KvLenSweepTest
    : public ::testing::TestWithParam<std::tuple<std::uint32_t, StorageType>> {
};

TEST_P(KvLenSweepTest, DecodeAndMixedAroundPageBoundaries) {
  const auto [page_size, storage] = GetParam();
  const auto ps = static_cast<std::int32_t>(page_size);
  std::vector<std::int32_t> kv_lens = {1, ps - 1, ps, ps + 1, 5 * ps + 3};
  kv_lens.erase(std::remove(kv_lens.begin(), kv_lens.end(), 0), kv_lens.end());
  BatchSpec spec;
  for (std::int32_t kv : kv_lens) spec.sequences.push_back({1, kv});
  for (std::int32_t kv : kv_lens) {
    spec.sequences.push_back({kv, kv});
    spec.sequences.push_back({std::min(kv, 3), kv});
  }
  const auto num_decode = static_cast<std::int32_t>(kv_lens.size());
  const auto num_seqs = static_cast<std::int32_t>(spec.sequences.size());
  spec.sequences.push_back({2, 9});  // past d2: must be left alone
  spec.distribution =
      std::array<std::int32_t, 3>{num_decode, num_decode, num_seqs};
  spec.num_q_heads = 8;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.page_size_tokens = page_size;
  spec.storage = storage;
  spec.seed = page_size * 3 + static_cast<std::uint32_t>(storage);
  TestBatch batch = BuildBatch(spec);
  ExpectMatchesOracle(&batch);
}

INSTANTIATE_TEST_SUITE_P(
    PageSizes, KvLenSweepTest,
    ::testing::Combine(::testing::Values(1U, 8U, 16U, 32U),
                       ::testing::Values(StorageType::kF32, StorageType::kF16,
                                         StorageType::kBf16)),
    [](const auto& param_info) {
      std::string name = "ps";
      name += std::to_string(std::get<0>(param_info.param));
      name += "_";
      name += StorageName(std::get<1>(param_info.param));
      return name;
    });

// --- head dims x GQA ratios --------------------------------------------------

struct HeadCase {
  std::uint32_t head_dim;
  std::uint32_t num_q_heads;
  std::uint32_t num_kv_heads;
  StorageType storage;
};

class HeadSweepTest : public ::testing::TestWithParam<HeadCase> {};

TEST_P(HeadSweepTest, DecodePrefillAndMixedInOneBatch) {
  const HeadCase& head = GetParam();
  BatchSpec spec;
  // 3 decode, 2 prefill chunks of 8, 3 mixed, 1 past d2.
  spec.sequences = {{1, 37}, {1, 1}, {1, 16},  {8, 8}, {8, 45},
                    {5, 20}, {1, 3}, {13, 13}, {3, 7}};
  spec.distribution = std::array<std::int32_t, 3>{3, 5, 8};
  spec.params.chunk_prefill_size = 8;
  spec.head_dim = head.head_dim;
  spec.num_q_heads = head.num_q_heads;
  spec.num_kv_heads = head.num_kv_heads;
  spec.storage = head.storage;
  spec.page_size_tokens = 16;
  spec.seed = head.head_dim * 131 + head.num_q_heads;
  TestBatch batch = BuildBatch(spec);
  ExpectMatchesOracle(&batch);
}

INSTANTIATE_TEST_SUITE_P(
    HeadDimsAndGroups, HeadSweepTest,
    ::testing::Values(HeadCase{64, 32, 8, StorageType::kBf16},
                      HeadCase{80, 12, 2, StorageType::kF32},
                      HeadCase{96, 5, 1, StorageType::kF16},
                      HeadCase{128, 3, 3, StorageType::kBf16},
                      HeadCase{240, 8, 1, StorageType::kF32},
                      HeadCase{256, 32, 8, StorageType::kF16},
                      HeadCase{64, 12, 2, StorageType::kF16},
                      HeadCase{128, 8, 1, StorageType::kF32},
                      HeadCase{16, 5, 1, StorageType::kBf16},
                      HeadCase{4, 3, 3, StorageType::kF32}),
    [](const auto& param_info) {
      const HeadCase& head = param_info.param;
      std::string name = "d";
      name += std::to_string(head.head_dim);
      name += "_q";
      name += std::to_string(head.num_q_heads);
      name += "_kv";
      name += std::to_string(head.num_kv_heads);
      name += "_";
      name += StorageName(head.storage);
      return name;
    });

// --- parameters and masks ----------------------------------------------------

struct ParamCase {
  const char* name;
  AttentionParams params;
  StorageType storage = StorageType::kF32;
  testutil::ValueDistribution values = testutil::ValueDistribution::kUniform;
};

AttentionParams MakeParams(float sm_scale, std::optional<std::int32_t> window,
                           std::optional<float> soft_cap,
                           std::optional<float> k_scale,
                           std::optional<float> v_scale, bool causal) {
  AttentionParams params;
  params.sm_scale = sm_scale;
  params.sliding_window = window;
  params.soft_cap = soft_cap;
  params.k_scale = k_scale;
  params.v_scale = v_scale;
  params.causal = causal;
  return params;
}

class ParamSweepTest : public ::testing::TestWithParam<ParamCase> {};

TEST_P(ParamSweepTest, MixedBatch) {
  const ParamCase& param = GetParam();
  BatchSpec spec;
  spec.sequences = {{1, 70}, {1, 5},   {1, 33},  {16, 16}, {16, 90},
                    {7, 7},  {9, 100}, {30, 41}, {2, 2}};
  spec.distribution = std::array<std::int32_t, 3>{3, 5, 8};
  spec.params = param.params;
  spec.params.chunk_prefill_size = 16;
  spec.num_q_heads = 6;
  spec.num_kv_heads = 2;
  spec.head_dim = 32;
  spec.page_size_tokens = 8;
  spec.storage = param.storage;
  spec.values = param.values;
  spec.seed = 99;
  TestBatch batch = BuildBatch(spec);
  ExpectMatchesOracle(&batch);
}

INSTANTIATE_TEST_SUITE_P(
    Params, ParamSweepTest,
    ::testing::Values(
        ParamCase{"defaults", MakeParams(1, {}, {}, {}, {}, true)},
        ParamCase{"sm_scale", MakeParams(0.125F, {}, {}, {}, {}, true)},
        ParamCase{"large_sm_scale_normal",
                  MakeParams(3.0F, {}, {}, {}, {}, true), StorageType::kF32,
                  testutil::ValueDistribution::kNormal},
        ParamCase{"negative_sm_scale", MakeParams(-0.5F, {}, {}, {}, {}, true)},
        ParamCase{"soft_cap", MakeParams(1, {}, 2.5F, {}, {}, true),
                  StorageType::kBf16},
        ParamCase{"negative_soft_cap", MakeParams(1, {}, -3.0F, {}, {}, true)},
        ParamCase{"soft_cap_normal", MakeParams(2, {}, 5.0F, {}, {}, true),
                  StorageType::kF16, testutil::ValueDistribution::kNormal},
        ParamCase{"k_v_scales", MakeParams(0.3F, {}, {}, 1.7F, 0.4F, true),
                  StorageType::kF16},
        ParamCase{"window_1", MakeParams(1, 1, {}, {}, {}, true)},
        ParamCase{"window_5", MakeParams(1, 5, {}, {}, {}, true),
                  StorageType::kBf16},
        ParamCase{"window_16", MakeParams(1, 16, {}, {}, {}, true)},
        ParamCase{"window_past_kv", MakeParams(1, 1000, {}, {}, {}, true)},
        ParamCase{"non_causal", MakeParams(1, {}, {}, {}, {}, false)},
        ParamCase{"non_causal_window", MakeParams(1, 9, {}, {}, {}, false),
                  StorageType::kF16},
        ParamCase{"everything", MakeParams(0.2F, 12, 4.0F, 1.3F, 0.8F, true),
                  StorageType::kBf16, testutil::ValueDistribution::kNormal},
        ParamCase{"everything_non_causal",
                  MakeParams(0.2F, 12, 4.0F, 1.3F, 0.8F, false),
                  StorageType::kF32, testutil::ValueDistribution::kNormal}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

// --- sliding-window write-back (SPEC section 2) -----------------------------

TEST(AttentionSweepTest, WindowHiddenTokensAreStillWritten) {
  // The public TPU kernel leaves positions [0, 256) unwritten here.
  for (const StorageType storage : {StorageType::kF32, StorageType::kBf16}) {
    BatchSpec spec;
    spec.sequences = {{393, 393}};
    spec.params.sliding_window = 128;
    spec.num_q_heads = 2;
    spec.num_kv_heads = 1;
    spec.head_dim = 64;
    spec.page_size_tokens = 16;
    spec.storage = storage;
    TestBatch batch = BuildBatch(spec);
    ExpectMatchesOracle(&batch);
    // Spelled out: every position [0, 393) holds the stored new k and v.
    const memory::KvLayerView cache = batch.cache();
    const std::size_t element = memory::StorageBytes(storage);
    std::vector<std::byte> want(64 * element);
    for (std::int32_t pos = 0; pos < 393; ++pos) {
      const std::int32_t page =
          batch.page_indices[static_cast<std::size_t>(pos / 16)];
      const std::byte* slot = cache.SlotAddress(
          memory::MakePageId(static_cast<std::uint32_t>(page)),
          static_cast<std::uint32_t>(pos % 16));
      ConvertToStorage(std::span<const float>(
                           &batch.k[static_cast<std::size_t>(pos) * 64], 64),
                       storage, want.data());
      ASSERT_EQ(std::memcmp(slot, want.data(), want.size()), 0)
          << "K of position " << pos;
      ConvertToStorage(std::span<const float>(
                           &batch.v[static_cast<std::size_t>(pos) * 64], 64),
                       storage, want.data());
      ASSERT_EQ(std::memcmp(slot + 64 * element, want.data(), want.size()), 0)
          << "V of position " << pos;
    }
  }
}

TEST(AttentionSweepTest, WindowWithLongCachedPrefix) {
  BatchSpec spec;
  spec.sequences = {{1, 1000}, {1, 129}, {200, 1000}, {128, 128}, {5, 300}};
  spec.distribution = std::array<std::int32_t, 3>{2, 2, 5};
  spec.params.sliding_window = 128;
  spec.num_q_heads = 4;
  spec.num_kv_heads = 2;
  spec.head_dim = 32;
  spec.page_size_tokens = 16;
  spec.storage = StorageType::kF16;
  TestBatch batch = BuildBatch(spec);
  ExpectMatchesOracle(&batch);
}

// --- layouts -----------------------------------------------------------------

TEST(AttentionSweepTest, ExactTablesNoSlackNoPadding) {
  BatchSpec spec;
  spec.sequences = {{1, 32}, {4, 32}, {32, 32}};
  spec.num_q_heads = 4;
  spec.num_kv_heads = 4;
  spec.head_dim = 16;
  spec.page_size_tokens = 8;
  spec.extra_pages = 0;
  spec.extra_table_entries = 0;
  spec.padding_tokens = 0;
  spec.shuffle_pages = false;
  TestBatch batch = BuildBatch(spec);
  ExpectMatchesOracle(&batch);
}

TEST(AttentionSweepTest, OnlyDecodeSequences) {
  BatchSpec spec;
  std::mt19937 rng(5);
  for (int i = 0; i < 24; ++i) {
    spec.sequences.push_back({1, static_cast<std::int32_t>(1 + rng() % 300)});
  }
  spec.distribution = std::array<std::int32_t, 3>{24, 24, 24};
  spec.num_q_heads = 16;
  spec.num_kv_heads = 4;
  spec.head_dim = 64;
  spec.page_size_tokens = 16;
  spec.storage = StorageType::kBf16;
  TestBatch batch = BuildBatch(spec);
  ExpectMatchesOracle(&batch);
}

TEST(AttentionSweepTest, OnlyPrefillChunks) {
  BatchSpec spec;
  spec.sequences = {{32, 32}, {32, 64}, {32, 200}, {32, 33}};
  spec.distribution = std::array<std::int32_t, 3>{0, 4, 4};
  spec.params.chunk_prefill_size = 32;
  spec.num_q_heads = 8;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.page_size_tokens = 16;
  TestBatch batch = BuildBatch(spec);
  ExpectMatchesOracle(&batch);
}

TEST(AttentionSweepTest, UnprocessedSequencesAndPaddingAreLeftAlone) {
  BatchSpec spec;
  spec.sequences = {{1, 10}, {3, 3}, {4, 20}, {1, 5}, {6, 6}};
  spec.distribution = std::array<std::int32_t, 3>{1, 1, 2};
  spec.num_q_heads = 2;
  spec.num_kv_heads = 1;
  spec.head_dim = 8;
  spec.page_size_tokens = 4;
  spec.padding_tokens = 5;
  TestBatch batch = BuildBatch(spec);
  ExpectMatchesOracle(&batch);
  EXPECT_EQ(batch.out.size(), 4U * 2 * 8);
}

TEST(AttentionSweepTest, RandomBatches) {
  std::mt19937 rng(2024);
  const StorageType storages[] = {StorageType::kF32, StorageType::kF16,
                                  StorageType::kBf16};
  for (int trial = 0; trial < 25; ++trial) {
    BatchSpec spec;
    const std::int32_t chunk = 1 + static_cast<std::int32_t>(rng() % 12);
    const int num_decode = static_cast<int>(rng() % 4);
    const int num_prefill = static_cast<int>(rng() % 3);
    const int num_mixed = static_cast<int>(rng() % 4);
    const int num_idle = static_cast<int>(rng() % 2);
    const auto kv_after = [&](std::int32_t q_len) {
      return q_len + static_cast<std::int32_t>(rng() % 50);
    };
    for (int i = 0; i < num_decode; ++i)
      spec.sequences.push_back({1, kv_after(1)});
    for (int i = 0; i < num_prefill; ++i) {
      spec.sequences.push_back({chunk, kv_after(chunk)});
    }
    for (int i = 0; i < num_mixed + num_idle; ++i) {
      const auto q = 1 + static_cast<std::int32_t>(rng() % 20);
      spec.sequences.push_back({q, kv_after(q)});
    }
    if (spec.sequences.empty()) spec.sequences.push_back({1, 1});
    const int processed = static_cast<int>(spec.sequences.size()) - num_idle;
    spec.distribution = std::array<std::int32_t, 3>{
        num_decode, num_decode + num_prefill, std::max(processed, 0)};
    spec.params.chunk_prefill_size = chunk;
    spec.num_kv_heads = 1 + static_cast<std::uint32_t>(rng() % 3);
    spec.num_q_heads =
        spec.num_kv_heads * (1 + static_cast<std::uint32_t>(rng() % 4));
    spec.head_dim = 4U << (rng() % 5);
    spec.page_size_tokens = 1 + static_cast<std::uint32_t>(rng() % 16);
    spec.storage = storages[rng() % 3];
    spec.params.causal = rng() % 4 != 0;
    if (rng() % 3 == 0) {
      spec.params.sliding_window = 1 + static_cast<std::int32_t>(rng() % 30);
    }
    if (rng() % 3 == 0)
      spec.params.soft_cap = 1.0F + static_cast<float>(rng() % 10);
    spec.params.sm_scale = 0.1F + 0.1F * static_cast<float>(rng() % 10);
    spec.values = rng() % 2 == 0 ? testutil::ValueDistribution::kUniform
                                 : testutil::ValueDistribution::kNormal;
    spec.seed = rng();
    TestBatch batch = BuildBatch(spec);
    SCOPED_TRACE("trial " + std::to_string(trial));
    ExpectMatchesOracle(&batch);
  }
}

TEST(AttentionSweepTest, NanInAVisibleCachedKeyStaysInItsSequence) {
  // A NaN inside kv_len is the caller's data (unlike slots past kv_len): the
  // sequence that sees it may get NaN rows, but the call must not crash (no
  // data-dependent check) and no other sequence may be affected. Sequence 1
  // (decode, token 1) and sequence 3 (mixed, tokens 4-6) see NaN keys and
  // values at every cached position.
  BatchSpec spec;
  spec.sequences = {{1, 6}, {1, 9}, {2, 2}, {3, 8}};
  spec.distribution = std::array<std::int32_t, 3>{2, 2, 4};
  spec.num_q_heads = 4;
  spec.num_kv_heads = 2;
  spec.head_dim = 8;
  spec.page_size_tokens = 4;
  TestBatch batch = BuildBatch(spec);
  const std::array<std::byte, 4> nan = testutil::NanBytes(StorageType::kF32);
  for (const std::size_t seq : {1U, 3U}) {
    // Every cached position (< gap), whole tokens: K and V of both kv heads.
    const std::int32_t gap =
        batch.kv_lens[seq] - (batch.cu_q_lens[seq + 1] - batch.cu_q_lens[seq]);
    for (std::int32_t pos = 0; pos < gap; ++pos) {
      const std::int32_t page =
          batch.page_indices[seq * batch.pages_per_sequence +
                             static_cast<std::size_t>(pos / 4)];
      std::byte* slot = batch.cache().SlotAddress(
          memory::MakePageId(static_cast<std::uint32_t>(page)),
          static_cast<std::uint32_t>(pos % 4));
      for (std::size_t offset = 0; offset < batch.cache().token_bytes;
           offset += 4) {
        std::memcpy(slot + offset, nan.data(), 4);
      }
    }
  }
  std::memcpy(batch.original_cache.data(), batch.cache_bytes().data(),
              batch.original_cache.size());
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch.original_oracle_input());
  const KernelKind kinds[] = {KernelKind::kDecode, KernelKind::kPrefill,
                              KernelKind::kMixed};
  for (const KernelKind decode : kinds) {
    for (const KernelKind mixed : {KernelKind::kPrefill, KernelKind::kMixed}) {
      SCOPED_TRACE(std::string(KernelKindName(decode)) + " / " +
                   std::string(KernelKindName(mixed)));
      batch.Reset();
      const PlanOptions options{.decode_range_kernel = decode,
                                .mixed_range_kernel = mixed};
      const Status status =
          Attend(batch.metadata(), batch.tensors(), batch.params, options);
      ASSERT_TRUE(status.ok()) << status;
      EXPECT_EQ(testutil::DescribeCacheDifference(
                    batch.cache(), batch.cache_bytes(), expected.cache),
                "");
      // Tokens 0 (sequence 0) and 2-3 (sequence 2) match the oracle.
      const std::size_t row_floats = 4 * 8;
      for (const auto& [first, last] :
           {std::pair<std::size_t, std::size_t>{0, 1},
            std::pair<std::size_t, std::size_t>{2, 4}}) {
        const std::size_t count = (last - first) * row_floats;
        const testutil::Comparison comparison =
            testutil::CompareOutputs(std::span<const float>(batch.out).subspan(
                                         first * row_floats, count),
                                     std::span<const double>(expected.out)
                                         .subspan(first * row_floats, count),
                                     4, 8);
        EXPECT_TRUE(comparison.ok) << comparison.first_bad;
      }
    }
  }
}

// --- the oracle itself -------------------------------------------------------

TEST(OracleTest, OneKeyGivesItsValue) {
  BatchSpec spec;
  spec.sequences = {{1, 1}};
  spec.head_dim = 4;
  spec.params.v_scale = 2.0F;
  TestBatch batch = BuildBatch(spec);
  const testutil::OracleOutput out =
      testutil::RunOracle(batch.original_oracle_input());
  for (std::size_t d = 0; d < 4; ++d) {
    EXPECT_DOUBLE_EQ(out.out[d], 2.0 * static_cast<double>(batch.v[d]));
  }
}

TEST(OracleTest, EqualScoresAverageTheVisibleValues) {
  // q = 0 gives equal scores: out = mean of the visible values. Causal with
  // window 2: query at position 2 sees keys 1 and 2 only.
  BatchSpec spec;
  spec.sequences = {{3, 3}};
  spec.head_dim = 2;
  spec.params.sliding_window = 2;
  TestBatch batch = BuildBatch(spec);
  std::fill(batch.q.begin(), batch.q.end(), 0.0F);
  const testutil::OracleOutput out =
      testutil::RunOracle(batch.original_oracle_input());
  for (std::size_t d = 0; d < 2; ++d) {
    EXPECT_DOUBLE_EQ(out.out[d], static_cast<double>(batch.v[d]));
    EXPECT_NEAR(out.out[2 * 2 + d],
                (static_cast<double>(batch.v[2 + d]) +
                 static_cast<double>(batch.v[4 + d])) /
                    2,
                1e-15);
  }
}

TEST(OracleTest, ReadsRoundedNewTokens) {
  BatchSpec spec;
  spec.sequences = {{1, 1}};
  spec.head_dim = 1;
  spec.storage = StorageType::kBf16;
  TestBatch batch = BuildBatch(spec);
  batch.v[0] = 1.0F + 0x1p-10F;  // not a bf16
  const testutil::OracleOutput out =
      testutil::RunOracle(batch.original_oracle_input());
  EXPECT_EQ(out.out[0], 1.0);
}

// Standard-normal inputs with sm_scale * k_scale ~ 10 (what the fuzzer
// draws): scores of a few hundred, whose f32 rounding alone exceeds the SPEC
// bound. Every kernel's error stays within the oracle's rounding bound.
TEST(OracleTest, RoundingBoundCoversTheKernelsOnScaledScores) {
  BatchSpec spec;
  spec.sequences = {{1, 28}, {7, 28}, {3, 30}};
  spec.distribution = std::array<std::int32_t, 3>{1, 2, 3};
  spec.params.chunk_prefill_size = 7;
  spec.num_q_heads = 6;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.page_size_tokens = 5;
  spec.params.sm_scale = 2.875F;
  spec.params.k_scale = 3.5625F;
  spec.params.v_scale = 3.5625F;
  spec.values = testutil::ValueDistribution::kNormal;
  for (const KernelKind kernel :
       {KernelKind::kDecode, KernelKind::kPrefill, KernelKind::kMixed}) {
    for (std::uint64_t seed = 1; seed <= 8; ++seed) {
      spec.seed = seed;
      TestBatch batch = BuildBatch(spec);
      const testutil::OracleOutput expected =
          testutil::RunOracle(batch.original_oracle_input());
      const double largest =
          *std::max_element(expected.f32_rounding_bound.begin(),
                            expected.f32_rounding_bound.end());
      EXPECT_GT(largest, 1e-4);  // the SPEC bound alone would not do
      PlanOptions options;
      options.decode_range_kernel = kernel;
      if (kernel != KernelKind::kDecode) {
        options.prefill_range_kernel = kernel;
        options.mixed_range_kernel = kernel;
      }
      ASSERT_TRUE(
          Attend(batch.metadata(), batch.tensors(), batch.params, options)
              .ok());
      const testutil::Comparison comparison = testutil::CompareOutputs(
          batch.out, expected.out, spec.num_q_heads, spec.head_dim, 1e-4,
          expected.f32_rounding_bound);
      EXPECT_TRUE(comparison.ok)
          << "seed " << seed << ": " << comparison.first_bad;
    }
  }
}

TEST(OracleTest, CompareOutputsAcceptsErrorsWithinTheRoundingBound) {
  const std::vector<float> actual = {1.5F, 2.0F};
  const std::vector<double> expected = {1.0, 2.0};
  // 0.5 off: outside 1e-4 * (1 + 1), inside a bound of 0.5, not of 0.4.
  EXPECT_FALSE(testutil::CompareOutputs(actual, expected, 1, 2).ok);
  const std::vector<double> wide = {0.5, 0.0};
  EXPECT_TRUE(testutil::CompareOutputs(actual, expected, 1, 2, 1e-4, wide).ok);
  const std::vector<double> narrow = {0.4, 0.0};
  const testutil::Comparison off =
      testutil::CompareOutputs(actual, expected, 1, 2, 1e-4, narrow);
  EXPECT_FALSE(off.ok);
  EXPECT_EQ(off.num_bad, 1U);
  // A NaN never passes, whatever the bound; a bound of the wrong size fails.
  const std::vector<float> nan = {std::nanf(""), 2.0F};
  EXPECT_FALSE(testutil::CompareOutputs(nan, expected, 1, 2, 1e-4, wide).ok);
  const std::vector<double> short_bound = {0.5};
  EXPECT_FALSE(
      testutil::CompareOutputs(actual, expected, 1, 2, 1e-4, short_bound).ok);
}

}  // namespace
}  // namespace rpa::attention
