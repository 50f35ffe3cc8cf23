// AttentionPlan / Run: the O(1) tensor checks, the plan's shape, runs on
// executors of every size, and the decode kernel against the
// double-precision oracle. Re-planning: plan_update_test.cc; decode KV
// splits: plan_decode_split_test.cc.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/oracle.h"
#include "attention/plan_run_fixture.h"
#include "plan_data.h"

#include "rpa/attention/plan.h"
#include "rpa/runtime/executor.h"

namespace rpa::attention {
namespace {

using namespace ::rpa::attention::plan_run_fixture;  // NOLINT: test helpers

// ---------------------------------------------------------------------------
// Run's O(1) checks of the tensors against the plan.

struct TensorMutation {
  std::string name;
  std::function<void(BatchTensors*)> mutate;
};

TEST(PlanRunTest, RunRejectsTensorsThatDoNotMatchThePlanAndWritesNothing) {
  TestBatch batch = BuildBatch(MixedSpec());
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const std::vector<TensorMutation> mutations = {
      {"q", [](BatchTensors* t) { t->q = t->q.first(t->q.size() - 1); }},
      {"k", [](BatchTensors* t) { t->k = t->k.first(t->k.size() - 16); }},
      {"v", [](BatchTensors* t) { t->v = t->v.subspan(1); }},
      {"out",
       [](BatchTensors* t) { t->out = t->out.first(t->out.size() - 1); }},
      {"cache.data", [](BatchTensors* t) { t->cache.data = nullptr; }},
      {"num_pages", [](BatchTensors* t) { t->cache.num_pages -= 1; }},
      {"page_size_tokens",
       [](BatchTensors* t) { t->cache.page_size_tokens *= 2; }},
      {"num_combined_heads",
       [](BatchTensors* t) { t->cache.num_combined_heads += 2; }},
      {"head_dim", [](BatchTensors* t) { t->cache.head_dim /= 2; }},
      {"storage",
       [](BatchTensors* t) { t->cache.storage = StorageType::kF16; }},
      {"token_bytes", [](BatchTensors* t) { t->cache.token_bytes += 4; }},
      {"page_bytes", [](BatchTensors* t) { t->cache.page_bytes -= 4; }},
  };
  const std::vector<std::byte> cache_before(batch.cache_bytes().begin(),
                                            batch.cache_bytes().end());
  for (const TensorMutation& mutation : mutations) {
    BatchTensors tensors = batch.tensors();
    mutation.mutate(&tensors);
    const Status status = attention::Run(*plan, tensors);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << mutation.name;
    EXPECT_NE(status.message().find(mutation.name), std::string::npos)
        << mutation.name << ": " << status;
    ASSERT_EQ(std::memcmp(batch.cache_bytes().data(), cache_before.data(),
                          cache_before.size()),
              0)
        << mutation.name << ": the cache changed";
    for (const float value : batch.out) {
      ASSERT_TRUE(std::isnan(value)) << mutation.name << ": out was written";
    }
  }
  // The untouched tensors run.
  ASSERT_TRUE(attention::Run(*plan, batch.tensors()).ok());
  EXPECT_EQ(CompareWithOracle(batch, RunOracle(batch.original_oracle_input())),
            "");
}

TEST(PlanRunTest, CreateRejectsNonPositiveParallelism) {
  TestBatch batch = BuildBatch(DecodeSpec(StorageType::kF32));
  PlanOptions options;
  options.parallelism = 0;
  auto plan = PlanFor(batch, options);
  EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(plan.status().message().find("parallelism"), std::string::npos);
}

TEST(PlanRunTest, PlanReportsItsShape) {
  TestBatch batch = BuildBatch(MixedSpec());
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->num_sequences(), 7U);
  EXPECT_EQ(plan->num_used_tokens(),
            static_cast<std::uint32_t>(batch.num_used_tokens()));
  EXPECT_EQ(plan->kernel_for_range(0), KernelKind::kDecode);
  EXPECT_EQ(plan->kernel_for_range(1), KernelKind::kPrefill);
  EXPECT_EQ(plan->kernel_for_range(2), KernelKind::kMixed);
  EXPECT_EQ(KernelKindName(KernelKind::kDecode), "decode");
  EXPECT_EQ(KernelKindName(KernelKind::kPrefill), "prefill");
  EXPECT_EQ(KernelKindName(KernelKind::kMixed), "mixed");
  // Items are ordered largest first.
  const auto& items = plan->data().items;
  ASSERT_FALSE(items.empty());
  for (std::size_t i = 1; i < items.size(); ++i) {
    EXPECT_GE(items[i - 1].cost_flops, items[i].cost_flops);
  }
}

// ---------------------------------------------------------------------------
// The decode kernel against the oracle.

struct DecodeCase {
  StorageType storage;
  std::uint32_t q_heads;
  std::uint32_t kv_heads;
  std::uint32_t head_dim;
  std::uint32_t page_size;
  AttentionParams params;
  testutil::ValueDistribution values = testutil::ValueDistribution::kUniform;
};

std::vector<DecodeCase> DecodeCases() {
  std::vector<DecodeCase> cases;
  for (const StorageType storage :
       {StorageType::kF32, StorageType::kF16, StorageType::kBf16}) {
    // GQA ratios 1, 4, 8 and the head chunk remainders 3 (2 + 1), 5 (4 +
    // 1), 6 (4 + 2); head dims that are multiples of 16, 8 (a half-chunk
    // tail) and neither (the generic path).
    cases.push_back({storage, 8, 2, 32, 16, {}});
    cases.push_back({storage, 4, 4, 128, 16, {}});
    cases.push_back({storage, 8, 1, 64, 8, {}});
    cases.push_back({storage, 12, 2, 24, 16, {}});
    cases.push_back({storage, 5, 1, 40, 8, {}});
    cases.push_back({storage, 3, 1, 48, 3, {}});
    cases.push_back({storage, 6, 2, 20, 4, {}});
    cases.push_back({storage, 3, 1, 7, 5, {}});
  }
  AttentionParams window;
  window.sliding_window = 20;
  cases.push_back({StorageType::kF32, 8, 2, 32, 16, window});
  AttentionParams cap;
  cap.soft_cap = 5.0F;
  cap.sm_scale = 0.7F;
  cap.k_scale = 1.5F;
  cap.v_scale = 0.5F;
  cases.push_back({StorageType::kF16, 8, 2, 32, 16, cap,
                   testutil::ValueDistribution::kNormal});
  AttentionParams both;
  both.sliding_window = 1;
  both.soft_cap = 2.0F;
  cases.push_back({StorageType::kBf16, 4, 2, 16, 4, both});
  AttentionParams scaled;
  scaled.sm_scale = 1.0F / std::sqrt(128.0F);
  cases.push_back({StorageType::kF32, 16, 2, 128, 32, scaled,
                   testutil::ValueDistribution::kNormal});
  return cases;
}

TEST(PlanRunTest, DecodeMatchesOracle) {
  for (const DecodeCase& c : DecodeCases()) {
    BatchSpec spec = DecodeSpec(c.storage);
    spec.num_q_heads = c.q_heads;
    spec.num_kv_heads = c.kv_heads;
    spec.head_dim = c.head_dim;
    spec.page_size_tokens = c.page_size;
    spec.params = c.params;
    spec.values = c.values;
    TestBatch batch = BuildBatch(spec);
    const Status status =
        Attend(batch.metadata(), batch.tensors(), batch.params);
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(
        CompareWithOracle(batch, RunOracle(batch.original_oracle_input())), "")
        << memory::StorageTypeName(c.storage) << " Hq " << c.q_heads << " Hkv "
        << c.kv_heads << " D " << c.head_dim << " ps " << c.page_size;
  }
}

// ---------------------------------------------------------------------------
// Executors of every size give the serial result.

class PlanRunExecutorTest : public testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    auto created = runtime::Executor::Create({.num_workers = GetParam()});
    ASSERT_TRUE(created.ok()) << created.status();
    executor_ = std::move(created).value();
  }
  void TearDown() override {
    if (executor_ != nullptr) {
      EXPECT_TRUE(executor_->Shutdown().ok());
      const runtime::ExecutorStats stats = executor_->Stats();
      EXPECT_EQ(stats.tasks_spawned, stats.tasks_completed);
    }
  }
  std::unique_ptr<runtime::Executor> executor_;
};

