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
// The AVX2 path reads K and V straight from the pages (f16 / bf16 converted
// in registers, no tile copy), in blocks of up to kBlockTokens keys; for each
// kv head of the item in turn:
//   1. scores for every group head, the heads in chunks of 4 (then 2, 1):
//      each K row is loaded once per chunk and FMAed against the chunk's q
//      rows; 8 independent accumulators (heads x tokens) are reduced
//      together with one hadd tree;
//   2. scale, soft cap and the online softmax per head over the block;
//   3. the V rows accumulated into group x D accumulators that stay in
//      registers across the block's tokens (16 columns x 4 heads at a time).
// Meanwhile a software prefetcher walks the item's byte stream (page by page
// through the page table, which is what the hardware prefetchers cannot
// follow) about kPrefetchTokens ahead, a few lines per score step: a burst
// of prefetches fills the miss buffers and stalls the loads of the block
// being computed. The block is consumed head by head, so the whole block
// must be on its way before its first head is computed; it waits in L2.
// Positions outside [max(visible.begin, kv_begin), min(visible.end, kv_end))
// are never read, nor prefetched: slots past kv_len may hold NaN, and
// unused page-table entries may point anywhere.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "building_blocks.h"
#include "kernels.h"

#if defined(RPA_ATTENTION_AVX2)
#include <immintrin.h>
#endif

namespace rpa::attention::internal {

namespace {

using memory::StorageType;

// Keys per block: large enough to amortise the per-block softmax work,
// small enough that a block of every kv head's K and V waits in L2.
constexpr std::int32_t kBlockTokens = 32;
// How far ahead of the block being computed the prefetcher runs, in tokens:
// at least one block (see the file comment).
constexpr std::int32_t kPrefetchTokens = 32;
constexpr std::size_t kCacheLineBytes = 64;

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

struct ItemView {
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

ItemView MakeView(const KernelArgs& args, const WorkItem& item) {
  ItemView view;
  view.batch = args.batch;
  view.span = &args.batch->sequences[item.sequence];
  view.group = args.batch->group_size;
  view.dim = args.batch->shape.head_dim;
  view.num_heads = item.num_kv_heads;
  const std::int32_t query_pos = view.span->kv_len - 1;
  const KeyRange visible =
      VisibleKeys(query_pos, view.span->kv_len, args.batch->params);
  view.begin = std::max(visible.begin, item.kv_begin);
  view.end = std::min(visible.end, item.kv_end);
  view.pages = args.batch->page_indices.data() + view.span->page_row;
  view.q = args.q + (static_cast<std::size_t>(view.span->q_begin) *
                         args.batch->shape.num_q_heads +
                     static_cast<std::size_t>(item.kv_head) * view.group) *
                        view.dim;
  return view;
}

// Writes the item's result: normalised rows of out, or the partial slots.
// acc and rows hold num_heads x group rows.
void Finish(const KernelArgs& args, const WorkItem& item, const ItemView& view,
            const float* acc, const SoftmaxRow* rows) {
  const ValidatedBatch& batch = *view.batch;
  const std::uint32_t dim = view.dim;
  for (std::uint32_t i = 0; i < view.num_heads; ++i) {
    for (std::uint32_t g = 0; g < view.group; ++g) {
      const std::size_t row = static_cast<std::size_t>(i) * view.group + g;
      const float* head_acc = acc + row * dim;
      if (item.partial >= 0) {
        const auto slot_index =
            static_cast<std::size_t>(item.partial) +
            static_cast<std::size_t>(i) *
                static_cast<std::size_t>(item.partial_head_stride);
        float* slot = args.partials + slot_index * PartialSlotFloats(batch) +
                      static_cast<std::size_t>(g) * (dim + 2);
        slot[0] = rows[row].max;
        slot[1] = rows[row].sum;
        std::copy(head_acc, head_acc + dim, slot + 2);
      } else {
        float* out =
            args.out +
            (static_cast<std::size_t>(view.span->q_begin) *
                 batch.shape.num_q_heads +
             static_cast<std::size_t>(item.kv_head) * view.group + row) *
                dim;
        // A query always sees its own key, so sum > 0 for an unsplit item.
        const float normaliser = batch.params.v_scale / rows[row].sum;
        for (std::uint32_t d = 0; d < dim; ++d) {
          out[d] = head_acc[d] * normaliser;
        }
      }
    }
  }
}

// Any head dim, any build: tiles through LoadKvTile and the vector helpers,
// one kv head after the other.
void RunDecodeItemGeneric(const KernelArgs& args, const WorkItem& item) {
  const ItemView view = MakeView(args, item);
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
  Finish(args, item, view, scratch.acc.data(), scratch.rows.data());
}

#if defined(RPA_ATTENTION_AVX2)

// Eight stored elements at `p` as f32.
template <StorageType kType>
inline __m256 Load8(const std::byte* p) {
  if constexpr (kType == StorageType::kF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  } else if constexpr (kType == StorageType::kF16) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    const __m256i wide = _mm256_cvtepu16_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
}

// Sums each of eight vectors: lane i of the result = sum of a[i]'s lanes.
inline __m256 ReduceEight(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]);
  const __m256 t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]);
  const __m256 t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1);
  const __m256 u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                       _mm256_permute2f128_ps(u0, u1, 0x31));
}

