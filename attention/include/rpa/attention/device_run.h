#pragma once
// Runs a plan on a simulated TPU TensorCore (device/): the RPA schedule as
// cooperative tasks on a virtual-clock executor, with real numerics (the
// same building blocks as the host kernels) and simulated time.
//
// The schedule (public RPA design; attention/README.md has the details):
//   - work is a sequence of blocks, walked in batch order: for every
//     processed sequence, its query blocks (q_tokens_per_block tokens, all Hq
//     heads; with the decode kernel a Q block holds up to q_tokens_per_block
//     consecutive decode sequences' single tokens) and for each, its KV
//     blocks (kv_pages_per_block pages, all kv heads). KV is fetched page by
//     page with one descriptor per page, only the valid tokens of each page
//     (cached tokens, and new tokens an earlier step already wrote back; the
//     other new tokens come from the k / v inputs);
//   - Q, KV and output buffers are double-buffered in VMEM; with the
//     pipelined schedule the next block (across sequence boundaries) is
//     fetched while the current one is computed, and output blocks are
//     written back while the next ones are computed. The serial schedule
//     fetches, waits, computes and writes back one block at a time;
//   - fused KV update: the step's new K/V rows are fetched from the inputs,
//     converted to the cache type by the vector unit into the KV block's
//     slots, and written back to their cache pages (one descriptor per
//     page run) before the VMEM slot is reused, for every new token, also
//     for tokens the window hides from most queries: each new token is
//     visible to its own query, so the first step that computes it (in its
//     own query's Q block, if not earlier) writes it back;
//   - inside a block, compute sub-tiles of compute_kv_tokens keys: QK^T on
//     the matrix unit, mask / scale / cap / online softmax on the vector
//     unit, PV on the matrix unit, issued so the two units overlap
//     (the QK^T of sub-tile i+1 before the PV of sub-tile i);
//   - blocks fully hidden by the causal mask or the window are skipped;
//   - the ends of the run are tapered, since nothing hides the first
//     fetches or the last output write-back: when the run starts with a
//     causal flash sequence whose second Q block has more work than its
//     first, its Q blocks go 1, 2, ..., n-1, 0 (the first compute then
//     hides the next fetches, and the cheap first-rows block ends the run);
//     and, where a Q block's queries take at least HBM bandwidth x DMA
//     issue latency bytes, the run's first two steps fetch and compute
//     their query rows in pieces (1/4, 1/4, 1/2: the first piece computes
//     once its rows and the keys they see have landed), and the last step
//     of each of the last two Q blocks finalizes and writes back its output
//     in pieces (6/16, 5/16, 3/16, 2/16: only the last piece's write-back
//     follows the last op). Every query row is computed exactly once.
// Outputs equal the host Run's within SPEC section 4 (the same f32
// arithmetic in a different order) and the cache equals it bit for bit. One
// difference: Run writes every new token before any query reads, so a
// sequence whose *cached* slot another sequence overwrites in the same step
// reads the new value; on the device it reads whichever value the cache
// holds when its block is fetched (KvCache never shares a slot a sequence
// writes, so this needs a hand-made page table).
//
// Thread-safety: RunOnDevice creates its own executor and device; calls on
// different tensors may run concurrently.
//
// Example:
//   RPA_ASSIGN_OR_RETURN(AttentionPlan plan,
//                        AttentionPlan::Create(metadata, cache, params));
//   RPA_ASSIGN_OR_RETURN(device::DeviceSpec spec,
//                        device::DevicePreset("tpu7x"));
//   RPA_ASSIGN_OR_RETURN(DeviceRunReport report,
//                        RunOnDevice(plan, tensors, spec));
//   // tensors.out and the cache are written; report.simulated_us, .mbu ...
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rpa/attention/batch.h"
#include "rpa/attention/plan.h"
#include "rpa/device/device.h"
#include "rpa/device/device_spec.h"
#include "rpa/runtime/status.h"

