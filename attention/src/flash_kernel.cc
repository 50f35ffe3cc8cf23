// The flash-attention kernel of the prefill and mixed ranges (SPEC section 6):
// one work item = (sequence, kv head, query rows [q_begin, q_end)) with the
// group_size query heads of the kv head packed as rows, so one K/V tile
// serves every head of the group.
//
// Per query block (at most q_tokens_per_block tokens of the item):
//   1. pack the block's queries, times sm_scale * k_scale * log2(e), into
//      panels of 16 rows, or 8 for blocks of at most 8 rows
//      (flash_microkernel.h explains the layout);
//   2. walk kv blocks of kv_tokens_per_block keys over [lo, hi), the union
//      of the keys some row of the block can see: blocks that the causal
//      mask or the window hides from every row are never loaded;
//   3. per kv block, convert K and V from the cache into f32 tiles once
//      (shared by every panel), then per panel: scores over the panel's
//      visible columns only, soft cap, the mask (only on panels that straddle
//      the diagonal or the window edge), online softmax, acc += P V;
//   4. normalise by the softmax sum, times v_scale, and write out (or the
//      unnormalised state into a partial slot for a KV split).
// Only positions in [lo, hi) are read, all below kv_len and inside the
// visible ranges: slots past kv_len and unused page-table entries may hold
// NaN, which therefore never reaches a product.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <span>

#include "building_blocks.h"
#include "flash_microkernel.h"
#include "flash_stats.h"
#include "flash_vec.h"
#include "kernels.h"

#include "rpa/attention/storage_convert.h"
#include "rpa/runtime/check.h"
#include "rpa/runtime/int_math.h"

namespace rpa::attention::internal {
namespace {

using flash::kLanes;
using flash::Vec8;

std::atomic<std::uint64_t> g_query_blocks{0};
std::atomic<std::uint64_t> g_grid_tiles{0};
std::atomic<std::uint64_t> g_full_tiles{0};
std::atomic<std::uint64_t> g_masked_tiles{0};

// Per-thread scratch, 64-byte aligned (a panel row is one cache line). Grows
// to the largest query block a thread has run and stays: no allocation in the
// steady state. RunFlashItem never suspends, so a fiber cannot migrate
// between fetching and using it.
class Scratch {
 public:
  float* Get(std::size_t num_floats) {
    if (num_floats > capacity_floats_) {
      data_.reset(static_cast<float*>(::operator new[](
          num_floats * sizeof(float), std::align_val_t{kAlignBytes})));
      capacity_floats_ = num_floats;
    }
    return data_.get();
  }

 private:
  static constexpr std::size_t kAlignBytes = 64;
  struct Free {
    void operator()(float* p) const {
      ::operator delete[](p, std::align_val_t{kAlignBytes});
    }
  };
  std::unique_ptr<float, Free> data_;
  std::size_t capacity_floats_ = 0;
};

thread_local Scratch t_scratch;

constexpr float kLog2E = 1.44269504088896341F;
constexpr float kLn2 = 0.693147180559945309F;

// Converts one row of n stored elements to f32. F16C and the bf16 shift are
// inlined here (the tile loads run once per kv block and query block, and a
// call per 128-element row would cost more than the conversion).
RPA_FLASH_INLINE void ConvertRow(const std::byte* in, memory::StorageType type,
                                 std::size_t n, float* out) {
#if RPA_ATTENTION_AVX2
  std::size_t i = 0;
  if (type == memory::StorageType::kF16) {
    for (; i + kLanes <= n; i += kLanes) {
      _mm256_storeu_ps(out + i,
                       _mm256_cvtph_ps(_mm_loadu_si128(
                           reinterpret_cast<const __m128i*>(in + 2 * i))));
    }
  } else if (type == memory::StorageType::kBf16) {
    for (; i + kLanes <= n; i += kLanes) {
      const __m256i wide = _mm256_cvtepu16_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i)));
      _mm256_storeu_ps(out + i,
                       _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
    }
  }
  if (i < n) {
    ConvertFromStorage(in + i * memory::StorageBytes(type), type,
                       std::span<float>(out + i, n - i));
  }
#else
  ConvertFromStorage(in, type, std::span<float>(out, n));
#endif
}

