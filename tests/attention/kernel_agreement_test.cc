// The same batch through different kernels (PlanOptions routes each range):
// every route against the oracle and against each other, flash tile sizes
// and decode KV splits varied, and Run on a 2-worker executor against the
// same plan run serially.

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/oracle.h"

#include "rpa/attention/plan.h"
#include "rpa/runtime/executor.h"

namespace rpa::attention {
namespace {

using memory::StorageType;
using testutil::BatchSpec;
using testutil::BuildBatch;
using testutil::TestBatch;

// 4 decode (two long enough to split), 3 prefill chunks of 12, 3 mixed,
// 1 past d2.
BatchSpec AgreementSpec(StorageType storage, bool causal,
                        std::optional<std::int32_t> window) {
  BatchSpec spec;
  spec.sequences = {{1, 300}, {1, 7},   {1, 1},  {1, 129}, {12, 12}, {12, 70},
                    {12, 33}, {5, 100}, {1, 40}, {20, 20}, {3, 9}};
  spec.distribution = std::array<std::int32_t, 3>{4, 7, 10};
  spec.params.chunk_prefill_size = 12;
  spec.params.causal = causal;
  spec.params.sliding_window = window;
  spec.params.soft_cap = 6.0F;
  spec.params.sm_scale = 0.3F;
  spec.num_q_heads = 8;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.page_size_tokens = 16;
  spec.storage = storage;
  spec.values = testutil::ValueDistribution::kNormal;
  spec.seed = 4242;
  return spec;
}

struct Route {
  const char* name;
  PlanOptions options;
};

std::vector<Route> Routes() {
  std::vector<Route> routes;
  const auto add = [&](const char* name, KernelKind decode, KernelKind prefill,
                       KernelKind mixed) {
    PlanOptions options;
    options.decode_range_kernel = decode;
    options.prefill_range_kernel = prefill;
    options.mixed_range_kernel = mixed;
    routes.push_back({name, options});
  };
  add("default", KernelKind::kDecode, KernelKind::kPrefill, KernelKind::kMixed);
  add("decode_via_mixed", KernelKind::kMixed, KernelKind::kPrefill,
      KernelKind::kMixed);
  add("decode_via_prefill", KernelKind::kPrefill, KernelKind::kMixed,
      KernelKind::kPrefill);
  add("all_mixed", KernelKind::kMixed, KernelKind::kMixed, KernelKind::kMixed);
  add("all_prefill", KernelKind::kPrefill, KernelKind::kPrefill,
      KernelKind::kPrefill);
  // Tiles that do not divide anything, and tiny tiles.
  Route odd = routes[0];
  odd.name = "odd_tiles";
  odd.options.prefill_blocks = {.q_tokens_per_block = 3,
                                .kv_tokens_per_block = 5};
  odd.options.mixed_blocks = {.q_tokens_per_block = 1,
                              .kv_tokens_per_block = 1};
  routes.push_back(odd);
  Route big = routes[0];
  big.name = "big_tiles";
  big.options.prefill_blocks = {.q_tokens_per_block = 64,
                                .kv_tokens_per_block = 512};
  big.options.mixed_blocks = big.options.prefill_blocks;
  routes.push_back(big);
  // Decode KV splits (merged partial softmax states), run serially.
  Route split = routes[0];
  split.name = "decode_split";
  split.options.parallelism = 4;
  split.options.decode_min_kv_tokens_per_split = 16;
  routes.push_back(split);
  return routes;
}

struct AgreementCase {
  StorageType storage;
  bool causal;
  std::optional<std::int32_t> window;
};

std::string Describe(const AgreementCase& param) {
  std::string name = std::string(memory::StorageTypeName(param.storage));
  name += param.causal ? "_causal" : "_bidirectional";
  if (param.window.has_value()) {
    name += "_window";
    name += std::to_string(*param.window);
  }
  return name;
}
void PrintTo(const AgreementCase& param, std::ostream* os) {
  *os << Describe(param);
}

class KernelAgreementTest : public ::testing::TestWithParam<AgreementCase> {};

TEST_P(KernelAgreementTest, EveryRouteMatchesTheOracleAndTheOthers) {
  const AgreementCase& param = GetParam();
  TestBatch batch =
      BuildBatch(AgreementSpec(param.storage, param.causal, param.window));
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch.original_oracle_input());
  std::vector<float> first_out;
  std::vector<std::byte> first_cache;
  for (const Route& route : Routes()) {
    SCOPED_TRACE(route.name);
    batch.Reset();
    const Status status =
        Attend(batch.metadata(), batch.tensors(), batch.params, route.options);
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(testutil::CompareWithOracle(batch, expected), "");
    if (first_out.empty()) {
      first_out = batch.out;
      first_cache.assign(batch.cache_bytes().begin(),
                         batch.cache_bytes().end());
      continue;
    }
    // Against the first route, with the same bound.
    const std::vector<double> reference(first_out.begin(), first_out.end());
    const testutil::Comparison comparison = testutil::CompareOutputs(
        batch.out, reference, batch.shape.num_q_heads, batch.shape.head_dim);
    EXPECT_TRUE(comparison.ok) << comparison.first_bad;
    EXPECT_EQ(std::memcmp(batch.cache_bytes().data(), first_cache.data(),
                          first_cache.size()),
              0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Masks, KernelAgreementTest,
    ::testing::Values(AgreementCase{StorageType::kF32, true, std::nullopt},
                      AgreementCase{StorageType::kBf16, true, 24},
                      AgreementCase{StorageType::kF16, false, std::nullopt},
                      AgreementCase{StorageType::kF32, false, 10}),
    [](const auto& param_info) { return Describe(param_info.param); });

TEST(KernelAgreementExecutorTest, TwoWorkersGiveTheSerialResult) {
  auto executor = runtime::Executor::Create({.num_workers = 2});
  ASSERT_TRUE(executor.ok()) << executor.status();
  TestBatch batch = BuildBatch(AgreementSpec(StorageType::kBf16, true, {}));
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch.original_oracle_input());
  PlanOptions options;
  options.parallelism = 2;
  options.decode_min_kv_tokens_per_split = 16;
  auto plan = AttentionPlan::Create(batch.metadata(), batch.cache(),
                                    batch.params, options);
  ASSERT_TRUE(plan.ok()) << plan.status();

  ASSERT_TRUE(attention::Run(*plan, batch.tensors()).ok());
  EXPECT_EQ(testutil::CompareWithOracle(batch, expected), "");
  const std::vector<float> serial_out = batch.out;
  const std::vector<std::byte> serial_cache(batch.cache_bytes().begin(),
                                            batch.cache_bytes().end());
  for (int repeat = 0; repeat < 5; ++repeat) {
    batch.Reset();
    const Status status =
        attention::Run(*plan, batch.tensors(), executor->get());
    ASSERT_TRUE(status.ok()) << status;
    // The same plan: the same items, each computed the same way, whichever
    // worker runs it.
    EXPECT_EQ(std::memcmp(batch.out.data(), serial_out.data(),
                          serial_out.size() * sizeof(float)),
              0)
        << "repeat " << repeat;
    EXPECT_EQ(std::memcmp(batch.cache_bytes().data(), serial_cache.data(),
                          serial_cache.size()),
              0);
  }
  // Attend with the executor, through the default (parallelism 1) plan too.
  batch.Reset();
  ASSERT_TRUE(Attend(batch.metadata(), batch.tensors(), batch.params, {},
                     executor->get())
                  .ok());
  EXPECT_EQ(testutil::CompareWithOracle(batch, expected), "");
  EXPECT_TRUE((*executor)->Shutdown().ok());
}

TEST(KernelAgreementExecutorTest, ConcurrentRunsOfOnePlan) {
  // plan.h: several Runs of one plan may proceed concurrently on different
  // tensors.
  TestBatch first = BuildBatch(AgreementSpec(StorageType::kF16, true, 16));
  TestBatch second = first;
  second.Reset();
  const testutil::OracleOutput expected =
      testutil::RunOracle(first.original_oracle_input());
  PlanOptions options;
  options.parallelism = 3;
  auto plan = AttentionPlan::Create(first.metadata(), first.cache(),
                                    first.params, options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  Status first_status;
  Status second_status;
  std::thread thread(
      [&] { first_status = attention::Run(*plan, first.tensors()); });
  second_status = attention::Run(*plan, second.tensors());
  thread.join();
  ASSERT_TRUE(first_status.ok()) << first_status;
  ASSERT_TRUE(second_status.ok()) << second_status;
  EXPECT_EQ(testutil::CompareWithOracle(first, expected), "");
  EXPECT_EQ(testutil::CompareWithOracle(second, expected), "");
}

TEST(KernelAgreementTest, PlanReportsTheRoutes) {
  TestBatch batch = BuildBatch(AgreementSpec(StorageType::kF32, true, {}));
  PlanOptions options;
  options.decode_range_kernel = KernelKind::kMixed;
  options.prefill_range_kernel = KernelKind::kMixed;
  options.mixed_range_kernel = KernelKind::kPrefill;
  auto plan = AttentionPlan::Create(batch.metadata(), batch.cache(),
                                    batch.params, options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->kernel_for_range(0), KernelKind::kMixed);
  EXPECT_EQ(plan->kernel_for_range(1), KernelKind::kMixed);
  EXPECT_EQ(plan->kernel_for_range(2), KernelKind::kPrefill);
  EXPECT_EQ(plan->num_sequences(), 10U);
  EXPECT_EQ(plan->num_used_tokens(),
            static_cast<std::uint32_t>(batch.num_used_tokens()));
  EXPECT_GT(plan->num_work_items(), 0U);
  EXPECT_GT(plan->cost().flops, 0.0);
  EXPECT_EQ(plan->cost().bytes(), plan->range_cost(0).bytes() +
                                      plan->range_cost(1).bytes() +
                                      plan->range_cost(2).bytes());
}

}  // namespace
}  // namespace rpa::attention
