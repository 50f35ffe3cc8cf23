#pragma once

// Shared helpers of the RunOnDevice tests (device_run_test.cc,
// device_run_report_test.cc, device_walk_test.cc,
// device_run_figures_test.cc): the devices, the tiny blocks and the sweep's
// batches. The tests take them, with the testutil names they use, by
// `using namespace`.

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "attention/batch_builder.h"

#include "rpa/attention/device_run.h"
#include "rpa/attention/plan.h"
#include "rpa/device/device_spec.h"
#include "rpa/runtime/check.h"
#include "rpa/runtime/status.h"

namespace rpa::attention::device_run_fixture {

using memory::StorageType;
using testutil::BatchSpec;
using testutil::BuildBatch;
using testutil::PlanFor;
using testutil::SameBits;
using testutil::TestBatch;

inline device::DeviceSpec Tpu7x() {
  StatusOr<device::DeviceSpec> spec = device::DevicePreset("tpu7x");
  RPA_CHECK(spec.ok());
  return *spec;
}

// A device whose DMA issue latency is 1 ns: its bandwidth-delay product is
// 3.7 KB, so the small test batches get the tapered ends (row pieces) that
// tpu7x gives only to large Q blocks (device_blocks.h).
inline device::DeviceSpec FastDma() {
  StatusOr<device::DeviceSpec> spec = device::ParseDeviceSpec(
      R"({"base": "tpu7x", "name": "tpu7x_fast_dma",
          "dma_issue_latency_ns": 1})");
  RPA_CHECK(spec.ok());
  return *spec;
}

inline std::vector<std::byte> CacheCopy(const TestBatch& batch) {
  return {batch.cache_bytes().begin(), batch.cache_bytes().end()};
}

// Small blocks, so that a small batch still has several Q blocks per
// sequence, several KV blocks per segment and several sub-tiles per block.
inline DeviceRunOptions TinyBlocks(DeviceSchedule schedule) {
  DeviceRunOptions options;
  options.schedule = schedule;
  options.decode_blocks = {
      .q_tokens_per_block = 2, .kv_pages_per_block = 2, .compute_kv_tokens = 5};
  options.prefill_blocks = {
      .q_tokens_per_block = 5, .kv_pages_per_block = 1, .compute_kv_tokens = 3};
  options.mixed_blocks = {
      .q_tokens_per_block = 3, .kv_pages_per_block = 3, .compute_kv_tokens = 7};
  return options;
}

struct SweepCase {
  std::string name;
  BatchSpec spec;
  PlanOptions plan_options{};
};

inline BatchSpec Base(std::uint32_t q_heads, std::uint32_t kv_heads,
                      std::uint32_t head_dim, std::uint32_t page_size,
                      StorageType storage) {
  BatchSpec spec;
  spec.num_q_heads = q_heads;
  spec.num_kv_heads = kv_heads;
  spec.head_dim = head_dim;
  spec.page_size_tokens = page_size;
  spec.storage = storage;
  return spec;
}