// Walks the byte stream an item reads (for each key position in order, the
// token's bytes of the item's kv heads: one contiguous run per page when the
// item covers every kv head) and prefetches it a few cache lines at a time.
// Never goes past the item's last key.
class StreamPrefetcher {
 public:
  StreamPrefetcher(const memory::KvLayerView& cache, const std::int32_t* pages,
                   std::int32_t begin, std::int32_t end, std::size_t first_byte,
                   std::size_t end_byte)
      : cache_(&cache),
        pages_(pages),
        position_(begin),
        end_(end),
        first_byte_(first_byte),
        end_byte_(end_byte) {
    if (position_ < end_) StartToken(/*lookup=*/true);
  }

  std::int32_t position() const { return position_; }
  std::size_t lines_per_token() const {
    return (end_byte_ - first_byte_) / kCacheLineBytes + 1;
  }

  // Prefetches up to `lines` lines, stopping at position `limit`.
  void Issue(std::size_t lines, std::int32_t limit) {
    limit = std::min(limit, end_);
    while (lines > 0 && position_ < limit) {
      // The rest of this token's lines, in a tight loop.
      const auto left =
          (static_cast<std::size_t>(token_end_ - line_) + kCacheLineBytes - 1) /
          kCacheLineBytes;
      const std::size_t count = std::min(lines, left);
      for (std::size_t j = 0; j < count; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(line_ + j * kCacheLineBytes),
                     _MM_HINT_T0);
      }
      line_ += count * kCacheLineBytes;
      lines -= count;
      if (count == left) {
        ++position_;
        if (position_ < end_) {
          StartToken(position_ %
                         static_cast<std::int32_t>(cache_->page_size_tokens) ==
                     0);
        }
      }
    }
  }

 private:
  void StartToken(bool lookup) {
    if (lookup) {
      token_ = KvRowAddress(*cache_, pages_, position_, /*kv_head=*/0,
                            /*value=*/false);
    } else {
      token_ += cache_->token_bytes;
    }
    const auto first = reinterpret_cast<std::uintptr_t>(token_ + first_byte_);
    line_ = token_ + first_byte_ - (first % kCacheLineBytes);
    token_end_ = token_ + end_byte_;
  }

  const memory::KvLayerView* cache_;
  const std::int32_t* pages_;
  std::int32_t position_;
  std::int32_t end_;
  std::size_t first_byte_;
  std::size_t end_byte_;
  const std::byte* token_ = nullptr;      // slot of position_
  const std::byte* line_ = nullptr;       // next line to prefetch
  const std::byte* token_end_ = nullptr;  // end of position_'s bytes
};

