// The AVX-512 decode kernel (decode_kernel_avx512.cc) against the oracle and
// against the AVX2 kernel on the same batches, over the shapes it takes and
// some it must leave to the AVX2 kernel; and which kernel a plan says it
// uses. On a CPU without AVX-512 both runs take the AVX2 kernel and the
// plan must say so.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/oracle.h"
#include "kernels.h"
#include "plan_data.h"

#include "rpa/attention/plan.h"

namespace rpa::attention {
namespace {

using memory::StorageType;
using testutil::BatchSpec;
using testutil::BuildBatch;
using testutil::CompareWithOracle;
using testutil::OracleOutput;
using testutil::PlanFor;
using testutil::RunOracle;
using testutil::TestBatch;

// Decode only: kv lengths around the kernel's 16-key blocks and its token
// pairs (1, 15, 16, 17) and a long one that the plan splits.
BatchSpec DecodeSpec(StorageType storage, std::uint32_t num_q_heads,
                     std::uint32_t num_kv_heads, std::uint32_t head_dim,
                     std::uint32_t page_size) {
  BatchSpec spec;
  spec.sequences = {{1, 1}, {1, 15}, {1, 16}, {1, 17}, {1, 33}, {1, 700}};
  spec.distribution = std::array<std::int32_t, 3>{6, 6, 6};
  spec.num_q_heads = num_q_heads;
  spec.num_kv_heads = num_kv_heads;
  spec.head_dim = head_dim;
  spec.page_size_tokens = page_size;
  spec.storage = storage;
  spec.values = testutil::ValueDistribution::kNormal;
  spec.seed = 7 + num_q_heads * 31 + head_dim;
  return spec;
}

// What a plan should say: the CPU runs the kernel and it takes every decode
// item's shape (the plan may split a sequence across kv heads).
bool ExpectAvx512(const AttentionPlan& plan) {
  if (!internal::CpuRunsAvx512Decode()) return false;
  bool any = false;
  for (const internal::WorkItem& item : plan.data().items) {
    if (item.kernel != KernelKind::kDecode) continue;
    any = true;
    if (!internal::Avx512DecodeSupports(plan.data().batch, item.num_kv_heads)) {
      return false;
    }
  }
  return any;
}

struct Shape {
  std::uint32_t num_q_heads;
  std::uint32_t num_kv_heads;
  std::uint32_t head_dim;
};

TEST(DecodeAvx512Test, MatchesTheOracleAndTheAvx2KernelOnEveryShape) {
  // Rows (query heads of an item) of 8, 16 and 24 take one pass per block,
  // 32 and 64 passes of 16 rows (1, 2, 4, 8 or 16 kv heads at a time).
  const std::vector<Shape> shapes = {
      {8, 8, 64},   {16, 8, 64},  {32, 8, 128}, {8, 1, 80},  {16, 1, 64},
      {32, 2, 256}, {6, 2, 64},   {4, 4, 64},   {32, 8, 72}, {64, 4, 64},
      {24, 6, 32},  {32, 32, 16}, {32, 16, 16}, {32, 4, 32}};
  for (StorageType storage :
       {StorageType::kF32, StorageType::kF16, StorageType::kBf16}) {
    for (const Shape& shape : shapes) {
      for (std::uint32_t page_size : {1U, 16U}) {
        for (int variant = 0; variant < 2; ++variant) {
          BatchSpec spec =
              DecodeSpec(storage, shape.num_q_heads, shape.num_kv_heads,
                         shape.head_dim, page_size);
          if (variant == 1) {
            spec.params.sliding_window = 40;
            spec.params.soft_cap = 5.0F;
            spec.params.sm_scale = 0.2F;
          }
          TestBatch batch = BuildBatch(spec);
          const std::string where =
              "storage " + std::to_string(static_cast<int>(storage)) + ", Hq " +
              std::to_string(shape.num_q_heads) + ", Hkv " +
              std::to_string(shape.num_kv_heads) + ", D " +
              std::to_string(shape.head_dim) + ", page " +
              std::to_string(page_size) + ", variant " +
              std::to_string(variant);
          const OracleOutput want = RunOracle(batch.original_oracle_input());

          PlanOptions options;
          options.parallelism = 3;  // splits the long sequence
          options.decode_min_kv_tokens_per_split = 128;
          auto fast = PlanFor(batch, options);
          ASSERT_TRUE(fast.ok()) << fast.status() << " at " << where;
          EXPECT_EQ(fast->decode_uses_avx512(), ExpectAvx512(*fast)) << where;
          if (shape.num_q_heads == 32 && shape.num_kv_heads == 8 &&
              shape.head_dim == 128) {  // the benchmarks' shape
            EXPECT_EQ(fast->decode_uses_avx512(),
                      internal::CpuRunsAvx512Decode())
                << where;
          }
          ASSERT_TRUE(attention::Run(*fast, batch.tensors()).ok()) << where;
          EXPECT_EQ(CompareWithOracle(batch, want), "") << where;
          const std::vector<float> fast_out = batch.out;

          batch.Reset();
          options.allow_avx512_decode = false;
          auto avx2 = PlanFor(batch, options);
          ASSERT_TRUE(avx2.ok()) << avx2.status() << " at " << where;
          EXPECT_FALSE(avx2->decode_uses_avx512()) << where;
          ASSERT_TRUE(attention::Run(*avx2, batch.tensors()).ok()) << where;
          EXPECT_EQ(CompareWithOracle(batch, want), "") << where;
          double worst = 0;
          for (std::size_t i = 0; i < fast_out.size(); ++i) {
            worst =
                std::max(worst, std::fabs(static_cast<double>(fast_out[i]) -
                                          static_cast<double>(batch.out[i])));
          }
          EXPECT_LT(worst, 1e-4) << where;
        }
      }
    }
  }
}

TEST(DecodeAvx512Test, PlansWithoutDecodeItemsDoNotClaimIt) {
  BatchSpec spec;
  spec.sequences = {{12, 12}, {5, 40}};
  spec.distribution = std::array<std::int32_t, 3>{0, 1, 2};
  spec.num_q_heads = 8;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.page_size_tokens = 16;
  spec.params.chunk_prefill_size = 12;
  TestBatch batch = BuildBatch(spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->decode_uses_avx512());
}

}  // namespace
}  // namespace rpa::attention
