#pragma once

// Random valid batches for tests, the differential fuzzer and benchmarks,
// built to catch kernels that read what they must not: every cache slot
// starts as NaN, then only the cached positions (< gap) of the batch's
// sequences get values; page tables are shuffled; unused page-table entries
// hold garbage (negative, huge); token rows past cu_q_lens[d2] are NaN; out
// starts as NaN so an unwritten row shows.
//
// Example:
//   BatchSpec spec{.sequences = {{1, 70}, {16, 16}}, .num_q_heads = 8,
//                  .num_kv_heads = 2, .head_dim = 64, .page_size_tokens = 16};
//   TestBatch batch = BuildBatch(spec);
//   ASSERT_TRUE(Attend(batch.metadata(), batch.tensors(), batch.params).ok());
//   OracleOutput want = RunOracle(batch.original_oracle_input());

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "attention/oracle.h"

#include "rpa/attention/batch.h"
#include "rpa/attention/params.h"
#include "rpa/attention/plan.h"
#include "rpa/memory/kv_cache.h"
#include "rpa/memory/storage_type.h"

namespace rpa::attention::testutil {

struct SequenceSpec {
  std::int32_t q_len = 1;
  std::int32_t kv_len = 1;  // including the q_len new tokens
};

enum class ValueDistribution : std::uint8_t { kUniform, kNormal };

struct BatchSpec {
  // All sequences, processed or not, in batch order.
  std::vector<SequenceSpec> sequences;
  // (d0, d1, d2); none = {0, 0, S}: every sequence in the mixed range.
  std::optional<std::array<std::int32_t, 3>> distribution;
  std::uint32_t num_q_heads = 1;
  std::uint32_t num_kv_heads = 1;
  std::uint32_t head_dim = 8;
  std::uint32_t page_size_tokens = 4;
  memory::StorageType storage = memory::StorageType::kF32;
  AttentionParams params;
  std::uint64_t seed = 1;
  ValueDistribution values = ValueDistribution::kUniform;
  std::uint32_t extra_pages = 3;          // pages no sequence uses
  std::uint32_t extra_table_entries = 1;  // pps slack per sequence (garbage)
  std::uint32_t padding_tokens = 2;       // NaN rows after the last sequence
  bool shuffle_pages = true;
};

// Owns every buffer of one batch; the views point into its vectors (copying
// a TestBatch is fine: the views are made on demand).
struct TestBatch {
  BatchShape shape;
  AttentionParams params;
  std::uint32_t pages_per_sequence = 0;
  std::uint32_t num_pages = 0;
  std::uint32_t page_size_tokens = 0;
  memory::StorageType storage = memory::StorageType::kF32;

  std::vector<std::int32_t> kv_lens;
  std::vector<std::int32_t> page_indices;
  std::vector<std::int32_t> cu_q_lens;
  std::vector<std::int32_t> distribution;
  std::vector<float> q;
  std::vector<float> k;
  std::vector<float> v;
  std::vector<float> out;  // [T_used, Hq, D], NaN until written
  // The cache's bytes; float elements keep it 4-byte aligned.
  std::vector<float> cache_storage;
  std::vector<std::byte> original_cache;  // the bytes as built

  BatchMetadata metadata() const;
  memory::KvLayerView cache() const;  // views cache_storage (mutable data)
  BatchTensors tensors();
  std::span<const std::byte> cache_bytes() const;
  // T_used = cu_q_lens[d2].
  std::int32_t num_used_tokens() const;
  // The oracle's input over the cache as built (original_cache), so it can
  // be evaluated before or after a call that wrote the cache.
  OracleInput original_oracle_input() const;
  // Restores the cache and out to their state as built.
  void Reset();
};

TestBatch BuildBatch(const BatchSpec& spec);

// "" when batch.out agrees with expected.out within the SPEC section 4 bound
// and the batch's cache bytes equal expected.cache exactly; else what
// differs.
std::string CompareWithOracle(const TestBatch& batch,
                              const OracleOutput& expected,
                              double tolerance = 1e-4);

// The bytes of a NaN in `type` (a quiet NaN with a payload).
std::array<std::byte, 4> NanBytes(memory::StorageType type);

// A plan for the batch as built (its metadata, cache and params).
inline StatusOr<AttentionPlan> PlanFor(const TestBatch& batch,
                                       const PlanOptions& options = {}) {
  return AttentionPlan::Create(batch.metadata(), batch.cache(), batch.params,
                               options);
}

// Bit equality of two float buffers (NaN payloads included).
inline bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace rpa::attention::testutil
