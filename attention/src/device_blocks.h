#pragma once

// The static half of RunOnDevice (device_run.h): the block sizes of each
// range (the caller's, or the defaults below, shrunk until the buffers fit
// VMEM), the VMEM layout they imply, and the walk of the batch as a list of
// steps (one KV block of one sequence against the query rows of one Q block).
// Everything here is decided before the device exists, so a bad choice is an
// InvalidArgument before anything is written. Private to attention/.
// The walk (BuildDeviceWalk) is in device_walk.cc, the rest in
// device_blocks.cc.
//
// Default block sizes (a field the caller left 0), attention/README.md has
// the reasoning:
//   decode  q_tokens_per_block  as many decode sequences as fit 512 KiB of
//                               f32 queries (>= 1), at most the range's count
//           kv_pages_per_block  pages holding 2 x HBM bandwidth x DMA issue
//                               latency bytes (the bandwidth-delay product
//                               with a 2x margin: the next block's fixed
//                               DMA cost hides behind the current block's
//                               streaming), at most the longest sequence
//           compute_kv_tokens   the block's tokens, at most 2048
//   prefill / mixed
//           q_tokens_per_block  1024 / group query tokens (1024 matrix rows
//                               per kv head), at most the longest q_len
//           kv_pages_per_block  512 tokens' worth of pages (>= 1 page), at
//                               most the longest sequence
//           compute_kv_tokens   the block's tokens, at most 512
// Then, while the buffers of all used ranges do not fit spec.vmem_bytes, the
// range needing the most VMEM halves a default-chosen field (kv pages first,
// then query tokens, then compute keys). Sizes the caller gave are never
// changed: if they do not fit, the error names them.

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "plan_data.h"

#include "rpa/attention/device_run.h"
#include "rpa/attention/plan.h"
#include "rpa/device/device_spec.h"
#include "rpa/runtime/status.h"

namespace rpa::attention::internal {

// The three ranges of the distribution (decode, prefill, mixed).
inline constexpr int kNumRanges = 3;

// Bytes of one f32 element: the VMEM tiles, Q blocks and outputs are f32.
inline constexpr std::uint64_t kFloatBytes = sizeof(float);

// The blocks of every range, resolved; used[r] is false for empty ranges
// (their sizes are left 0).
struct DeviceBlockChoice {
  std::array<DeviceBlockSizes, kNumRanges> sizes{};
  std::array<KernelKind, kNumRanges> kernels{};
  std::array<bool, kNumRanges> used{};
};

// Bytes of each VMEM buffer: one slot of the double-buffered ones, the whole
// of the single ones. Each is the largest any used range needs.
struct VmemLayout {
  std::uint64_t q_slot_bytes = 0;       // [q tokens, Hq, D] f32
  std::uint64_t out_slot_bytes = 0;     // [q tokens, Hq, D] f32
  std::uint64_t kv_slot_bytes = 0;      // [kv pages, ps, 2 Hkv, D] stored
  std::uint64_t stage_slot_bytes = 0;   // new K rows then new V rows, f32
  std::uint64_t scores_slot_bytes = 0;  // [rows, compute keys] f32
  std::uint64_t pv_slot_bytes = 0;      // [rows, D] f32
  std::uint64_t acc_bytes = 0;          // [q tokens, Hq, D] f32
  std::uint64_t state_bytes = 0;        // [q tokens, Hq] x {max, sum} f32

