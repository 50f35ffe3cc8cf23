// Sweeps through the public API (Attend with the default kernels) against
// the double-precision oracle (tests/attention/oracle.h): kv_len around page
// boundaries, page sizes, head dims, GQA ratios, storage types, masks and
// parameters, on batches built to expose stray reads and writes (NaN-filled
// cache, shuffled page tables, garbage unused entries, NaN padding rows,
// sequences past distribution[2]). Every case checks out within the SPEC
// section 4 bound and the whole cache byte for byte. Hand-built batches
// (window write-back, layouts, random batches):
// attention_sweep_batches_test.cc.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "attention/attention_sweep_fixture.h"
#include "attention/batch_builder.h"
#include "support/gtest_printers.h"

#include "rpa/attention/plan.h"

namespace rpa::attention {
namespace {

using namespace ::rpa::attention::attention_sweep_fixture;  // NOLINT: test
                                                            // helpers

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

std::string Describe(const HeadCase& head) {
  std::string name = "d";
  name += std::to_string(head.head_dim);
  name += "_q";
  name += std::to_string(head.num_q_heads);
  name += "_kv";
  name += std::to_string(head.num_kv_heads);
  name += "_";
  name += StorageName(head.storage);
  return name;
}
void PrintTo(const HeadCase& head, std::ostream* os) { *os << Describe(head); }

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
    [](const auto& param_info) { return Describe(param_info.param); });

// --- parameters and masks ----------------------------------------------------

struct ParamCase {
  const char* name;
  AttentionParams params;
  StorageType storage = StorageType::kF32;
  testutil::ValueDistribution values = testutil::ValueDistribution::kUniform;
};

void PrintTo(const ParamCase& param, std::ostream* os) {
  *os << param.name << "_" << StorageName(param.storage);
}

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

}  // namespace
}  // namespace rpa::attention