TEST_P(PlanRunExecutorTest, EqualsSerialBitForBit) {
  for (const BatchSpec& spec : {MixedSpec(), DecodeSpec(StorageType::kF16),
                                LongDecodeSpec(2000, StorageType::kBf16)}) {
    for (const int parallelism : {1, 2, 4}) {
      TestBatch batch = BuildBatch(spec);
      PlanOptions options;
      options.parallelism = parallelism;
      auto plan = PlanFor(batch, options);
      ASSERT_TRUE(plan.ok()) << plan.status();
      ASSERT_TRUE(attention::Run(*plan, batch.tensors()).ok());
      const std::vector<float> serial_out = batch.out;
      const std::vector<float> serial_cache = batch.cache_storage;
      EXPECT_EQ(
          CompareWithOracle(batch, RunOracle(batch.original_oracle_input())),
          "");

      batch.Reset();
      const Status status =
          attention::Run(*plan, batch.tensors(), executor_.get());
      ASSERT_TRUE(status.ok()) << status;
      EXPECT_TRUE(SameBits(batch.out, serial_out))
          << "parallelism " << parallelism;
      EXPECT_TRUE(SameBits(batch.cache_storage, serial_cache))
          << "parallelism " << parallelism;
    }
  }
}

TEST_P(PlanRunExecutorTest, RunFromAFiberOfTheExecutor) {
  TestBatch batch = BuildBatch(MixedSpec());
  PlanOptions options;
  options.parallelism = std::max(1, GetParam());
  auto plan = PlanFor(batch, options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  runtime::Executor* executor = executor_.get();
  auto handle = executor->Spawn([&] {
    EXPECT_EQ(runtime::Executor::Current(), executor);
    return attention::Run(*plan, batch.tensors(), executor);
  });
  const Status status = handle.Join();
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(CompareWithOracle(batch, RunOracle(batch.original_oracle_input())),
            "");
}

TEST_P(PlanRunExecutorTest, ConcurrentRunsOfOnePlan) {
  TestBatch first = BuildBatch(LongDecodeSpec(1500, StorageType::kF32));
  TestBatch second = first;
  PlanOptions options;
  options.parallelism = 2;
  auto plan = PlanFor(first, options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto a = executor_->Spawn(
      [&] { return attention::Run(*plan, first.tensors(), executor_.get()); });
  auto b = executor_->Spawn(
      [&] { return attention::Run(*plan, second.tensors(), executor_.get()); });
  ASSERT_TRUE(a.Join().ok());
  ASSERT_TRUE(b.Join().ok());
  EXPECT_TRUE(SameBits(first.out, second.out));
  EXPECT_EQ(CompareWithOracle(first, RunOracle(first.original_oracle_input())),
            "");
}

INSTANTIATE_TEST_SUITE_P(Workers, PlanRunExecutorTest,
                         testing::Values(0, 1, 2, 4));

}  // namespace
}  // namespace rpa::attention