  std::uint64_t total_bytes() const {
    return 2 * (q_slot_bytes + out_slot_bytes + kv_slot_bytes +
                stage_slot_bytes + scores_slot_bytes + pv_slot_bytes) +
           acc_bytes + state_bytes;
  }
};

// Resolves the block sizes (see the file comment). InvalidArgument naming the
// kernels, their sizes and the bytes needed vs spec.vmem_bytes when the
// buffers cannot fit.
StatusOr<DeviceBlockChoice> ChooseDeviceBlocks(const AttentionPlan& plan,
                                               const DeviceRunOptions& options,
                                               const device::DeviceSpec& spec);

VmemLayout ComputeVmemLayout(const ValidatedBatch& batch,
                             const DeviceBlockChoice& choice);

// "decode kernel blocks (q 32 tokens, kv 16 pages, compute 2048 keys)" for
// every used range, joined with " + ".
std::string DescribeBlocks(const DeviceBlockChoice& choice);

// A Q block: query rows [row_begin, row_end) of q / out (all Hq heads). A
// decode-kernel Q block holds consecutive decode sequences' single tokens; a
// flash Q block holds consecutive query rows of one sequence.
struct DeviceQBlock {
  std::int32_t row_begin = 0;
  std::int32_t row_end = 0;
  std::uint32_t first_step = 0;
  std::uint32_t last_step = 0;
};

// One KV block of one sequence, computed against the rows of one segment of
// a Q block (a decode sequence's row, or the whole flash Q block). Positions
// are absolute positions in the sequence; all ranges are [begin, end).
struct DeviceStep {
  std::uint32_t q_block = 0;
  std::uint32_t sequence = 0;      // index into ValidatedBatch::sequences
  std::int32_t local_row = 0;      // the segment's first row in the Q block
  std::int32_t num_rows = 0;       // query tokens of the segment
  std::int32_t first_query = 0;    // the segment's first query (within q_len)
  std::int32_t block_begin = 0;    // page aligned: local page 0 of the block
  std::int32_t compute_begin = 0;  // keys some row of the segment sees
  std::int32_t compute_end = 0;
  // Keys fetched from the cache: [compute_begin, fetch_end). The cached
  // keys, and new tokens that steps <= k-2 already wrote back.
  std::int32_t fetch_end = 0;
  // New tokens staged from k / v and converted: the rest of the computed
  // keys, and the ones this step writes back.
  std::int32_t stage_begin = 0;
  std::int32_t stage_end = 0;
  std::int32_t write_begin = 0;  // new tokens this step writes back
  std::int32_t write_end = 0;
  std::int32_t written_after = 0;  // the sequence's written prefix end after
  bool first_of_segment = false;
  bool last_of_segment = false;
  // The step's row pieces (DeviceWalk::pieces): one piece of all rows, or,
  // for the steps at the ends of the run (BuildDeviceWalk), several.
  std::uint32_t first_piece = 0;
  std::uint32_t num_pieces = 1;
  // Prologue: the KV and new-KV DMAs are issued piece by piece (each
  // piece's new keys), and a piece computes once its own data has landed;
  // q_by_piece: so is the Q block's Q (the step starts a one-segment Q
  // block).
  bool fetch_by_piece = false;
  bool q_by_piece = false;
  // Epilogue: each piece is finalized and its output rows written back as
  // soon as its units are done (the step ends a one-segment Q block).
  bool out_by_piece = false;
};

// Query rows of a step's segment computed together: [row_begin, row_end)
// relative to the segment's first row, against the keys they see inside the
// step's compute range, [compute_begin, compute_end) (possibly empty).
// Consecutive rows see non-decreasing key ranges, so a step's pieces, in row
// order, first need the consecutive key ranges [new_begin, new_end): they
// partition [step.compute_begin, step.compute_end).
struct DevicePiece {
  std::int32_t row_begin = 0;
  std::int32_t row_end = 0;
  std::int32_t compute_begin = 0;
  std::int32_t compute_end = 0;
  std::int32_t new_begin = 0;
  std::int32_t new_end = 0;
};

struct DeviceWalk {
  std::vector<DeviceQBlock> q_blocks;
  std::vector<DeviceStep> steps;
  std::vector<DevicePiece> pieces;  // steps[k]'s from steps[k].first_piece
};

// The steps in execution order: ranges in batch order; per Q block, per
// segment, the KV blocks (aligned to kv_pages_per_block pages from the page
// holding the segment's first visible key) that intersect the union of the
// segment's visible keys. Every new token is written back by exactly one
// step: the first one whose block holds it (each new token is visible to its
// own query, so some step's block holds it). Later steps read it back from
// the cache (stored bytes, half the f32 staging at f16 / bf16) once the
// write-back is two steps old: the schedules guarantee that every
// write-back of steps <= k-2 has landed before step k's DMAs are issued.
// (The device checks VMEM hazards, not HBM ones: this ordering is ours.)
//
// The ends of the run are tapered: nothing hides the first fetches, nor the
// last output write-back.
//   - Order: a flash sequence's Q blocks go in row order, except the run's
//     first sequence when its second Q block has more work (visible pairs)
//     than its first (causal) and sees every key from the first unwritten
//     one: then its Q blocks go 1, 2, ..., n-1, 0. The run starts with a
//     block whose compute hides the next fetches (the first rows see few
//     keys, so their block is too short to hide the next Q block's and KV
//     block's DMAs), and the cheap block ends it, its keys already in the
//     cache. New tokens are still written as a growing prefix.
//   - Row pieces: a step whose segment is its whole Q block, with Q rows of
//     at least the bandwidth-delay product (spec.hbm_bytes_per_s x
//     dma_issue_latency_ns; smaller pieces would only queue their DMAs'
//     issue latencies on the engines), is cut into pieces of rows:
//       the run's first two steps (fetched at once into the two free
//       slots): 1/4, 1/4, 1/2, fetched piece by piece (fetch_by_piece;
//       q_by_piece when the step starts its Q block), so the first piece
//       computes once a quarter of the Q rows and the keys those rows see
//       have landed;
//       the last step of each of the run's last two Q blocks (the last one
//       may be short: the one before it ends near the run's end too):
//       6/16, 5/16, 3/16, 2/16, each finalized and written back as soon as
//       its units are done (out_by_piece): each piece's write-back lands
//       before the next one's, and only the last 1/8 of the rows is
//       written back after the last op;
//       a step that is both: 1/4, 1/2, 1/4.
//     Rows are rounded to whole query tokens (empty pieces dropped); every
//     other step is one piece. Pieces cover every row of the segment once.
DeviceWalk BuildDeviceWalk(const ValidatedBatch& batch,
                           const DeviceBlockChoice& choice,
                           const device::DeviceSpec& spec);

}  // namespace rpa::attention::internal
