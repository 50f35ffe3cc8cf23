#pragma once

// The kernel entry points Run dispatches work items to, and what they see.
// Private to attention/. Every kernel reads keys and values only from the
// cache (Run has already written the new tokens, so keys at positions >= gap
// are "as stored", SPEC section 2) and only at visible positions < kv_len
// through the sequence's used page-table entries.

#include <cstddef>
#include <cstdint>

#include "plan_data.h"

#include "rpa/memory/kv_cache.h"

namespace rpa::attention::internal {

struct KernelArgs {
  const ValidatedBatch* batch = nullptr;
  const float* q = nullptr;    // [T, Hq, D]
  memory::KvLayerView cache;   // the new tokens are already in it
  float* out = nullptr;        // [T_used, Hq, D]
  float* partials = nullptr;   // PlanData::num_partials slots
  bool decode_avx512 = false;  // PlanData::decode_avx512_allowed
};

// Floats in one partial slot: group_size rows x (max, sum, acc[D]).
inline std::size_t PartialSlotFloats(const ValidatedBatch& batch) {
  return static_cast<std::size_t>(batch.group_size) *
         (batch.shape.head_dim + 2);
}

// q_len 1 items, possibly a KV split (partial >= 0).
void RunDecodeItem(const KernelArgs& args, const WorkItem& item);

// The AVX-512 decode kernel (decode_kernel_avx512.cc). Avx512DecodeSupports:
// whether its shapes cover an item of `num_kv_heads` kv heads (head_dim a
// multiple of 16; group 1, 2, 4, 8 or 16; num_kv_heads x group a multiple of
// 8, at most 256). CpuRunsAvx512Decode: this build has it and the CPU has
// AVX-512 F/BW/DQ/VL. RunDecodeItemAvx512 runs the item and returns true, or
// returns false (nothing written) when either says no.
bool Avx512DecodeSupports(const ValidatedBatch& batch,
                          std::uint32_t num_kv_heads);
bool CpuRunsAvx512Decode();
bool RunDecodeItemAvx512(const KernelArgs& args, const WorkItem& item);
// Flash-attention tiling; prefill and mixed items (any q_len).
void RunFlashItem(const KernelArgs& args, const WorkItem& item,
                  const BlockSizes& blocks);
// Combines the partial slots of one split (sequence, kv head) into out.
void MergePartials(const KernelArgs& args, const PlanData::MergeGroup& group);

// The default tile sizes for this CPU (flash kernels), by kernel.
BlockSizes DefaultBlockSizes(KernelKind kind, const ValidatedBatch& batch);

}  // namespace rpa::attention::internal
