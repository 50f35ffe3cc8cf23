#pragma once

// The dynamic half of RunOnDevice: the walk's steps as cooperative tasks on
// the device's virtual-clock executor. Private to attention/.
//
// DMAs of a step (HBM <-> VMEM), one descriptor per page run:
//   Q         the Q block's rows of q (one chunk), when a Q block starts
//   KV        the cached keys [compute_begin, fetch_end), one chunk per page
//             (a page is [ps, 2 Hkv, D] contiguous, so a token range inside
//             it is one chunk); split over up to half the DMA engines when
//             the descriptors would cost more than one issue latency
//   new KV    the new rows [stage_begin, stage_end) of k and of v (two
//             chunks), f32, into the stage slot
//   write-back the converted new tokens [write_begin, write_end) from the KV
//             slot to their cache pages, one chunk per page run
//   out       the Q block's rows of out (one chunk), after its finalize
//
// Pipelined (double buffers; slot = step or Q block index & 1):
//   fetch task    for step k: waits until step k-2 released KV slot k&1 (its
//                 last op on the slot has ended and its write-back landed),
//                 then issues the KV and new-KV DMAs of step k: one block
//                 ahead, across sequence and Q block boundaries. Paced (see
//                 FetchTask).
//   Q fetch task  for Q block b: waits until Q block b-2 released Q slot
//                 b&1, then issues its Q DMA: a whole Q block ahead, so a
//                 Q block of one short step does not expose the next one's
//                 Q DMA.
//   update task   for step k: as soon as its staged new tokens land,
//                 converts them into their slots of KV slot k&1 (a vector
//                 op) and hands their write-back to the write-back task, so
//                 the write-back lands while the block's cached KV is still
//                 streaming and never delays the slot's release.
//   compute task  for step k: waits for the conversion (and, unless
//                 skip_kv_wait_for_testing, for the cached KV), issues the
//                 step's ops (device_compute.h), and releases the slots with
//                 the reserved end times. Before a Q block's first finalize
//                 writes output slot b&1, it waits for Q block b-2's output
//                 DMA to have landed.
//   write-back task  in request order: waits until the producing op's end,
//                 starts the DMA (KV write-back or output block).
// Compute ops are reservations: the compute task never suspends on them,
// only on DMA semaphores; the fetch task suspends (WaitUntil) before reusing
// a buffer.
//
// Serial: one task; per step: fetch (Q if needed, KV, new KV), wait, convert
// and compute, wait for the ops, write back (KV and, at the end of a Q block,
// the output), wait. Slot 0 of every buffer.

#include <array>
#include <cstdint>
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
  enum class WriteBackKind : std::uint8_t { kKv, kOut };
  struct WriteBack {
    WriteBackKind kind = WriteBackKind::kKv;
    std::uint32_t index = 0;  // step (kKv) or Q block (kOut)
    int slot = 0;
    runtime::TimePoint not_before{};
  };

  // Bytes each DMA of a step / Q block moves.
  std::uint64_t QBytes(std::uint32_t q_block) const;
  std::uint64_t KvFetchBytes(const DeviceStep& step) const;
  std::uint64_t StageBytes(const DeviceStep& step) const;
  std::uint64_t WriteBackBytes(const DeviceStep& step) const;

  // Start the DMAs (no-ops for zero bytes) and count them on `landing`.
  void StartQFetch(std::uint32_t q_block, int slot, Landing* landing);
  void StartKvFetch(const DeviceStep& step, int slot, Landing* landing);
  void StartStageFetch(const DeviceStep& step, int slot, Landing* landing);
  void StartKvWriteBack(const DeviceStep& step, int slot, Landing* landing);
  void StartOutWriteBack(std::uint32_t q_block, int slot, Landing* landing);
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
  // Steps whose new tokens the update task has converted, and when.
  runtime::Semaphore converted_{0};
  std::vector<runtime::TimePoint> converted_time_;
  // Room for every request, so that a sender never suspends between
  // reserving the op and queueing its write-back: the requests then come in
  // the vector unit's order, and their not_before times never decrease.
  runtime::Channel<WriteBack> write_backs_;
};

}  // namespace rpa::attention::internal