// Converts the K and V rows of positions [begin, end) of one kv head into
// dense f32 tiles with rows head_dim floats apart.
void LoadKvTiles(const memory::KvLayerView& cache, const std::int32_t* pages,
                 std::uint32_t kv_head, std::int32_t begin, std::int32_t end,
                 float* k_tile, float* v_tile) {
  const std::size_t head_dim = cache.head_dim;
  const std::size_t row_bytes = head_dim * memory::StorageBytes(cache.storage);
  for (std::int32_t pos = begin; pos < end; ++pos) {
    const std::byte* k_row =
        KvRowAddress(cache, pages, pos, kv_head, /*value=*/false);
    const auto offset = static_cast<std::size_t>(pos - begin) * head_dim;
    ConvertRow(k_row, cache.storage, head_dim, k_tile + offset);
    ConvertRow(k_row + row_bytes, cache.storage, head_dim, v_tile + offset);
  }
}

// The online softmax of one panel over num_keys scores (masked = -inf), in
// the log2 domain (scores are pre-multiplied by log2(e), so 2^(s - max) is
// the softmax's exp(score - max) and needs no range reduction by ln 2):
// scores become p = 2^(s - new_max), the running max and sum of each row are
// updated, and alpha receives 2^(old_max - new_max), the factor by which the
// accumulator must be rescaled (0 while a row has seen nothing, never
// 2^(-inf + inf)).
template <std::size_t PanelRows>
void OnlineSoftmaxPanel(float* scores, std::size_t num_keys, float* row_max,
                        float* row_sum, float* alpha) {
  for (std::size_t half = 0; half < PanelRows; half += kLanes) {
    const Vec8 old_max = flash::Load(row_max + half);
    // Two chains hide the latency of max and add (4 cycles on Zen 3).
    Vec8 max0 = old_max;
    Vec8 max1 = flash::Set1(-INFINITY);
    std::size_t t = 0;
    for (; t + 2 <= num_keys; t += 2) {
      max0 = flash::Max(max0, flash::Load(scores + t * PanelRows + half));
      max1 = flash::Max(max1, flash::Load(scores + (t + 1) * PanelRows + half));
    }
    if (t < num_keys) {
      max0 = flash::Max(max0, flash::Load(scores + t * PanelRows + half));
    }
    const Vec8 new_max = flash::Max(max0, max1);
    const Vec8 reference = flash::ZeroIfMinusInf(new_max);
    Vec8 sum0 = flash::Zero();
    Vec8 sum1 = flash::Zero();
    for (t = 0; t + 2 <= num_keys; t += 2) {
      float* s0 = scores + t * PanelRows + half;
      float* s1 = s0 + PanelRows;
      const Vec8 p0 =
          flash::Exp2NonPositive(flash::Sub(flash::Load(s0), reference));
      const Vec8 p1 =
          flash::Exp2NonPositive(flash::Sub(flash::Load(s1), reference));
      flash::Store(s0, p0);
      flash::Store(s1, p1);
      sum0 = flash::Add(sum0, p0);
      sum1 = flash::Add(sum1, p1);
    }
    if (t < num_keys) {
      float* s0 = scores + t * PanelRows + half;
      const Vec8 p0 =
          flash::Exp2NonPositive(flash::Sub(flash::Load(s0), reference));
      flash::Store(s0, p0);
      sum0 = flash::Add(sum0, p0);
    }
    const Vec8 rescale = flash::Exp2NonPositive(flash::Sub(old_max, reference));
    flash::Store(row_sum + half, flash::Fma(flash::Load(row_sum + half),
                                            rescale, flash::Add(sum0, sum1)));
    flash::Store(row_max + half, new_max);
    flash::Store(alpha + half, rescale);
  }
}

// One query block: tokens [a_begin, a_end) of the item's sequence.
struct QueryBlock {
  const KernelArgs* args;
  const WorkItem* item;
  std::int32_t a_begin;
  std::int32_t a_end;
  std::int32_t kv_block_tokens;
};

