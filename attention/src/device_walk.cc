// BuildDeviceWalk (device_blocks.h): the walk of the batch as Q blocks,
// steps and row pieces, with the tapered ends of the run. The block sizes
// and the VMEM layout it walks with are chosen in device_blocks.cc.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "building_blocks.h"
#include "device_blocks.h"
#include "plan_data.h"

#include "rpa/attention/plan.h"
#include "rpa/device/device_spec.h"
#include "rpa/runtime/check.h"

namespace rpa::attention::internal {

namespace {

class WalkBuilder {
 public:
  WalkBuilder(const ValidatedBatch& batch, DeviceWalk* walk)
      : batch_(batch), walk_(walk), written_end_(batch.sequences.size()) {
    for (std::size_t i = 0; i < batch.sequences.size(); ++i) {
      const SequenceSpan& span = batch.sequences[i];
      written_end_[i] = span.kv_len - span.q_len;  // gap: nothing written yet
    }
  }

  void BeginQBlock(std::int32_t row_begin, std::int32_t row_end) {
    DeviceQBlock block;
    block.row_begin = row_begin;
    block.row_end = row_end;
    block.first_step = static_cast<std::uint32_t>(walk_->steps.size());
    walk_->q_blocks.push_back(block);
  }
  void EndQBlock() {
    RPA_CHECK(walk_->steps.size() > walk_->q_blocks.back().first_step);
    walk_->q_blocks.back().last_step =
        static_cast<std::uint32_t>(walk_->steps.size() - 1);
  }

  // The KV blocks of one segment: rows [first_query, first_query + rows) of
  // sequence `sequence`, the Q block's rows from `local_row`.
  void AddSegment(std::uint32_t sequence, std::int32_t local_row,
                  std::int32_t first_query, std::int32_t rows,
                  std::uint32_t kv_pages_per_block) {
    const SequenceSpan& span = batch_.sequences[sequence];
    const std::int32_t gap = span.kv_len - span.q_len;
    const auto ps = static_cast<std::int32_t>(batch_.cache.page_size_tokens);
    // Consecutive queries' visible ranges overlap or touch (each sees its
    // own position), so the union is [first.begin, last.end).
    const KeyRange first =
        VisibleKeys(gap + first_query, span.kv_len, batch_.params);
    const KeyRange last =
        VisibleKeys(gap + first_query + rows - 1, span.kv_len, batch_.params);
    const std::int32_t block_tokens =
        static_cast<std::int32_t>(kv_pages_per_block) * ps;
    const std::size_t first_step = walk_->steps.size();
    for (std::int32_t block = first.begin / ps * ps; block < last.end;
         block += block_tokens) {
      const std::int32_t block_end =
          std::min(block + block_tokens, span.kv_len);
      DeviceStep step;
      step.q_block = static_cast<std::uint32_t>(walk_->q_blocks.size() - 1);
      step.sequence = sequence;
      step.local_row = local_row;
      step.num_rows = rows;
      step.first_query = first_query;
      step.block_begin = block;
      step.compute_begin = std::max(block, first.begin);
      step.compute_end = std::min(block_end, last.end);
      // Positions [0, readable) are in the cache when this step's DMAs are
      // issued: the cached ones, and the new tokens written back by steps
      // <= k-2 (both schedules wait for those write-backs before issuing
      // step k's DMAs). A sequence's steps are consecutive, so those are
      // the ones it wrote up to step k-2.
      const std::size_t k = walk_->steps.size();
      std::int32_t readable = gap;
      if (k >= 2 && walk_->steps[k - 2].sequence == sequence) {
        readable = walk_->steps[k - 2].written_after;
      }
      step.fetch_end =
          std::max(step.compute_begin, std::min(step.compute_end, readable));
      // The computed new tokens not written yet: a prefix extension of what
      // earlier steps wrote (a segment's compute ranges are adjacent, and
      // its first one starts at or before its first query's own position,
      // which is at or before the first unwritten token). Each new token is
      // computed by its own query's segment, so all get written.
      std::int32_t& written = written_end_[sequence];
      step.write_begin = std::max({step.compute_begin, gap, written});
      step.write_end = std::max(step.write_begin, step.compute_end);
      if (step.write_end > step.write_begin) {
        RPA_CHECK(written >= step.compute_begin);  // no hole
        written = step.write_end;
      }
      // Staged: the computed keys that are not readable from the cache
      // (they include the ones written back).
      step.stage_begin = std::max(step.compute_begin, readable);
      step.stage_end = std::max(step.stage_begin, step.compute_end);
      step.written_after = written;
      walk_->steps.push_back(step);
    }
    RPA_CHECK(walk_->steps.size() > first_step);
    walk_->steps[first_step].first_of_segment = true;
    walk_->steps.back().last_of_segment = true;
  }

