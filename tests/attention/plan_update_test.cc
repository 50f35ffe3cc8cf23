// AttentionPlan::Update: re-planning in place equals a fresh Create, and a
// failed Update returns Create's error and leaves the plan unchanged.

#include <gtest/gtest.h>

#include <cstddef>
#include <functional>
#include <string>
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

// "" when two plans hold the same validated batch and the same work; else the
// first difference.
std::string DiffPlans(const AttentionPlan& a, const AttentionPlan& b) {
  const internal::PlanData& x = a.data();
  const internal::PlanData& y = b.data();
  if (x.batch.page_indices != y.batch.page_indices) return "page_indices";
  if (x.batch.sequences.size() != y.batch.sequences.size()) return "sequences";
  for (std::size_t i = 0; i < x.batch.sequences.size(); ++i) {
    const internal::SequenceSpan& s = x.batch.sequences[i];
    const internal::SequenceSpan& t = y.batch.sequences[i];
    if (s.q_begin != t.q_begin || s.q_len != t.q_len || s.kv_len != t.kv_len ||
        s.page_row != t.page_row || s.kernel != t.kernel ||
        s.range != t.range) {
      return "sequence " + std::to_string(i);
    }
  }
  if (x.batch.num_used_tokens != y.batch.num_used_tokens) return "T_used";
  if (x.batch.cache.num_pages != y.batch.cache.num_pages) return "num_pages";
  if (x.items.size() != y.items.size()) {
    return "items: " + std::to_string(x.items.size()) + " vs " +
           std::to_string(y.items.size());
  }
  for (std::size_t i = 0; i < x.items.size(); ++i) {
    const internal::WorkItem& s = x.items[i];
    const internal::WorkItem& t = y.items[i];
    if (s.sequence != t.sequence || s.kv_head != t.kv_head ||
        s.num_kv_heads != t.num_kv_heads || s.q_begin != t.q_begin ||
        s.q_end != t.q_end || s.kv_begin != t.kv_begin ||
        s.kv_end != t.kv_end || s.partial != t.partial ||
        s.partial_head_stride != t.partial_head_stride ||
        s.kernel != t.kernel || s.cost_flops != t.cost_flops) {
      return "item " + std::to_string(i);
    }
  }
  if (x.merges.size() != y.merges.size()) return "merges";
  for (std::size_t i = 0; i < x.merges.size(); ++i) {
    if (x.merges[i].sequence != y.merges[i].sequence ||
        x.merges[i].kv_head != y.merges[i].kv_head ||
        x.merges[i].first_partial != y.merges[i].first_partial ||
        x.merges[i].num_partials != y.merges[i].num_partials) {
      return "merge " + std::to_string(i);
    }
  }
  if (x.num_partials != y.num_partials) return "num_partials";
  if (x.options.prefill_blocks.q_tokens_per_block !=
          y.options.prefill_blocks.q_tokens_per_block ||
      x.options.mixed_blocks.kv_tokens_per_block !=
          y.options.mixed_blocks.kv_tokens_per_block ||
      x.options.parallelism != y.options.parallelism) {
    return "options";
  }
  return "";
}

