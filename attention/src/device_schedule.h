#pragma once

// The dynamic half of RunOnDevice: the walk's steps as cooperative tasks on
// the device's virtual-clock executor. Private to attention/. The DMAs and
// the serial schedule are in device_schedule.cc, the pipelined tasks in
// device_schedule_pipelined.cc.
//
// DMAs of a step (HBM <-> VMEM), one descriptor per page run:
//   Q         the Q block's rows of q (one chunk), when a Q block starts
//   KV        the cached keys [compute_begin, fetch_end), one chunk per page
//             (a page is [ps, 2 Hkv, D] contiguous, so a token range inside
//             it is one chunk); split over up to half the DMA engines when
//             the descriptors would cost more than one issue latency
//   new KV    the new rows [stage_begin, stage_end) of k and of v (two
//             chunks), f32, into the stage slot (K rows, then V rows)
//   write-back the converted new tokens [write_begin, write_end) from the KV
//             slot to their cache pages, one chunk per page run
//   out       the Q block's rows of out (one chunk), after its finalize
// A fetch_by_piece step (device_blocks.h) issues these per row piece: the
// piece's Q rows (q_by_piece) and its share of the cached and new keys,
// each piece with its own DMA semaphores. An out_by_piece step writes each
// piece's output rows back after the piece's finalize.
//
// Pipelined (double buffers; slot = step or Q block index & 1):
//   fetch task    for step k: waits until step k-2 released KV slot k&1 (its
//                 last op on the slot has ended and its write-back landed),
//                 then issues the KV and new-KV DMAs of step k (and the Q
//                 of a q_by_piece step): one block ahead, across sequence
//                 and Q block boundaries. Paced (see Pace).
//   Q fetch task  for Q block b: waits until Q block b-2 released Q slot
//                 b&1, then issues its Q DMA: a whole Q block ahead, so a
//                 Q block of one short step does not expose the next one's
//                 Q DMA. Skips q_by_piece blocks (0 and 1 only).
//   update task   for step k (per piece when fetch_by_piece): as soon as its
//                 staged new tokens land, converts them into their slots of
//                 KV slot k&1 (a vector op) and hands their write-back to the
//                 write-back task, so the write-back lands while the block's
//                 cached KV is still streaming and never delays the slot's
//                 release.
//   compute task  for step k: waits for the conversion (and, unless
//                 skip_kv_wait_for_testing, for the cached KV), per piece
//                 for a fetch_by_piece step, issues the step's ops
//                 (device_compute.h), and releases the slots with the
//                 reserved end times. Before the first finalize into output
//                 slot b&1 (a Q block's first last-of-segment step), it waits
//                 for Q block b-2's output DMA to have landed. While the next
//                 step's conversion is still to come and moves at least
//                 bandwidth x latency / engines bytes, it reserves at most
//                 one unit ahead of the matrix unit (WaitUntil the previous
//                 unit's QK^T start): the vector unit runs ops in reservation
//                 order, so a conversion reserved behind the whole step would
//                 delay the next step's first QK^T.
//   write-back task  in request order: waits until the producing op's end,
//                 starts the DMA (KV write-back, output block or piece).
// Compute ops are reservations: the compute task suspends only on DMA
// semaphores and its one-unit-ahead wait; the fetch task suspends
// (WaitUntil) before reusing a buffer.
//
// Serial: one task; per step: fetch (Q if needed, KV, new KV: whole, also
// for the tapered steps), wait, convert and compute (by piece, the same
// arithmetic as the pipelined schedule), wait for the ops, write back (KV
// and, at the end of a Q block, the whole output), wait. Slot 0 of every
// buffer.

#include <array>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "device_blocks.h"
#include "device_compute.h"
#include "plan_data.h"

#include "rpa/attention/batch.h"
#include "rpa/device/device.h"
#include "rpa/runtime/channel.h"
#include "rpa/runtime/check.h"
#include "rpa/runtime/clock.h"
#include "rpa/runtime/semaphore.h"

