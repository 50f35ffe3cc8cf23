// AttentionPlan / Run: the O(1) tensor checks, the work decomposition (decode
// KV splits), runs on executors of every size, and the decode kernel against
// the double-precision oracle.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/oracle.h"
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

// Bit equality of two float buffers (NaN payloads included).
bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

BatchSpec DecodeSpec(StorageType storage) {
  BatchSpec spec;
  // kv_len 1, page - 1, page, page + 1, many pages.
  spec.sequences = {{1, 1}, {1, 15}, {1, 16}, {1, 17}, {1, 300}, {1, 77}};
  spec.distribution = std::array<std::int32_t, 3>{6, 6, 6};
  spec.num_q_heads = 8;
  spec.num_kv_heads = 2;
  spec.head_dim = 32;
  spec.page_size_tokens = 16;
  spec.storage = storage;
  return spec;
}

// A decode range, a prefill range and a mixed range in one batch.
BatchSpec MixedSpec() {
  BatchSpec spec;
  spec.sequences = {{1, 40}, {1, 200}, {8, 8}, {8, 50},
                    {5, 33}, {1, 9},   {3, 3}, {2, 10}};
  spec.distribution = std::array<std::int32_t, 3>{2, 4, 7};  // last unused
  spec.num_q_heads = 4;
  spec.num_kv_heads = 2;
  spec.head_dim = 16;
  spec.page_size_tokens = 8;
  spec.params.chunk_prefill_size = 8;
  return spec;
}

StatusOr<AttentionPlan> PlanFor(const TestBatch& batch,
                                const PlanOptions& options = {}) {
  return AttentionPlan::Create(batch.metadata(), batch.cache(), batch.params,
                               options);
}

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
// Decode KV splitting.

BatchSpec LongDecodeSpec(std::int32_t kv_len, StorageType storage) {
  BatchSpec spec;
  spec.sequences = {{1, kv_len}};
  spec.distribution = std::array<std::int32_t, 3>{1, 1, 1};
  spec.num_q_heads = 4;
  spec.num_kv_heads = 1;
  spec.head_dim = 64;
  spec.page_size_tokens = 16;
  spec.storage = storage;
  spec.values = testutil::ValueDistribution::kNormal;
  return spec;
}

// ---------------------------------------------------------------------------
// AttentionPlan::Update: re-planning in place.

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
