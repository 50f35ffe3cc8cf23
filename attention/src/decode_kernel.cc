// The decode kernel (SPEC section 6): q_len 1; an item covers a range of
// keys of one sequence for several (usually all) kv heads, each kv head's
// group_size query heads served from one pass over its K and V.
//
// Decode is memory bound: every cached K/V byte is used by group_size query
// heads only, so the kernel must stream the cache at the memory's speed.
// A cache token holds the K and V rows of every kv head next to each other
// ([2 * Hkv, D]: 4 KiB at Hkv 8, D 128, f16) and a page holds page_size
// consecutive tokens, so an item that covers all kv heads reads each page as
// one contiguous run. An item that served one kv head would read 512 bytes
// out of every 4 KiB: a new DRAM page and a broken hardware-prefetch stream
// on every row (measured 2-3x slower per byte).
//
// RunDecodeItem first offers the item to the AVX-512 kernel
// (decode_kernel_avx512.cc) when the plan allows it; that kernel takes it if
// the CPU and the item's shape suit it. What follows is the AVX2 path and the
// generic one.
//
// The AVX2 path reads K and V straight from the pages (f16 / bf16 converted
// in registers, no tile copy), in units of one kv head over a block of up to
// kUnitTokens keys (see kUnitTokens for why small); for each unit and each
// chunk of 4 (then 2, 1) query heads:
//   1. scores: each K row is loaded once per chunk and FMAed against the
//      chunk's q rows; 8 accumulators (heads x tokens; 12 for four heads
//      over a full unit) are reduced together with one hadd tree into one
//      vector (lane = head * tokens + token);
//   2. scale, soft cap, mask and the online softmax on those vectors: the
//      running max / sum live in the same lane layout, so the whole update
//      is a few vector ops and one vector exp per 8 (token, head) pairs;
//      the weights are stored token-major;
//   3. the V rows accumulated into the chunk's D-column accumulators, which
//      stay in registers across the unit's tokens (16 columns x 4 heads).
// While a block of keys is processed, the first line of each row of the
// next block is prefetched (PrefetchRowStarts).
// Positions outside [max(visible.begin, kv_begin), min(visible.end, kv_end))
// are never read: slots past kv_len may hold NaN, and
// unused page-table entries may point anywhere.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "building_blocks.h"
#include "decode_item.h"
#include "kernels.h"

#if defined(RPA_ATTENTION_AVX2)
#include <immintrin.h>

#include "decode_units_avx2.h"
#endif