namespace rpa::runtime {
class Executor;
}

namespace rpa::attention::internal {

// A DMA semaphore that knows how many bytes were issued to it and waited
// for, so that the end of the run can wait for every transfer to land.
class Landing {
 public:
  void Expect(std::uint64_t bytes) { issued_bytes_ += bytes; }
  void Wait(std::uint64_t bytes) {
    if (bytes == 0) return;
    semaphore_.Wait(bytes);
    waited_bytes_ += bytes;
  }
  void Drain() {
    RPA_CHECK(waited_bytes_ <= issued_bytes_);
    Wait(issued_bytes_ - waited_bytes_);
  }
  // True when Wait(bytes) would not suspend.
  bool Landed(std::uint64_t bytes) const {
    return semaphore_.available_bytes() >= bytes;
  }
  device::DmaSemaphore* semaphore() { return &semaphore_; }

 private:
  device::DmaSemaphore semaphore_;
  std::uint64_t issued_bytes_ = 0;
  std::uint64_t waited_bytes_ = 0;
};

struct ScheduleInputs {
  const ValidatedBatch* batch = nullptr;
  const BatchTensors* tensors = nullptr;
  const DeviceWalk* walk = nullptr;
  device::Device* device = nullptr;
  DeviceBuffers buffers;
  StepCompute* compute = nullptr;
  bool skip_kv_wait_for_testing = false;
};

class ScheduleRunner {
 public:
  explicit ScheduleRunner(const ScheduleInputs& inputs);
  ScheduleRunner(const ScheduleRunner&) = delete;
  ScheduleRunner& operator=(const ScheduleRunner&) = delete;

  // Spawns the schedule's tasks on `executor` (the device's); the caller
  // then runs the executor. Every DMA has landed when the tasks are done.
  void SpawnSerial(runtime::Executor* executor);
  void SpawnPipelined(runtime::Executor* executor);

 private:
  enum class WriteBackKind : std::uint8_t { kKv, kOut, kOutPiece };
  struct WriteBack {
    WriteBackKind kind = WriteBackKind::kKv;
    // Step (kKv), Q block (kOut), or the step whose piece it is (kOutPiece).
    std::uint32_t index = 0;
    std::uint32_t piece = 0;  // kOutPiece: index into the step's pieces
    int slot = 0;
    runtime::TimePoint not_before{};
  };
  // The landings of one piece of a fetch_by_piece step.
  struct PieceLanding {
    Landing q;
    Landing kv;
    Landing stage;
  };
  // Positions [begin, end) of a step's sequence.
  struct KeySpan {
    std::int32_t begin = 0;
    std::int32_t end = 0;
  };
  class ComputeHooks;
  class SerialHooks;

  // Bytes each DMA of a step / Q block moves.
  std::uint64_t QBytes(std::uint32_t q_block) const;
  std::uint64_t RowBytes(std::int32_t rows) const;  // rows of q / out
  std::uint64_t KvFetchBytes(const DeviceStep& step) const;
  std::uint64_t StageBytes(const DeviceStep& step) const;
  std::uint64_t WriteBackBytes(const DeviceStep& step) const;
  std::uint64_t CacheBytes(KeySpan keys) const;
  std::uint64_t StagedBytes(KeySpan keys) const;
  // A piece's share of the step's cached and staged keys (DevicePiece's
  // new keys split at fetch_end / stage_begin).
  static KeySpan PieceCached(const DeviceStep& step, const DevicePiece& piece);
  static KeySpan PieceStaged(const DeviceStep& step, const DevicePiece& piece);
  const DevicePiece& Piece(const DeviceStep& step, std::uint32_t p) const {
    return in_.walk->pieces[step.first_piece + p];
  }
  // Fetch pieces of step k: its pieces if fetch_by_piece, else one.
  std::uint32_t FetchPieces(const DeviceStep& step) const {
    return step.fetch_by_piece ? step.num_pieces : 1;
  }