  // Every new token written exactly once (the walk's invariant).
  void CheckAllWritten() const {
    for (std::size_t i = 0; i < batch_.sequences.size(); ++i) {
      RPA_CHECK(written_end_[i] == batch_.sequences[i].kv_len);
    }
  }

 private:
  const ValidatedBatch& batch_;
  DeviceWalk* walk_;
  std::vector<std::int32_t> written_end_;  // per sequence
};

// Pairs (query row, visible key) of query rows [begin, end) of `span`: the
// attention work of those rows.
std::int64_t VisiblePairs(const ValidatedBatch& batch, const SequenceSpan& span,
                          std::int32_t begin, std::int32_t end) {
  const std::int32_t gap = span.kv_len - span.q_len;
  std::int64_t pairs = 0;
  for (std::int32_t row = begin; row < end; ++row) {
    const KeyRange keys = VisibleKeys(gap + row, span.kv_len, batch.params);
    pairs += std::max(0, keys.end - keys.begin);
  }
  return pairs;
}

// Whether the run, starting with this flash sequence, computes its Q blocks
// from the second one on and the first one last (BuildDeviceWalk): when the
// second block has more work than the first (causal), and it sees every key
// from the first unwritten one (the gap) on, so that the new tokens are
// still written as a growing prefix.
bool FirstQBlockLast(const ValidatedBatch& batch, const SequenceSpan& span,
                     std::int32_t q_tokens) {
  if (span.q_len <= q_tokens) return false;
  const std::int32_t gap = span.kv_len - span.q_len;
  const std::int32_t second_end = std::min(2 * q_tokens, span.q_len);
  return VisibleKeys(gap + q_tokens, span.kv_len, batch.params).begin <= gap &&
         VisiblePairs(batch, span, q_tokens, second_end) >
             VisiblePairs(batch, span, 0, q_tokens);
}

// Pieces of step `step` in the given parts of its rows (proportions, see
// BuildDeviceWalk), appended to `pieces`; returns how many.
std::uint32_t AppendPieces(const ValidatedBatch& batch, const DeviceStep& step,
                           std::span<const std::int32_t> parts,
                           std::vector<DevicePiece>* pieces) {
  const SequenceSpan& span = batch.sequences[step.sequence];
  const std::int32_t gap = span.kv_len - span.q_len;
  std::int32_t total = 0;
  for (const std::int32_t part : parts) total += part;
  std::int32_t cumulative = 0;
  std::int32_t row = 0;
  std::int32_t needed_end = step.compute_begin;
  std::uint32_t count = 0;
  for (const std::int32_t part : parts) {
    cumulative += part;
    const std::int32_t row_end = static_cast<std::int32_t>(
        static_cast<std::int64_t>(step.num_rows) * cumulative / total);
    if (row_end <= row) continue;
    const std::int32_t query = gap + step.first_query;
    const KeyRange first = VisibleKeys(query + row, span.kv_len, batch.params);
    const KeyRange last =
        VisibleKeys(query + row_end - 1, span.kv_len, batch.params);
    DevicePiece piece;
    piece.row_begin = row;
    piece.row_end = row_end;
    piece.compute_end =
        std::clamp(last.end, step.compute_begin, step.compute_end);
    piece.compute_begin =
        std::min(piece.compute_end, std::max(step.compute_begin, first.begin));
    piece.new_begin = needed_end;
    piece.new_end = std::max(needed_end, piece.compute_end);
    needed_end = piece.new_end;
    pieces->push_back(piece);
    ++count;
    row = row_end;
  }
  RPA_CHECK(row == step.num_rows && needed_end == step.compute_end);
  return count;
}

// The tapered ends of the run (BuildDeviceWalk's comment).
void CutPieces(const ValidatedBatch& batch, const device::DeviceSpec& spec,
               DeviceWalk* walk) {
  static constexpr std::int32_t kWhole[] = {1};
  static constexpr std::int32_t kPrologue[] = {1, 1, 2};
  static constexpr std::int32_t kEpilogue[] = {6, 5, 3, 2};
  static constexpr std::int32_t kBoth[] = {1, 2, 1};
  const double delay_bytes =
      spec.hbm_bytes_per_s * spec.dma_issue_latency_ns * 1e-9;
  const std::uint64_t row_bytes =
      static_cast<std::uint64_t>(batch.shape.num_q_heads) *
      batch.shape.head_dim * kFloatBytes;
  const std::size_t num_steps = walk->steps.size();
  const std::size_t num_q_blocks = walk->q_blocks.size();
  for (std::size_t k = 0; k < num_steps; ++k) {
    DeviceStep& step = walk->steps[k];
    const DeviceQBlock& block = walk->q_blocks[step.q_block];
    // Pieces cost DMAs, each holding an engine for an issue latency: only a
    // one-segment Q block whose Q (and output) rows take at least the
    // bandwidth-delay product is cut.
    const bool cut =
        block.row_end - block.row_begin == step.num_rows &&
        static_cast<double>(static_cast<std::uint64_t>(step.num_rows) *
                            row_bytes) >= delay_bytes;
    const bool prologue = cut && k < 2;
    const bool epilogue =
        cut && k == block.last_step && step.q_block + 2 >= num_q_blocks;
    std::span<const std::int32_t> parts = kWhole;
    if (prologue && epilogue) {
      parts = kBoth;
    } else if (prologue) {
      parts = kPrologue;
    } else if (epilogue) {
      parts = kEpilogue;
    }
    step.first_piece = static_cast<std::uint32_t>(walk->pieces.size());
    step.num_pieces = AppendPieces(batch, step, parts, &walk->pieces);
    if (step.num_pieces < 2) continue;
    step.fetch_by_piece = prologue;
    // Both Q slots are free for the first two steps' Q blocks (0 and 1).
    step.q_by_piece = prologue && k == block.first_step;
    RPA_CHECK(!step.q_by_piece || step.q_block < 2);
    step.out_by_piece = epilogue;
  }
}

}  // namespace

DeviceWalk BuildDeviceWalk(const ValidatedBatch& batch,
                           const DeviceBlockChoice& choice,
                           const device::DeviceSpec& spec) {
  DeviceWalk walk;
  WalkBuilder builder(batch, &walk);
  const auto num_sequences = static_cast<std::uint32_t>(batch.sequences.size());
  std::uint32_t i = 0;
  while (i < num_sequences) {
    const SequenceSpan& span = batch.sequences[i];
    const DeviceBlockSizes& blocks = choice.sizes[span.range];
    if (choice.kernels[span.range] == KernelKind::kDecode) {
      // Consecutive decode sequences of the range (q_len 1 each: their rows
      // are consecutive) share a Q block.
      std::uint32_t end = i;
      while (end < num_sequences && batch.sequences[end].range == span.range &&
             end - i < blocks.q_tokens_per_block) {
        ++end;
      }
      builder.BeginQBlock(span.q_begin, batch.sequences[end - 1].q_begin + 1);
      for (std::uint32_t s = i; s < end; ++s) {
        RPA_CHECK(batch.sequences[s].q_len == 1);
        builder.AddSegment(s, batch.sequences[s].q_begin - span.q_begin,
                           /*first_query=*/0, /*rows=*/1,
                           blocks.kv_pages_per_block);
      }
      builder.EndQBlock();
      i = end;
      continue;
    }
    const auto q_tokens = static_cast<std::int32_t>(blocks.q_tokens_per_block);
    std::vector<std::int32_t> starts;
    for (std::int32_t q = 0; q < span.q_len; q += q_tokens) starts.push_back(q);
    if (walk.q_blocks.empty() && FirstQBlockLast(batch, span, q_tokens)) {
      std::rotate(starts.begin(), starts.begin() + 1, starts.end());
    }
    for (const std::int32_t q : starts) {
      const std::int32_t rows = std::min(q_tokens, span.q_len - q);
      builder.BeginQBlock(span.q_begin + q, span.q_begin + q + rows);
      builder.AddSegment(i, /*local_row=*/0, q, rows,
                         blocks.kv_pages_per_block);
      builder.EndQBlock();
    }
    ++i;
  }
  builder.CheckAllWritten();
  CutPieces(batch, spec, &walk);
  return walk;
}

}  // namespace rpa::attention::internal