namespace rpa::attention {

enum class DeviceSchedule : std::uint8_t { kSerial, kPipelined };
// "serial", "pipelined".
std::string_view DeviceScheduleName(DeviceSchedule schedule);

// Block sizes of one kernel on the device; 0 = the selector's choice. Until
// the scheduler's selector fills them in, a 0 field takes this default:
//   decode kernel   q_tokens_per_block: the decode sequences whose f32
//                   queries fit 512 KiB (>= 1, <= the range's count);
//                   kv_pages_per_block: the longest sequence's pages in the
//                   fewest equal blocks of >= 4 x HBM bandwidth x DMA issue
//                   latency bytes each (so the next block's fixed DMA cost
//                   hides behind this block's streaming: DMA-bound);
//                   compute_kv_tokens: the block's tokens, <= 2048.
//   prefill, mixed  q_tokens_per_block: 1024 / (Hq / Hkv) (1024 matrix rows
//                   per kv head), <= the longest q_len;
//                   kv_pages_per_block: 512 tokens' worth (>= 1 page),
//                   <= the longest sequence's pages;
//                   compute_kv_tokens: the block's tokens, <= 512.
// Then, while the buffers do not fit VMEM, the range needing the most VMEM
// halves one of its defaulted fields (kv pages, then query tokens, then
// compute keys); fields the caller set are never changed.
struct DeviceBlockSizes {
  std::uint32_t q_tokens_per_block = 0;  // query tokens per Q block
  std::uint32_t kv_pages_per_block = 0;  // pages per KV block
  std::uint32_t compute_kv_tokens = 0;   // keys per compute sub-tile
};

// The decode default's query tokens per Q block before the cap at the
// range's sequences: as many as 512 KiB of f32 queries (num_q_heads x
// head_dim each) hold, at least 1. The scheduler's fallback rule uses it too.
std::uint32_t DefaultDecodeQTokensPerBlock(std::uint32_t num_q_heads,
                                           std::uint32_t head_dim);

// Block sizes counted in tokens (as tuning tables and the selector count
// them) as device blocks: the KV block becomes whole pages, at least one.
DeviceBlockSizes DeviceBlocksFromTokens(std::uint32_t q_tokens,
                                        std::uint32_t kv_tokens,
                                        std::uint32_t compute_kv_tokens,
                                        std::uint32_t page_size_tokens);

// What one used range of a batch asks of VMEM (DeviceVmemBytes).
struct DeviceRangeDemand {
  KernelKind kernel = KernelKind::kDecode;
  std::int32_t max_q_len = 1;  // the range's longest q_len
  DeviceBlockSizes blocks;     // every field > 0
};

// The bytes of VMEM RunOnDevice allocates for a batch of `shape` over a cache
// of `storage` with `page_size_tokens`, whose used ranges have these blocks:
// double-buffered Q, output, KV, new-K/V staging, scores and PV tiles plus
// the accumulators, each buffer as large as the most demanding range needs
// (the ranges run one after another and share the buffers). This is the
// model RunOnDevice checks against spec.vmem_bytes, so a caller choosing
// blocks (the scheduler's selector, the tuner) can keep within VMEM.
std::uint64_t DeviceVmemBytes(const BatchShape& shape,
                              memory::StorageType storage,
                              std::uint32_t page_size_tokens,
                              std::span<const DeviceRangeDemand> ranges);

struct DeviceRunOptions {
  DeviceSchedule schedule = DeviceSchedule::kPipelined;
  DeviceBlockSizes decode_blocks{};
  DeviceBlockSizes prefill_blocks{};
  DeviceBlockSizes mixed_blocks{};
  bool record_trace = false;
  // Testing only: the pipelined schedule skips its wait for the KV block's
  // DMA (a deliberately broken schedule: wrong result and a race report).
  bool skip_kv_wait_for_testing = false;
};

struct DeviceRunReport {
  double simulated_us = 0;  // makespan
  double bytes_moved = 0;   // SPEC section 7 bytes (BatchCost)
  double flops = 0;         // SPEC section 7 FLOPs (visible pairs)
  double mbu = 0;           // bytes_moved / time / HBM bandwidth
  double mfu = 0;           // flops / time / matrix peak
  double hbm_busy_us = 0;
  std::vector<double> dma_engine_busy_us;
  double matrix_busy_us = 0;
  double vector_busy_us = 0;
  // Busy time of the bottleneck unit (the largest of hbm, matrix, vector) /
  // makespan: 1.0 is perfect overlap.
  double overlap_efficiency = 0;
  std::uint64_t dma_transfers = 0;
  std::uint64_t vmem_high_water_bytes = 0;
  // Per range (decode, prefill, mixed); all 0 for an empty range.
  DeviceBlockSizes blocks_used[3];
  std::vector<device::RaceReport> races;
  std::uint64_t num_races = 0;
  std::string trace_json;  // when record_trace
};

// Runs `plan` on a device built from `spec`, writing tensors.out and the new
// tokens into tensors.cache exactly like Run(). Errors: the same tensor
// checks as Run (InvalidArgument, nothing written); InvalidArgument for an
// invalid spec (ValidateDeviceSpec) and for block sizes that do not fit
// VMEM (naming the kernel, the sizes and the bytes needed vs available) or
// are zero after selection. Nothing is written on any error.
StatusOr<DeviceRunReport> RunOnDevice(const AttentionPlan& plan,
                                      const BatchTensors& tensors,
                                      const device::DeviceSpec& spec,
                                      const DeviceRunOptions& options = {});

}  // namespace rpa::attention