  // Start the DMAs (no-ops for zero bytes) and count them on `landing`.
  // Q / out: rows [row_begin, row_end) of the Q block. KV / new KV: the
  // step's positions `keys`.
  void StartQFetch(std::uint32_t q_block, std::int32_t row_begin,
                   std::int32_t row_end, int slot, Landing* landing);
  void StartKvFetch(const DeviceStep& step, KeySpan keys, int slot,
                    Landing* landing);
  void StartStageFetch(const DeviceStep& step, KeySpan keys, int slot,
                       Landing* landing);
  void StartKvWriteBack(const DeviceStep& step, int slot, Landing* landing);
  void StartOutWriteBack(std::uint32_t q_block, std::int32_t row_begin,
                         std::int32_t row_end, int slot, Landing* landing);
  // The fetches of step k into `slot`: whole, or piece by piece.
  void FetchStep(std::uint32_t k, int slot);
  // Appends one chunk per page run of positions [begin, end) of the step's
  // sequence: cache bytes <-> KV slot bytes.
  void AppendPageChunks(const DeviceStep& step, std::int32_t begin,
                        std::int32_t end,
                        std::vector<device::DmaChunk>* chunks) const;
  void Start(device::DmaDirection direction, const device::VmemBuffer& vmem,
             const std::vector<device::DmaChunk>& chunks, Landing* landing,
             std::string_view label);

  // Books `bytes` worth of full HBM bandwidth right after the previous
  // booking and waits for the booked start (see the .cc).
  void Pace(std::uint64_t bytes);

  void RunSerial();
  void FetchTask();
  void QFetchTask();
  void UpdateTask();
  void ComputeTask();
  void WriteBackTask();
  void DrainAll();

  ScheduleInputs in_;
  std::uint64_t token_bytes_ = 0;
  std::array<Landing, 2> q_landed_;
  std::array<Landing, 2> kv_landed_;
  std::array<Landing, 2> stage_landed_;
  std::array<Landing, 2> write_back_landed_;
  std::array<Landing, 2> out_landed_;
  // Steps / Q blocks whose slots the compute task has released, with the
  // reserved end of their last op on the slot.
  runtime::Semaphore kv_released_{0};
  runtime::Semaphore q_released_{0};
  // Q blocks whose first step's KV fetch the fetch task has issued.
  runtime::Semaphore q_blocks_started_{0};
  std::vector<runtime::TimePoint> kv_release_time_;
  std::vector<runtime::TimePoint> q_release_time_;
  runtime::TimePoint paced_{};  // earliest issue of the next paced fetch
  static constexpr std::uint64_t kPipelineTasks = 5;
  runtime::Semaphore tasks_done_{0};
  // Fetch pieces whose new tokens the update task has converted, and when;
  // step k's first fetch piece is fetch_piece_begin_[k].
  runtime::Semaphore converted_{0};
  std::vector<std::uint32_t> fetch_piece_begin_;
  std::vector<runtime::TimePoint> converted_time_;
  // Per fetch piece of fetch_by_piece steps (others use the slot landings).
  std::unique_ptr<PieceLanding[]> piece_landed_;
  std::size_t num_fetch_pieces_ = 0;
  // Steps [0, steps_converted_) are converted (the update task's progress).
  std::size_t steps_converted_ = 0;
  // A transfer this small moves less than its share of the bandwidth-delay
  // product (HBM bandwidth x issue latency / engines): hurrying its
  // conversion is not worth throttling the compute task.
  std::uint64_t small_dma_bytes_ = 0;
  // Room for every request, so that a sender never suspends between
  // reserving the op and queueing its write-back: the requests then come in
  // the vector unit's order, and their not_before times never decrease.
  runtime::Channel<WriteBack> write_backs_;
};

}  // namespace rpa::attention::internal
