#pragma once

// What the decode kernels (decode_kernel.cc: AVX2 and generic;
// decode_kernel_avx512.cc) share about one decode work item: its view of the
// batch, the slot addresses of its keys, and how its result is written.
// Private to attention/. Compiled once, with the module's flags, so that the
// AVX-512 translation unit calls these instead of compiling its own copies.
// Thread-safety: pure functions of their arguments (Finish writes only the
// item's own rows of out or partial slots).

#include <cstddef>
#include <cstdint>

#include "building_blocks.h"
#include "kernels.h"

namespace rpa::attention::internal {

struct DecodeItemView {
  const ValidatedBatch* batch = nullptr;
  const SequenceSpan* span = nullptr;
  std::uint32_t group = 0;
  std::uint32_t dim = 0;
  std::uint32_t num_heads = 0;  // kv heads of the item
  std::int32_t begin = 0;       // first key read
  std::int32_t end = 0;         // one past the last key read
  const std::int32_t* pages = nullptr;
  const float* q = nullptr;  // num_heads x group rows of D
};

DecodeItemView MakeDecodeItemView(const KernelArgs& args, const WorkItem& item);

// Writes the item's result: normalised rows of out, or the partial slots.
// acc and rows hold num_heads x group rows.
void FinishDecodeItem(const KernelArgs& args, const WorkItem& item,
                      const DecodeItemView& view, const float* acc,
                      const SoftmaxRow* rows);

// The token-row addresses (kv head 0's K row) of positions [begin, end) into
// slots, padded with copies of the last one to a multiple of 8 entries;
// returns end - begin. Reads only the page-table entries of those positions.
std::int32_t GatherDecodeSlots(const memory::KvLayerView& cache,
                               const std::int32_t* pages, std::int32_t begin,
                               std::int32_t end, const std::byte** slots);

}  // namespace rpa::attention::internal