namespace rpa::attention::internal {

namespace {

using memory::StorageType;

// Keys per block: large enough to amortise the per-block softmax work,
// small enough that a block of every kv head's K and V waits in L2.
constexpr std::int32_t kBlockTokens = 32;

struct Scratch {
  std::vector<float> tile;    // kBlockTokens x D (generic path)
  std::vector<float> scores;  // group x kBlockTokens
  std::vector<float> acc;     // group x D
  std::vector<SoftmaxRow> rows;
};

Scratch& ThreadScratch() {
  // Kernels never suspend, so a thread-local buffer is never shared by two
  // fibers at once.
  thread_local Scratch scratch;
  return scratch;
}

// Any head dim, any build: tiles through LoadKvTile and the vector helpers,
// one kv head after the other.
void RunDecodeItemGeneric(const KernelArgs& args, const WorkItem& item) {
  const DecodeItemView view = MakeDecodeItemView(args, item);
  const ValidatedBatch& batch = *view.batch;
  const std::uint32_t group = view.group;
  const std::uint32_t dim = view.dim;
  const std::size_t rows = static_cast<std::size_t>(view.num_heads) * group;
  Scratch& scratch = ThreadScratch();
  scratch.tile.resize(static_cast<std::size_t>(kBlockTokens) * dim);
  scratch.scores.resize(static_cast<std::size_t>(group) * kBlockTokens);
  scratch.acc.assign(rows * dim, 0.0F);
  scratch.rows.assign(rows, SoftmaxRow{});
  float* tile = scratch.tile.data();

  for (std::uint32_t i = 0; i < view.num_heads; ++i) {
    const std::uint32_t kv_head = item.kv_head + i;
    const float* q = view.q + static_cast<std::size_t>(i) * group * dim;
    float* head_acc =
        scratch.acc.data() + static_cast<std::size_t>(i) * group * dim;
    SoftmaxRow* head_rows =
        scratch.rows.data() + static_cast<std::size_t>(i) * group;
    for (std::int32_t block = view.begin; block < view.end;
         block += kBlockTokens) {
      const std::int32_t block_end = std::min(view.end, block + kBlockTokens);
      const auto n = static_cast<std::size_t>(block_end - block);
      LoadKvTile(args.cache, view.pages, kv_head, /*value=*/false, block,
                 block_end, tile, dim);
      for (std::uint32_t g = 0; g < group; ++g) {
        float* scores = scratch.scores.data() + g * kBlockTokens;
        for (std::size_t t = 0; t < n; ++t) {
          scores[t] = Dot(q + g * dim, tile + t * dim, dim);
        }
        ScaleAndCapScores(scores, n, batch.params.score_scale,
                          batch.params.soft_cap);
      }
      LoadKvTile(args.cache, view.pages, kv_head, /*value=*/true, block,
                 block_end, tile, dim);
      for (std::uint32_t g = 0; g < group; ++g) {
        float* scores = scratch.scores.data() + g * kBlockTokens;
        float* acc = head_acc + static_cast<std::size_t>(g) * dim;
        const float factor = OnlineSoftmaxUpdate(&head_rows[g], scores, n);
        if (factor != 1.0F) ScaleInPlace(acc, dim, factor);
        for (std::size_t t = 0; t < n; ++t) {
          Axpy(scores[t], tile + t * dim, acc, dim);
        }
      }
    }
  }
  FinishDecodeItem(args, item, view, scratch.acc.data(), scratch.rows.data());
}

#if defined(RPA_ATTENTION_AVX2)

// The unit steps (ChunkPass and its parts) are in decode_units_avx2.h.
using decode_avx2::ChunkPass;
using decode_avx2::kUnitTokens;

// Prefetches the first cache line of the item's part of each of `count`
// token rows, a block ahead of their use. Each row of a block is a 4 KiB OS
// page the kernel has not touched yet; the first access to it pays a TLB
// walk and a DRAM miss before the hardware prefetcher streams the rest of
// the page (our reading of the measurements, not a documented mechanism).
// One prefetch per row starts that a block (one pass over every kv head of
// the item) early: measured on 32 x 2048 f16 keys, 1 thread, 64.5 -> 57-59
// ns per (key, kv head), where 2, 4 or 8 lines per row gained no more and
// whole rows (1 to 12 units ahead, any hint) made it slower (they push out
// of L1 the queries and accumulators the kernel reuses).
inline void PrefetchRowStarts(const std::byte* const* rows, std::int32_t count,
                              std::size_t offset) {
  for (std::int32_t t = 0; t < count; ++t) {
    _mm_prefetch(reinterpret_cast<const char*>(rows[t] + offset), _MM_HINT_T0);
  }
}

// The item's work is a sequence of units (block of kUnitTokens keys, kv
// head), block-major.
template <StorageType kType>
void RunDecodeItemAvx2(const KernelArgs& args, const WorkItem& item) {
  const DecodeItemView view = MakeDecodeItemView(args, item);
  const ValidatedBatch& batch = *view.batch;
  const std::uint32_t group = view.group;
  const std::uint32_t dim = view.dim;
  const std::uint32_t num_heads = view.num_heads;
  const std::size_t row_bytes = dim * memory::StorageBytes(kType);
  const std::size_t rows = static_cast<std::size_t>(num_heads) * group;
  // Query-head chunks of each kv head: 4, then 2, then 1 heads.
  const std::uint32_t chunks = group / 4 + (group % 4) / 2 + group % 2;
  Scratch& scratch = ThreadScratch();
  scratch.acc.assign(rows * dim, 0.0F);
  // Per (kv head, chunk): 8 lanes of max, then 8 lanes of sum.
  scratch.scores.resize(static_cast<std::size_t>(num_heads) * chunks * 16);
  for (std::size_t i = 0; i < scratch.scores.size(); i += 16) {
    std::fill_n(scratch.scores.data() + i, 8, -__builtin_inff());
    std::fill_n(scratch.scores.data() + i + 8, 8, 0.0F);
  }

  // The slots of the current block and of the next one (prefetched).
  std::array<const std::byte*, kUnitTokens + 8> slot_buffers[2];
  const std::byte** slots = slot_buffers[0].data();
  const std::byte** next_slots = slot_buffers[1].data();
  std::int32_t n =
      view.begin < view.end
          ? GatherDecodeSlots(args.cache, view.pages, view.begin,
                              std::min(view.end, view.begin + kUnitTokens),
                              slots)
          : 0;
  const std::size_t item_offset = 2 * item.kv_head * row_bytes;
  for (std::int32_t block = view.begin; block < view.end;
       block += kUnitTokens) {
    const std::int32_t next_begin = block + kUnitTokens;
    std::int32_t next_n = 0;
    if (next_begin < view.end) {
      next_n = GatherDecodeSlots(args.cache, view.pages, next_begin,
                                 std::min(view.end, next_begin + kUnitTokens),
                                 next_slots);
      PrefetchRowStarts(next_slots, next_n, item_offset);
    }
    for (std::uint32_t i = 0; i < num_heads; ++i) {
      const std::size_t key_offset = 2 * (item.kv_head + i) * row_bytes;
      const float* q = view.q + static_cast<std::size_t>(i) * group * dim;
      float* acc =
          scratch.acc.data() + static_cast<std::size_t>(i) * group * dim;
      float* state =
          scratch.scores.data() + static_cast<std::size_t>(i) * chunks * 16;
      std::uint32_t g = 0;
      for (; g + 4 <= group; g += 4) {
        ChunkPass<kType, 4>(q + g * dim, dim, slots, key_offset, row_bytes, n,
                            batch.params, state, acc + g * dim);
        state += 16;
      }
      if (g + 2 <= group) {
        ChunkPass<kType, 2>(q + g * dim, dim, slots, key_offset, row_bytes, n,
                            batch.params, state, acc + g * dim);
        state += 16;
        g += 2;
      }
      if (g < group) {
        ChunkPass<kType, 1>(q + g * dim, dim, slots, key_offset, row_bytes, n,
                            batch.params, state, acc + g * dim);
      }
    }
    std::swap(slots, next_slots);
    n = next_n;
  }

  // The running states as SoftmaxRows: a head's max is in each of its
  // lanes, its sum spread over them.
  scratch.rows.assign(rows, SoftmaxRow{});
  for (std::uint32_t i = 0; i < num_heads; ++i) {
    const float* state =
        scratch.scores.data() + static_cast<std::size_t>(i) * chunks * 16;
    std::uint32_t g = 0;
    while (g < group) {
      const std::uint32_t heads = group - g >= 4 ? 4 : (group - g >= 2 ? 2 : 1);
      const std::uint32_t tokens = 8 / heads;
      for (std::uint32_t h = 0; h < heads; ++h) {
        SoftmaxRow& row =
            scratch.rows[static_cast<std::size_t>(i) * group + g + h];
        row.max = state[h * tokens];
        row.sum = 0.0F;
        for (std::uint32_t t = 0; t < tokens; ++t) {
          row.sum += state[8 + h * tokens + t];
        }
      }
      g += heads;
      state += 16;
    }
  }
  FinishDecodeItem(args, item, view, scratch.acc.data(), scratch.rows.data());
}

#endif  // RPA_ATTENTION_AVX2

}  // namespace

void RunDecodeItem(const KernelArgs& args, const WorkItem& item) {
  if (args.decode_avx512 && RunDecodeItemAvx512(args, item)) return;
#if defined(RPA_ATTENTION_AVX2)
  if (args.batch->shape.head_dim % 8 == 0) {
    switch (args.cache.storage) {
      case StorageType::kF32:
        return RunDecodeItemAvx2<StorageType::kF32>(args, item);
      case StorageType::kF16:
        return RunDecodeItemAvx2<StorageType::kF16>(args, item);
      case StorageType::kBf16:
        return RunDecodeItemAvx2<StorageType::kBf16>(args, item);
    }
  }
#endif
  RunDecodeItemGeneric(args, item);
}

void MergePartials(const KernelArgs& args, const PlanData::MergeGroup& group) {
  const ValidatedBatch& batch = *args.batch;
  const SequenceSpan& span = batch.sequences[group.sequence];
  const std::uint32_t dim = batch.shape.head_dim;
  const std::size_t slot_floats = PartialSlotFloats(batch);
  for (std::uint32_t g = 0; g < batch.group_size; ++g) {
    const float* first =
        args.partials +
        static_cast<std::size_t>(group.first_partial) * slot_floats +
        static_cast<std::size_t>(g) * (dim + 2);
    float* out =
        args.out +
        ((static_cast<std::size_t>(span.q_begin) +
          static_cast<std::size_t>(span.q_len) - 1) *
             batch.shape.num_q_heads +
         static_cast<std::size_t>(group.kv_head) * batch.group_size + g) *
            dim;
    MergePartialRows(first, static_cast<std::size_t>(group.num_partials),
                     slot_floats, dim, batch.params.v_scale, out);
  }
}

}  // namespace rpa::attention::internal