// The prefetches one kv head's pass over a block issues: `per_step` lines
// per score step up to position `limit`, the rest at the end of the pass.
struct PrefetchQuota {
  StreamPrefetcher* stream = nullptr;  // null: nothing to prefetch
  std::size_t per_step = 0;
  std::int32_t limit = 0;

  void Step() const {
    if (stream != nullptr) stream->Issue(per_step, limit);
  }
  void Finish() const {
    if (stream != nullptr) stream->Issue(~std::size_t{0}, limit);
  }
};

// Raw scores q_h . K_t of kHeads heads (q rows `dim` apart) for the block's
// tokens (K rows at key_rows[t] + offset, the list padded to a multiple of
// 8 / kHeads by repeating a valid row), written to scores[h * kBlockTokens +
// t]. kHeads x tokens-per-step = 8 accumulators, reduced by one hadd tree.
template <StorageType kType, std::size_t kHeads>
void BlockScores(const float* q, std::uint32_t dim,
                 const std::byte* const* key_rows, std::size_t offset,
                 std::int32_t first_token, std::int32_t end_token,
                 float* scores, const PrefetchQuota& prefetch) {
  constexpr std::size_t kTokensPerStep = 8 / kHeads;
  constexpr std::size_t kElementBytes = memory::StorageBytes(kType);
  for (auto t0 = static_cast<std::size_t>(first_token);
       t0 < static_cast<std::size_t>(end_token); t0 += kTokensPerStep) {
    prefetch.Step();
    const std::byte* rows[kTokensPerStep];
    for (std::size_t t = 0; t < kTokensPerStep; ++t) {
      rows[t] = key_rows[t0 + t] + offset;
    }
    __m256 acc[8];
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (std::uint32_t c = 0; c < dim; c += 8) {
      __m256 q_chunk[kHeads];
      for (std::size_t h = 0; h < kHeads; ++h) {
        q_chunk[h] = _mm256_loadu_ps(q + h * dim + c);
      }
      for (std::size_t t = 0; t < kTokensPerStep; ++t) {
        const __m256 k = Load8<kType>(rows[t] + c * kElementBytes);
        for (std::size_t h = 0; h < kHeads; ++h) {
          __m256& a = acc[h * kTokensPerStep + t];
          a = _mm256_fmadd_ps(q_chunk[h], k, a);
        }
      }
    }
    alignas(32) float sums[8];
    _mm256_store_ps(sums, ReduceEight(acc));
    for (std::size_t h = 0; h < kHeads; ++h) {
      for (std::size_t t = 0; t < kTokensPerStep; ++t) {
        scores[h * kBlockTokens + t0 + t] = sums[h * kTokensPerStep + t];
      }
    }
  }
}

// acc[h][0..dim) += sum_t p[h * kBlockTokens + t] * V_t for kHeads heads (V
// rows at value_rows[t] + offset); the accumulators of 16 (or, at a tail of
// 8, 8) columns of every head stay in registers across the block's tokens.
template <StorageType kType, std::size_t kHeads>
void BlockAccumulate(const float* p, std::uint32_t dim,
                     const std::byte* const* value_rows, std::size_t offset,
                     std::int32_t num_tokens, float* acc) {
  constexpr std::size_t kElementBytes = memory::StorageBytes(kType);
  std::uint32_t c = 0;
  for (; c + 16 <= dim; c += 16) {
    __m256 a[2 * kHeads];
    for (std::size_t h = 0; h < kHeads; ++h) {
      float* row = acc + h * dim + c;
      a[2 * h] = _mm256_loadu_ps(row);
      a[2 * h + 1] = _mm256_loadu_ps(row + 8);
    }
    const std::size_t column_offset = offset + c * kElementBytes;
    for (std::int32_t t = 0; t < num_tokens; ++t) {
      const std::byte* v = value_rows[t] + column_offset;
      const __m256 v0 = Load8<kType>(v);
      const __m256 v1 = Load8<kType>(v + 8 * kElementBytes);
      for (std::size_t h = 0; h < kHeads; ++h) {
        const __m256 weight = _mm256_broadcast_ss(p + h * kBlockTokens + t);
        auto& a0 = a[2 * h];
        auto& a1 = a[2 * h + 1];
        a0 = _mm256_fmadd_ps(weight, v0, a0);
        a1 = _mm256_fmadd_ps(weight, v1, a1);
      }
    }
    for (std::size_t h = 0; h < kHeads; ++h) {
      float* row = acc + h * dim + c;
      _mm256_storeu_ps(row, a[2 * h]);
      _mm256_storeu_ps(row + 8, a[2 * h + 1]);
    }
  }
  if (c < dim) {  // dim % 16 == 8
    __m256 a[kHeads];
    for (std::size_t h = 0; h < kHeads; ++h) {
      a[h] = _mm256_loadu_ps(acc + h * dim + c);
    }
    const std::size_t column_offset = offset + c * kElementBytes;
    for (std::int32_t t = 0; t < num_tokens; ++t) {
      const __m256 v0 = Load8<kType>(value_rows[t] + column_offset);
      for (std::size_t h = 0; h < kHeads; ++h) {
        const __m256 weight = _mm256_broadcast_ss(p + h * kBlockTokens + t);
        auto& a0 = a[h];
        a0 = _mm256_fmadd_ps(weight, v0, a0);
      }
    }
    for (std::size_t h = 0; h < kHeads; ++h) {
      _mm256_storeu_ps(acc + h * dim + c, a[h]);
    }
  }
}