template <std::size_t NumVecs>
void RunQueryBlock(const QueryBlock& block) {
  constexpr std::size_t kPanelRows = flash::PanelTraits<NumVecs>::kRows;
  const KernelArgs& args = *block.args;
  const WorkItem& item = *block.item;
  const ValidatedBatch& batch = *args.batch;
  const SequenceSpan& seq = batch.sequences[item.sequence];
  const ResolvedParams& params = batch.params;
  const std::size_t head_dim = batch.shape.head_dim;
  const std::size_t group = batch.group_size;
  const std::size_t num_q_heads = batch.shape.num_q_heads;
  const std::size_t num_rows =
      static_cast<std::size_t>(block.a_end - block.a_begin) * group;
  const std::size_t num_panels = DivideRoundUp(num_rows, kPanelRows);
  const std::size_t kv_block = static_cast<std::size_t>(block.kv_block_tokens);
  const std::int32_t gap = seq.kv_len - seq.q_len;
  const std::int32_t* pages = batch.page_indices.data() + seq.page_row;

  // Scratch: Q and O panels (2 * rows * D floats: <= 256 KiB with the default
  // blocks, so they stay in the 512 KiB L2 next to the K/V tiles), row
  // states, one score panel (L1) and the K/V tiles.
  const std::size_t panel_floats = head_dim * kPanelRows;
  const std::size_t tile_floats =
      RoundUpToMultiple<std::size_t>(kv_block * head_dim, 16);
  float* q_panels = t_scratch.Get(2 * num_panels * panel_floats +
                                  2 * num_panels * kPanelRows + kPanelRows +
                                  kv_block * kPanelRows + 2 * tile_floats);
  float* o_panels = q_panels + num_panels * panel_floats;
  float* row_max = o_panels + num_panels * panel_floats;
  float* row_sum = row_max + num_panels * kPanelRows;
  float* alpha = row_sum + num_panels * kPanelRows;
  float* scores = alpha + kPanelRows;
  float* k_tile = scores + kv_block * kPanelRows;
  float* v_tile = k_tile + tile_floats;

  // Row r = (token a_begin + r / group, head r % group). Padding rows of the
  // last panel repeat the last row's position and have zero queries; they
  // are computed and never written.
  const auto position_of_row = [&](std::size_t row) {
    const std::size_t real = std::min(row, num_rows - 1);
    return gap + block.a_begin + static_cast<std::int32_t>(real / group);
  };
  const auto visible_keys = [&](std::size_t row) {
    KeyRange range = VisibleKeys(position_of_row(row), seq.kv_len, params);
    range.begin = std::max(range.begin, item.kv_begin);
    range.end = std::min(range.end, item.kv_end);
    return range;
  };

  // Scores are kept in the log2 domain: s2 = s * log2(e). The soft cap
  // commutes with that scaling when its constant is scaled too:
  // log2(e) * c * tanh(s / c) = c2 * tanh(s2 / c2) with c2 = c * log2(e).
  const float q_scale = params.score_scale * kLog2E;
  const float soft_cap_log2 = params.soft_cap * kLog2E;
  for (std::size_t r = 0; r < num_panels * kPanelRows; ++r) {
    float* dst = q_panels + (r / kPanelRows) * panel_floats + r % kPanelRows;
    if (r < num_rows) {
      const std::size_t token =
          static_cast<std::size_t>(seq.q_begin + block.a_begin) + r / group;
      const float* src =
          args.q +
          (token * num_q_heads + item.kv_head * group + r % group) * head_dim;
      for (std::size_t d = 0; d < head_dim; ++d) {
        dst[d * kPanelRows] = src[d] * q_scale;
      }
    } else {
      for (std::size_t d = 0; d < head_dim; ++d) dst[d * kPanelRows] = 0.0F;
    }
  }
  std::fill(o_panels, o_panels + num_panels * panel_floats, 0.0F);
  std::fill(row_max, row_max + num_panels * kPanelRows, -INFINITY);
  std::fill(row_sum, row_sum + num_panels * kPanelRows, 0.0F);

  // Visible ranges are monotone in the row (positions grow with it), so the
  // block sees [first.begin, last.end) and every row sees
  // [last.begin, first.end).
  const KeyRange first = visible_keys(0);
  const KeyRange last = visible_keys(num_rows - 1);
  const std::int32_t lo = first.begin;
  const std::int32_t hi = last.end;
  std::uint64_t full_tiles = 0;
  std::uint64_t masked_tiles = 0;

  for (std::int32_t b0 = lo; b0 < hi; b0 += block.kv_block_tokens) {
    const std::int32_t b1 = std::min(hi, b0 + block.kv_block_tokens);
    LoadKvTiles(args.cache, pages, item.kv_head, b0, b1, k_tile, v_tile);
    if (b0 >= last.begin && b1 <= first.end) {
      ++full_tiles;
    } else {
      ++masked_tiles;
    }

    for (std::size_t panel = 0; panel < num_panels; ++panel) {
      const KeyRange panel_first = visible_keys(panel * kPanelRows);
      const KeyRange panel_last =
          visible_keys(std::min(num_rows, (panel + 1) * kPanelRows) - 1);
      // The panel's columns: keys of this tile that some row of it sees.
      const std::int32_t c0 = std::max(b0, panel_first.begin);
      const std::int32_t c1 = std::min(b1, panel_last.end);
      if (c0 >= c1) continue;  // hidden from the whole panel
      const auto num_keys = static_cast<std::size_t>(c1 - c0);
      const auto key_offset = static_cast<std::size_t>(c0 - b0);
      const float* q_panel = q_panels + panel * panel_floats;
      float* o_panel = o_panels + panel * panel_floats;

      flash::QkPanel<NumVecs>(k_tile + key_offset * head_dim, head_dim,
                              num_keys, q_panel, head_dim, scores);
      if (params.soft_cap != 0.0F) {
        CapScores(scores, num_keys * kPanelRows, soft_cap_log2);
      }
      if (panel_last.begin > c0 || panel_first.end < c1) {
        for (std::size_t lane = 0; lane < kPanelRows; ++lane) {
          const KeyRange range = visible_keys(panel * kPanelRows + lane);
          const std::int32_t masked_below = std::min(c1, range.begin);
          for (std::int32_t b = c0; b < masked_below; ++b) {
            scores[static_cast<std::size_t>(b - c0) * kPanelRows + lane] =
                -INFINITY;
          }
          for (std::int32_t b = std::max(c0, range.end); b < c1; ++b) {
            scores[static_cast<std::size_t>(b - c0) * kPanelRows + lane] =
                -INFINITY;
          }
        }
      }
      OnlineSoftmaxPanel<kPanelRows>(scores, num_keys,
                                     row_max + panel * kPanelRows,
                                     row_sum + panel * kPanelRows, alpha);
      flash::PvPanel<NumVecs>(v_tile + key_offset * head_dim, head_dim,
                              num_keys, scores, head_dim, alpha, o_panel);
    }
  }

  g_query_blocks.fetch_add(1, std::memory_order_relaxed);
  g_grid_tiles.fetch_add(
      static_cast<std::uint64_t>((seq.kv_len + block.kv_block_tokens - 1) /
                                 block.kv_block_tokens),
      std::memory_order_relaxed);
  g_full_tiles.fetch_add(full_tiles, std::memory_order_relaxed);
  g_masked_tiles.fetch_add(masked_tiles, std::memory_order_relaxed);

  if (item.partial >= 0) {
    // A KV split of a one-token item: the unnormalised state of each head.
    RPA_CHECK(num_rows == group);
    float* slot = args.partials + static_cast<std::size_t>(item.partial) *
                                      PartialSlotFloats(batch);
    for (std::size_t g = 0; g < group; ++g) {
      float* state = slot + g * (head_dim + 2);
      state[0] = row_max[g] * kLn2;  // back to the natural-log domain
      state[1] = row_sum[g];
      for (std::size_t d = 0; d < head_dim; ++d) {
        state[2 + d] = o_panels[d * kPanelRows + g];
      }
    }
    return;
  }
  for (std::size_t r = 0; r < num_rows; ++r) {
    const std::size_t lane = r % kPanelRows;
    const float* o_panel = o_panels + (r / kPanelRows) * panel_floats;
    // Every row sees at least its own position, so the sum is >= 1 for
    // finite data. No check here: a NaN the caller put inside kv_len may
    // make it NaN or 0 and the row NaN, which is the caller's data (SPEC 2
    // only forbids leaks from slots past kv_len), not a bug.
    const float factor = params.v_scale / row_sum[r];
    const std::size_t token =
        static_cast<std::size_t>(seq.q_begin + block.a_begin) + r / group;
    float* dst =
        args.out +
        (token * num_q_heads + item.kv_head * group + r % group) * head_dim;
    for (std::size_t d = 0; d < head_dim; ++d) {
      dst[d] = o_panel[d * kPanelRows + lane] * factor;
    }
  }
}

}  // namespace

