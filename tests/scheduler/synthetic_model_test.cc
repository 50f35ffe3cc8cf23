// SyntheticModel (rpa/scheduler/synthetic_model.h): rows are pure functions
// of (seed, layer, context), the reference agrees with the host kernels and
// catches a wrong row.

#include "rpa/scheduler/synthetic_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "rpa/attention/plan.h"
#include "rpa/memory/kv_cache.h"

namespace rpa::scheduler {
namespace {

using ::testing::HasSubstr;

SyntheticModel Model(std::uint64_t seed = 1) {
  auto model = SyntheticModel::Create({.seed = seed,
                                       .num_layers = 2,
                                       .num_q_heads = 4,
                                       .num_kv_heads = 2,
                                       .head_dim = 16,
                                       .vocab_size = 1000});
  RPA_CHECK(model.ok());
  return *model;
}

struct Rows {
  std::vector<float> q, k, v;
};

Rows Fill(const SyntheticModel& model, std::uint32_t layer,
          std::uint64_t context) {
  Rows rows{std::vector<float>(model.q_row_floats()),
            std::vector<float>(model.kv_row_floats()),
            std::vector<float>(model.kv_row_floats())};
  model.FillToken(layer, context, rows.q, rows.k, rows.v);
  return rows;
}

TEST(SyntheticModelTest, RowsArePureFunctionsOfSeedLayerAndContext) {
  const SyntheticModel model = Model();
  const std::uint64_t a = SyntheticModel::Extend(
      SyntheticModel::Extend(SyntheticModel::kEmptyContext, 5), 7);
  const std::uint64_t b = SyntheticModel::Extend(
      SyntheticModel::Extend(SyntheticModel::kEmptyContext, 7), 5);
  EXPECT_NE(a, b);  // order matters: a context is the whole prefix
  const Rows first = Fill(model, 0, a);
  EXPECT_EQ(first.q, Fill(model, 0, a).q);
  EXPECT_EQ(first.k, Fill(Model(), 0, a).k);   // a second instance agrees
  EXPECT_NE(first.k, Fill(model, 1, a).k);     // layers differ
  EXPECT_NE(first.k, Fill(model, 0, b).k);     // contexts differ
  EXPECT_NE(first.k, Fill(Model(2), 0, a).k);  // seeds differ
  EXPECT_NE(first.k, first.v);
  double sum = 0;
  for (float x : first.q) {
    ASSERT_GE(x, -1.0F);
    ASSERT_LT(x, 1.0F);
    sum += static_cast<double>(x);
  }
  EXPECT_LT(std::abs(sum / static_cast<double>(first.q.size())), 0.25);
}

TEST(SyntheticModelTest, NextTokenIsInTheVocabularyAndDeterministic) {
  const SyntheticModel model = Model();
  std::uint64_t context = SyntheticModel::kEmptyContext;
  int changes = 0;
  std::int32_t previous = -1;
  for (std::int32_t t = 0; t < 200; ++t) {
    context = SyntheticModel::Extend(context, t);
    const std::int32_t next = model.NextToken(context);
    ASSERT_GE(next, 0);
    ASSERT_LT(next, 1000);
    EXPECT_EQ(next, Model().NextToken(context));
    if (next != previous) ++changes;
    previous = next;
  }
  EXPECT_GT(changes, 150);
}

TEST(SyntheticModelTest, CreateRejectsBadShapes) {
  EXPECT_THAT(
      SyntheticModel::Create(
          {.num_layers = 0, .num_q_heads = 4, .num_kv_heads = 2, .head_dim = 8})
          .status()
          .message(),
      HasSubstr("num_layers"));
  EXPECT_THAT(
      SyntheticModel::Create(
          {.num_layers = 1, .num_q_heads = 3, .num_kv_heads = 2, .head_dim = 8})
          .status()
          .message(),
      HasSubstr("num_q_heads"));
  EXPECT_THAT(SyntheticModel::Create({.num_layers = 1,
                                      .num_q_heads = 4,
                                      .num_kv_heads = 2,
                                      .head_dim = 8,
                                      .vocab_size = 1})
                  .status()
                  .message(),
              HasSubstr("vocab_size"));
}

// A 37-token prompt attended in one chunk by the host kernels (bf16 cache):
// every row agrees with the reference within SPEC section 4, and a row taken
// from a different context does not.
TEST(SyntheticModelTest, ReferenceAgreesWithTheHostKernels) {
  const SyntheticModel model = Model();
  constexpr std::uint32_t kLen = 37;
  constexpr std::uint32_t kLayer = 1;
  auto cache = memory::KvCache::Create({.num_pages = 8,
                                        .page_size_tokens = 8,
                                        .num_kv_heads = 2,
                                        .head_dim = 16,
                                        .storage = memory::StorageType::kBf16,
                                        .num_layers = 2});
  ASSERT_TRUE(cache.ok()) << cache.status();
  auto seq = (*cache)->CreateSequence();
  ASSERT_TRUE(seq.ok());
  ASSERT_TRUE((*cache)->Reserve(*seq, kLen).ok());
  memory::BatchPageTable table;
  ASSERT_TRUE((*cache)->ExportBatch({&*seq, 1}, 0, &table).ok());

  std::vector<std::uint64_t> contexts;
  std::uint64_t context = SyntheticModel::kEmptyContext;
  std::vector<float> q, k, v;
  for (std::uint32_t p = 0; p < kLen; ++p) {
    context = SyntheticModel::Extend(context, static_cast<std::int32_t>(p * 3));
    contexts.push_back(context);
    const Rows rows = Fill(model, kLayer, context);
    q.insert(q.end(), rows.q.begin(), rows.q.end());
    k.insert(k.end(), rows.k.begin(), rows.k.end());
    v.insert(v.end(), rows.v.begin(), rows.v.end());
  }
  const std::vector<std::int32_t> cu_q_lens = {0, kLen};
  const std::vector<std::int32_t> distribution = {0, 0, 1};
  attention::BatchMetadata meta{.shape = {kLen, 4, 2, 16},
                                .kv_lens = table.kv_lens,
                                .page_indices = table.page_indices,
                                .cu_q_lens = cu_q_lens,
                                .distribution = distribution};
  attention::AttentionParams params;
  params.sm_scale = 0.25F;
  auto plan =
      attention::AttentionPlan::Create(meta, (*cache)->Layer(kLayer), params);
  ASSERT_TRUE(plan.ok()) << plan.status();
  std::vector<float> out(q.size());
  ASSERT_TRUE(
      attention::Run(*plan, {q, k, v, (*cache)->Layer(kLayer), out}).ok());

  const std::size_t row = model.q_row_floats();
  for (std::uint32_t p = 0; p < kLen; ++p) {
    const ReferenceCheck check = model.Reference(
        kLayer, std::span<const std::uint64_t>(contexts).first(p + 1),
        memory::StorageType::kBf16,
        std::span<const float>(out).subspan(p * row, row));
    EXPECT_LE(check.max_scaled_error, 1e-4) << "position " << p;
    EXPECT_GT(check.max_abs_expected, 0.0);
  }
  // The last row checked as if it were position 20's: far off.
  const ReferenceCheck wrong = model.Reference(
      kLayer, std::span<const std::uint64_t>(contexts).first(21),
      memory::StorageType::kBf16,
      std::span<const float>(out).subspan((kLen - 1) * row, row));
  EXPECT_GT(wrong.max_scaled_error, 1e-2);
  // A sliding window changes the reference.
  const ReferenceCheck windowed = model.Reference(
      kLayer, contexts, memory::StorageType::kBf16,
      std::span<const float>(out).subspan((kLen - 1) * row, row), 0.25F, 4);
  EXPECT_GT(windowed.max_scaled_error, 1e-3);
}

}  // namespace
}  // namespace rpa::scheduler