inline std::vector<SweepCase> SweepCases() {
  std::vector<SweepCase> cases;
  {
    // Decode only: kv_len 1, page - 1, page, page + 1, many pages.
    BatchSpec spec = Base(8, 2, 64, 16, StorageType::kF32);
    spec.sequences = {{1, 1}, {1, 15}, {1, 16}, {1, 17}, {1, 300}, {1, 77}};
    spec.distribution = std::array<std::int32_t, 3>{6, 6, 6};
    cases.push_back({"decode_ps16_d64_gqa4_f32", spec});
  }
  {
    BatchSpec spec = Base(5, 1, 80, 1, StorageType::kBf16);
    spec.sequences = {{1, 1}, {1, 9}, {1, 40}, {1, 2}};
    spec.distribution = std::array<std::int32_t, 3>{4, 4, 4};
    spec.params.sliding_window = 7;
    cases.push_back({"decode_ps1_d80_gqa5_bf16_window", spec});
  }
  {
    // Prefill only, MHA (group 1), chunks with and without cached keys.
    BatchSpec spec = Base(3, 3, 128, 8, StorageType::kF16);
    spec.sequences = {{12, 12}, {12, 70}, {12, 33}};
    spec.distribution = std::array<std::int32_t, 3>{0, 3, 3};
    spec.params.chunk_prefill_size = 12;
    cases.push_back({"prefill_ps8_d128_mha_f16", spec});
  }
  {
    // All three ranges, one sequence past d2, soft cap, window.
    BatchSpec spec = Base(8, 2, 64, 16, StorageType::kBf16);
    spec.sequences = {{1, 300}, {1, 7},   {1, 1},  {1, 129}, {12, 12}, {12, 70},
                      {12, 33}, {5, 100}, {1, 40}, {20, 20}, {3, 9}};
    spec.distribution = std::array<std::int32_t, 3>{4, 7, 10};
    spec.params.chunk_prefill_size = 12;
    spec.params.soft_cap = 6.0F;
    spec.params.sm_scale = 0.3F;
    spec.params.sliding_window = 24;
    spec.values = testutil::ValueDistribution::kNormal;
    cases.push_back({"mixed_ps16_d64_bf16_softcap_window", spec});
  }
  {
    BatchSpec spec = Base(8, 2, 80, 8, StorageType::kF32);
    spec.sequences = {{1, 30}, {7, 7}, {7, 40}, {9, 12}, {2, 50}};
    spec.distribution = std::array<std::int32_t, 3>{1, 3, 5};
    spec.params.chunk_prefill_size = 7;
    spec.params.causal = false;
    spec.params.sliding_window = 10;
    spec.params.k_scale = 1.5F;
    spec.params.v_scale = 0.5F;
    cases.push_back({"mixed_ps8_d80_f32_bidirectional_window", spec});
  }
  {
    BatchSpec spec = Base(3, 3, 64, 1, StorageType::kF16);
    spec.sequences = {{4, 4}, {1, 6}, {6, 19}};
    spec.distribution = std::array<std::int32_t, 3>{0, 0, 3};
    spec.params.causal = false;
    cases.push_back({"mixed_only_ps1_f16_bidirectional", spec});
  }
  {
    // Empty prefill range between decode and mixed, a sequence past d2.
    BatchSpec spec = Base(8, 2, 128, 16, StorageType::kBf16);
    spec.sequences = {{1, 33}, {1, 64}, {17, 40}, {3, 3}};
    spec.distribution = std::array<std::int32_t, 3>{2, 2, 3};
    cases.push_back({"decode_and_mixed_empty_prefill_bf16", spec});
  }
  {
    // The decode range served by the flash kernel, the mixed range by the
    // decode kernel (all its q_len are 1).
    BatchSpec spec = Base(4, 2, 64, 8, StorageType::kF32);
    spec.sequences = {{1, 20}, {1, 9}, {1, 17}, {1, 8}};
    spec.distribution = std::array<std::int32_t, 3>{2, 2, 4};
    SweepCase routed{"routed_decode_via_mixed", spec};
    routed.plan_options.decode_range_kernel = KernelKind::kMixed;
    routed.plan_options.mixed_range_kernel = KernelKind::kDecode;
    cases.push_back(routed);
  }
  return cases;
}

inline void PrintTo(const SweepCase& sweep_case, std::ostream* os) {
  *os << sweep_case.name;
}

inline BatchSpec DecodeHeavySpec() {
  // Long decode sequences in several KV blocks, so that the pipeline has
  // something to overlap and a skipped wait reads a block still in flight.
  BatchSpec spec = Base(8, 2, 64, 16, StorageType::kBf16);
  spec.sequences = {{1, 200}, {1, 260}, {1, 190}, {1, 300}, {1, 170}};
  spec.distribution = std::array<std::int32_t, 3>{5, 5, 5};
  return spec;
}

}  // namespace rpa::attention::device_run_fixture