// The group's heads in chunks of 4, then 2, then 1; the first chunk issues
// the prefetches.
template <StorageType kType>
void GroupScores(const float* q, std::uint32_t group, std::uint32_t dim,
                 const std::byte* const* key_rows, std::size_t offset,
                 std::int32_t first_token, std::int32_t end_token,
                 float* scores, PrefetchQuota prefetch) {
  std::uint32_t g = 0;
  for (; g + 4 <= group; g += 4) {
    BlockScores<kType, 4>(q + g * dim, dim, key_rows, offset, first_token,
                          end_token, scores + g * kBlockTokens, prefetch);
    prefetch.per_step = 0;
  }
  for (; g + 2 <= group; g += 2) {
    BlockScores<kType, 2>(q + g * dim, dim, key_rows, offset, first_token,
                          end_token, scores + g * kBlockTokens, prefetch);
    prefetch.per_step = 0;
  }
  if (g < group) {
    BlockScores<kType, 1>(q + g * dim, dim, key_rows, offset, first_token,
                          end_token, scores + g * kBlockTokens, prefetch);
  }
}

template <StorageType kType>
void GroupAccumulate(const float* p, std::uint32_t group, std::uint32_t dim,
                     const std::byte* const* value_rows, std::size_t offset,
                     std::int32_t num_tokens, float* acc) {
  std::uint32_t g = 0;
  for (; g + 4 <= group; g += 4) {
    BlockAccumulate<kType, 4>(p + g * kBlockTokens, dim, value_rows, offset,
                              num_tokens, acc + g * dim);
  }
  if (g + 2 <= group) {
    BlockAccumulate<kType, 2>(p + g * kBlockTokens, dim, value_rows, offset,
                              num_tokens, acc + g * dim);
    g += 2;
  }
  if (g < group) {
    BlockAccumulate<kType, 1>(p + g * kBlockTokens, dim, value_rows, offset,
                              num_tokens, acc + g * dim);
  }
}

// The slot addresses of positions [begin, end), padded with copies of the
// last one to a multiple of 8 entries (the score kernels work on up to 8
// tokens at a time).
inline std::int32_t GatherSlots(const memory::KvLayerView& cache,
                                const std::int32_t* pages, std::int32_t begin,
                                std::int32_t end, const std::byte** slots) {
  const auto ps = static_cast<std::int32_t>(cache.page_size_tokens);
  std::int32_t count = 0;
  std::int32_t position = begin;
  while (position < end) {
    const std::int32_t page_end = std::min(end, (position / ps + 1) * ps);
    const std::byte* address =
        KvRowAddress(cache, pages, position, /*kv_head=*/0, /*value=*/false);
    for (; position < page_end; ++position) {
      slots[count++] = address;
      address += cache.token_bytes;
    }
  }
  const std::int32_t padded = (count + 7) / 8 * 8;
  for (std::int32_t i = count; i < padded; ++i) slots[i] = slots[count - 1];
  return count;
}

