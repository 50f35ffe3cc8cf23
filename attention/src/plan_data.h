#pragma once

// What AttentionPlan holds: the validated batch (ValidateBatch's output) and
// the work items Run executes. Private to attention/.

#include <array>
#include <atomic>
#include <cstdint>
#include <vector>

#include "rpa/attention/batch.h"
#include "rpa/attention/cost.h"
#include "rpa/attention/plan.h"
#include "rpa/memory/storage_type.h"

namespace rpa::attention::internal {

// The parameters with the SPEC's defaults applied.
struct ResolvedParams {
  float score_scale = 1.0F;  // sm_scale * k_scale
  float v_scale = 1.0F;
  float soft_cap = 0.0F;            // 0 = none
  std::int32_t sliding_window = 0;  // 0 = none
  bool causal = true;
};

// One processed sequence (index i < d2) after validation.
struct SequenceSpan {
  std::int32_t q_begin = 0;  // its first row in q / k / v / out: cu_q_lens[i]
  std::int32_t q_len = 0;
  std::int32_t kv_len = 0;    // including the new tokens
  std::int32_t page_row = 0;  // i * pages_per_sequence: its page-table row
  KernelKind kernel = KernelKind::kMixed;
  std::uint8_t range = 0;  // 0 decode, 1 prefill, 2 mixed (distribution)
};

// The cache geometry the plan was made for (Run checks the tensors' cache).
struct CacheGeometry {
  std::uint32_t num_pages = 0;
  std::uint32_t page_size_tokens = 0;
  std::uint32_t num_combined_heads = 0;
  std::uint32_t head_dim = 0;
  memory::StorageType storage = memory::StorageType::kF32;
};

struct ValidatedBatch {
  BatchShape shape;
  CacheGeometry cache;
  std::uint32_t pages_per_sequence = 0;
  std::array<std::int32_t, 3> distribution{};
  std::int32_t num_used_tokens = 0;  // cu_q_lens[d2]
  std::uint32_t group_size = 0;      // Hq / Hkv
  ResolvedParams params;
  std::vector<std::int32_t> page_indices;  // the caller's table, copied
  std::vector<SequenceSpan> sequences;     // [d2]
  std::array<BatchCost, 3> range_cost{};
  BatchCost cost;
};

// A unit of work: one sequence, kv heads [kv_head, kv_head + num_kv_heads)
// (all group_size query heads of each), a range of its query rows and a
// range of key positions. Flash items have one kv head; decode items cover
// several (usually all), so that they stream each page's tokens whole.
struct WorkItem {
  std::uint32_t sequence = 0;  // index into ValidatedBatch::sequences
  std::uint32_t kv_head = 0;
  std::uint32_t num_kv_heads = 1;
  std::int32_t q_begin = 0;  // query rows of the sequence, within [0, q_len)
  std::int32_t q_end = 0;
  // Key positions this item covers, within [0, kv_len); each query still
  // sees only its visible keys inside this range, so kernels intersect it
  // with VisibleKeys. Plan sets the union of the item's queries' visible
  // keys, or one piece of it when a decode sequence's KV was split.
  std::int32_t kv_begin = 0;
  std::int32_t kv_end = 0;
  // -1: the item writes its rows of out. >= 0: the item writes unnormalised
  // partial softmax states {max, sum, acc[D]} per query head, max in
  // natural-log units of the scaled, capped score (see building_blocks.h
  // MergePartialRows), into
  // partial slot `partial` for kv head `kv_head`, and into slot
  // partial + i * partial_head_stride for kv head kv_head + i; a merge
  // writes out.
  std::int32_t partial = -1;
  std::int32_t partial_head_stride = 0;
  KernelKind kernel = KernelKind::kMixed;
  double cost_flops = 0;  // estimate, for ordering (largest first)
  // Creation order: the tie-break of the largest-first sort (std::sort with
  // it gives stable_sort's order without stable_sort's temporary buffer).
  std::uint32_t order = 0;
};

struct PlanData {
  ValidatedBatch batch;
  // The caller's options with the block sizes resolved (0 -> the defaults).
  PlanOptions options;
  std::vector<WorkItem> items;  // largest first
  // Decode items may run on the AVX-512 decode kernel (the option and the
  // CPU allow it; each item still needs a shape it takes), and every one of
  // them does (false when there are none): see
  // PlanOptions::allow_avx512_decode.
  bool decode_avx512_allowed = false;
  bool decode_avx512 = false;

  // The resolved block sizes of a flash-kernel (prefill or mixed) item.
  const BlockSizes& flash_blocks(KernelKind kind) const {
    return kind == KernelKind::kPrefill ? options.prefill_blocks
                                        : options.mixed_blocks;
  }

  // Partial slots of split sequences: for each (sequence, kv head), the
  // consecutive slots its splits write.
  struct MergeGroup {
    std::uint32_t sequence = 0;
    std::uint32_t kv_head = 0;
    std::int32_t first_partial = 0;
    std::int32_t num_partials = 0;
  };
  std::vector<MergeGroup> merges;
  std::int32_t num_partials = 0;

  // Planning scratch (SplitDecodeItems' output and KV cuts): kept so that
  // Update reuses its capacity. Not part of the plan's meaning.
  ValidatedBatch next_batch;  // Update validates into it, then swaps
  std::vector<WorkItem> split_items;
  std::vector<std::int32_t> split_cuts;

  // Run's scratch for the partial slots, owned by whichever Run holds
  // run_scratch_busy (an atomic try-lock: acquire on take, release on give
  // back, so one Run's writes to the buffer happen-before the next one's);
  // a Run that finds it taken allocates its own buffer.
  mutable std::atomic<bool> run_scratch_busy{false};
  mutable std::vector<float> run_partials;
};

}  // namespace rpa::attention::internal
