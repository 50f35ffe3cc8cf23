#pragma once

// Shared helpers of the AttentionPlan / Run tests (plan_run_test.cc,
// plan_update_test.cc, plan_decode_split_test.cc): the batches they plan and
// run. The tests take them, with the testutil names they use, by
// `using namespace`.

#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/oracle.h"

#include "rpa/attention/plan.h"
#include "rpa/memory/storage_type.h"
#include "rpa/runtime/status.h"

namespace rpa::attention::plan_run_fixture {

using memory::StorageType;
using testutil::BatchSpec;
using testutil::BuildBatch;
using testutil::CompareWithOracle;
using testutil::PlanFor;
using testutil::RunOracle;
using testutil::SameBits;
using testutil::TestBatch;

inline BatchSpec DecodeSpec(StorageType storage) {
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
inline BatchSpec MixedSpec() {
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

// One decode sequence of kv_len keys, the batch of the KV-split tests.
inline BatchSpec LongDecodeSpec(std::int32_t kv_len, StorageType storage) {
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

}  // namespace rpa::attention::plan_run_fixture