TEST(PlanRunTest, UpdateEqualsCreate) {
  // One plan re-planned through batches of every kind (split decode with
  // partial slots, mixed ranges, short decode), in both directions of size.
  const std::vector<BatchSpec> specs = {
      MixedSpec(), LongDecodeSpec(2000, StorageType::kBf16),
      DecodeSpec(StorageType::kF16), MixedSpec(),
      LongDecodeSpec(700, StorageType::kF32)};
  auto executor = runtime::Executor::Create({.num_workers = 2});
  ASSERT_TRUE(executor.ok()) << executor.status();
  PlanOptions options;
  options.parallelism = 2;
  TestBatch first = BuildBatch(DecodeSpec(StorageType::kF32));
  auto reused = PlanFor(first, options);
  ASSERT_TRUE(reused.ok()) << reused.status();
  for (std::size_t n = 0; n < specs.size(); ++n) {
    TestBatch batch = BuildBatch(specs[n]);
    auto created = PlanFor(batch, options);
    ASSERT_TRUE(created.ok()) << created.status();
    const Status updated =
        reused->Update(batch.metadata(), batch.cache(), batch.params, options);
    ASSERT_TRUE(updated.ok()) << updated;
    EXPECT_EQ(DiffPlans(*reused, *created), "") << "batch " << n;
    EXPECT_EQ(reused->num_sequences(), created->num_sequences());
    EXPECT_EQ(reused->num_work_items(), created->num_work_items());
    EXPECT_EQ(reused->cost().flops, created->cost().flops);

    ASSERT_TRUE(
        attention::Run(*created, batch.tensors(), executor->get()).ok());
    const std::vector<float> created_out = batch.out;
    const std::vector<float> created_cache = batch.cache_storage;
    batch.Reset();
    ASSERT_TRUE(attention::Run(*reused, batch.tensors(), executor->get()).ok());
    EXPECT_TRUE(SameBits(batch.out, created_out)) << "batch " << n;
    EXPECT_TRUE(SameBits(batch.cache_storage, created_cache)) << "batch " << n;
    EXPECT_EQ(
        CompareWithOracle(batch, RunOracle(batch.original_oracle_input())), "")
        << "batch " << n;
  }
}

TEST(PlanRunTest, FailedUpdateReturnsCreatesErrorAndLeavesThePlanUnchanged) {
  PlanOptions options;
  options.parallelism = 2;
  TestBatch batch = BuildBatch(LongDecodeSpec(1500, StorageType::kF32));
  auto plan = PlanFor(batch, options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto reference = PlanFor(batch, options);
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_GT(plan->data().num_partials, 0);  // the batch is split

  TestBatch other = BuildBatch(MixedSpec());
  struct BadUpdate {
    std::string name;
    std::function<void(TestBatch*, PlanOptions*)> mutate;
  };
  const std::vector<BadUpdate> bad = {
      {"parallelism", [](TestBatch*, PlanOptions* o) { o->parallelism = 0; }},
      {"kv_lens", [](TestBatch* b, PlanOptions*) { b->kv_lens[1] = 100000; }},
      {"cu_q_lens", [](TestBatch* b, PlanOptions*) { b->cu_q_lens[0] = 1; }},
      {"distribution",
       [](TestBatch* b, PlanOptions*) { b->distribution[2] = 100; }},
      {"page_indices",
       [](TestBatch* b, PlanOptions*) { b->page_indices[0] = -1; }},
      {"decode",
       [](TestBatch*, PlanOptions* o) {
         o->prefill_range_kernel = KernelKind::kDecode;
       }},
  };
  for (const BadUpdate& update : bad) {
    TestBatch mutated = other;
    PlanOptions bad_options = options;
    update.mutate(&mutated, &bad_options);
    auto created = AttentionPlan::Create(mutated.metadata(), mutated.cache(),
                                         mutated.params, bad_options);
    ASSERT_FALSE(created.ok()) << update.name;
    const Status status = plan->Update(mutated.metadata(), mutated.cache(),
                                       mutated.params, bad_options);
    EXPECT_EQ(status.code(), created.status().code()) << update.name;
    EXPECT_EQ(status.message(), created.status().message()) << update.name;
    EXPECT_NE(status.message().find(update.name), std::string::npos)
        << update.name << ": " << status;
    EXPECT_EQ(DiffPlans(*plan, *reference), "") << update.name;
  }
  // The unchanged plan still runs its own batch.
  ASSERT_TRUE(attention::Run(*plan, batch.tensors()).ok());
  EXPECT_EQ(CompareWithOracle(batch, RunOracle(batch.original_oracle_input())),
            "");
}

}  // namespace
}  // namespace rpa::attention