FlashTileCounts GetFlashTileCounts() {
  FlashTileCounts counts;
  counts.query_blocks = g_query_blocks.load(std::memory_order_relaxed);
  counts.grid_tiles = g_grid_tiles.load(std::memory_order_relaxed);
  counts.full_tiles = g_full_tiles.load(std::memory_order_relaxed);
  counts.masked_tiles = g_masked_tiles.load(std::memory_order_relaxed);
  return counts;
}

void ResetFlashTileCounts() {
  g_query_blocks.store(0, std::memory_order_relaxed);
  g_grid_tiles.store(0, std::memory_order_relaxed);
  g_full_tiles.store(0, std::memory_order_relaxed);
  g_masked_tiles.store(0, std::memory_order_relaxed);
}

BlockSizes DefaultBlockSizes(KernelKind kind, const ValidatedBatch& batch) {
  // Prefill and mixed items use the same tiles: a mixed item's short query
  // range is simply one (partial) block, and its panel width adapts (8 or 16
  // rows) in RunFlashItem.
  (void)kind;
  const std::uint32_t head_dim = std::max(1U, batch.shape.head_dim);
  const std::uint32_t group = std::max(1U, batch.group_size);
  // Query rows per block: the Q and O panels (2 * rows * D * 4 bytes) take
  // at most 256 KiB, half of the 512 KiB L2 (Zen 3), leaving room for the K
  // and V tiles; at least one full panel. Each block converts its own K/V
  // tiles, so fewer rows mean more conversion per FLOP: on the Llama-3-8B
  // prefill shape (D 128, group 4) 32-token blocks measured ~10% slower than
  // 64, while 64..128 tokens x 64..256 keys were all within noise (~3%).
  // 64 tokens also give 256 items for 8 kv heads x 2048 tokens, plenty for
  // the largest-first balancing over a few threads.
  const std::uint32_t rows = std::clamp(32768U / head_dim, 16U, 256U);
  BlockSizes sizes;
  sizes.q_tokens_per_block = std::max(1U, rows / group);
  // Keys per block: the K and V tiles (2 * keys * D * 4 bytes) take 128 KiB
  // at D = 128, so Q/O panels + tiles (~400 KiB) stay in L2; the score panel
  // (keys * 64 bytes) stays in L1 next to one Q panel (D * 64 bytes).
  sizes.kv_tokens_per_block = std::clamp(16384U / head_dim, 16U, 256U);
  return sizes;
}