template <StorageType kType>
void RunDecodeItemAvx2(const KernelArgs& args, const WorkItem& item) {
  const ItemView view = MakeView(args, item);
  const ValidatedBatch& batch = *view.batch;
  const std::uint32_t group = view.group;
  const std::uint32_t dim = view.dim;
  const std::uint32_t num_heads = view.num_heads;
  const std::size_t row_bytes = dim * memory::StorageBytes(kType);
  const std::size_t rows = static_cast<std::size_t>(num_heads) * group;
  Scratch& scratch = ThreadScratch();
  scratch.scores.resize(static_cast<std::size_t>(group) * kBlockTokens);
  scratch.acc.assign(rows * dim, 0.0F);
  scratch.rows.assign(rows, SoftmaxRow{});

  // The item's bytes of a token: K and V rows of its kv heads, adjacent.
  StreamPrefetcher stream(args.cache, view.pages, view.begin, view.end,
                          2 * item.kv_head * row_bytes,
                          2 * (item.kv_head + num_heads) * row_bytes);
  // The first block is needed at once: all of it now, so that its misses
  // overlap.
  stream.Issue(~std::size_t{0}, view.begin + kBlockTokens);
  std::array<const std::byte*, kBlockTokens + 8> slots;
  for (std::int32_t block = view.begin; block < view.end;
       block += kBlockTokens) {
    const std::int32_t block_end = std::min(view.end, block + kBlockTokens);
    const std::int32_t n =
        GatherSlots(args.cache, view.pages, block, block_end, slots.data());
    // Every kv head's pass moves the stream 1 / num_heads of a block on.
    const std::int32_t target = block_end + kPrefetchTokens;
    const std::int32_t behind = std::max(0, target - stream.position());
    const std::size_t steps = static_cast<std::size_t>(n + 1) / 2;
    for (std::uint32_t i = 0; i < num_heads; ++i) {
      const std::int32_t limit =
          target - behind * static_cast<std::int32_t>(num_heads - 1 - i) /
                       static_cast<std::int32_t>(num_heads);
      const std::size_t lines =
          static_cast<std::size_t>(std::max(0, limit - stream.position())) *
          stream.lines_per_token();
      const PrefetchQuota prefetch{&stream, (lines + steps - 1) / steps, limit};
      const std::size_t key_offset = 2 * (item.kv_head + i) * row_bytes;
      const float* q = view.q + static_cast<std::size_t>(i) * group * dim;
      float* acc =
          scratch.acc.data() + static_cast<std::size_t>(i) * group * dim;
      SoftmaxRow* head_rows =
          scratch.rows.data() + static_cast<std::size_t>(i) * group;
      float* scores = scratch.scores.data();
      GroupScores<kType>(q, group, dim, slots.data(), key_offset, 0, n, scores,
                         prefetch);
      prefetch.Finish();
      for (std::uint32_t g = 0; g < group; ++g) {
        float* head_scores = scores + g * kBlockTokens;
        const auto count = static_cast<std::size_t>(n);
        ScaleAndCapScores(head_scores, count, batch.params.score_scale,
                          batch.params.soft_cap);
        const float factor =
            OnlineSoftmaxUpdate(&head_rows[g], head_scores, count);
        if (factor != 1.0F) ScaleInPlace(acc + g * dim, dim, factor);
      }
      GroupAccumulate<kType>(scores, group, dim, slots.data(),
                             key_offset + row_bytes, n, acc);
    }
  }
  Finish(args, item, view, scratch.acc.data(), scratch.rows.data());
}

#endif  // RPA_ATTENTION_AVX2

}  // namespace

void RunDecodeItem(const KernelArgs& args, const WorkItem& item) {
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