void RunFlashItem(const KernelArgs& args, const WorkItem& item,
                  const BlockSizes& blocks) {
  RPA_DCHECK(item.q_begin < item.q_end);
  const BlockSizes defaults = DefaultBlockSizes(item.kernel, *args.batch);
  const auto q_block = static_cast<std::int32_t>(
      blocks.q_tokens_per_block != 0 ? blocks.q_tokens_per_block
                                     : defaults.q_tokens_per_block);
  const auto kv_block = static_cast<std::int32_t>(
      blocks.kv_tokens_per_block != 0 ? blocks.kv_tokens_per_block
                                      : defaults.kv_tokens_per_block);
  // The plan gives flash items one kv head; an item over several (the decode
  // kernel's shape) runs them one after the other, each into its own
  // partial slot when split.
  for (std::uint32_t i = 0; i < std::max(1U, item.num_kv_heads); ++i) {
    WorkItem head_item = item;
    head_item.kv_head = item.kv_head + i;
    head_item.num_kv_heads = 1;
    if (item.partial >= 0) {
      head_item.partial = item.partial + static_cast<std::int32_t>(i) *
                                             item.partial_head_stride;
    }
    for (std::int32_t a = item.q_begin; a < item.q_end; a += q_block) {
      const QueryBlock query_block{.args = &args,
                                   .item = &head_item,
                                   .a_begin = a,
                                   .a_end = std::min(item.q_end, a + q_block),
                                   .kv_block_tokens = kv_block};
      // Blocks of at most 8 rows (decode-like rows of a mixed batch: q_len x
      // group <= 8) use 8-row panels, so a 4-row block wastes half the lanes
      // instead of three quarters.
      if (static_cast<std::size_t>(query_block.a_end - a) *
              args.batch->group_size <=
          kLanes) {
        RunQueryBlock<1>(query_block);
      } else {
        RunQueryBlock<2>(query_block);
      }
    }
  }
}

}  // namespace rpa::attention::internal
