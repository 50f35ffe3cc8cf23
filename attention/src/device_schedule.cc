#include "device_schedule.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <optional>

#include "rpa/memory/storage_type.h"
#include "rpa/runtime/executor.h"

namespace rpa::attention::internal {

namespace {

constexpr std::uint64_t kFloatBytes = sizeof(float);

std::byte* Bytes(const float* data) {
  // The device only reads HBM sources of HBM -> VMEM transfers.
  return reinterpret_cast<std::byte*>(const_cast<float*>(data));
}

}  // namespace

ScheduleRunner::ScheduleRunner(const ScheduleInputs& inputs)
    : in_(inputs),
      kv_release_time_(inputs.walk->steps.size()),
      q_release_time_(inputs.walk->q_blocks.size()),
      converted_time_(inputs.walk->steps.size()),
      write_backs_(inputs.walk->steps.size() + inputs.walk->q_blocks.size() +
                   1) {
  const CacheGeometry& cache = in_.batch->cache;
  token_bytes_ = static_cast<std::uint64_t>(cache.num_combined_heads) *
                 cache.head_dim * memory::StorageBytes(cache.storage);
}

std::uint64_t ScheduleRunner::QBytes(std::uint32_t q_block) const {
  const DeviceQBlock& block = in_.walk->q_blocks[q_block];
  return static_cast<std::uint64_t>(block.row_end - block.row_begin) *
         in_.batch->shape.num_q_heads * in_.batch->shape.head_dim * kFloatBytes;
}

std::uint64_t ScheduleRunner::KvFetchBytes(const DeviceStep& step) const {
  return static_cast<std::uint64_t>(step.fetch_end - step.compute_begin) *
         token_bytes_;
}

std::uint64_t ScheduleRunner::StageBytes(const DeviceStep& step) const {
  return static_cast<std::uint64_t>(step.stage_end - step.stage_begin) * 2 *
         in_.batch->shape.num_kv_heads * in_.batch->shape.head_dim *
         kFloatBytes;
}

std::uint64_t ScheduleRunner::WriteBackBytes(const DeviceStep& step) const {
  return static_cast<std::uint64_t>(step.write_end - step.write_begin) *
         token_bytes_;
}

void ScheduleRunner::Start(device::DmaDirection direction,
                           const device::VmemBuffer& vmem,
                           const std::vector<device::DmaChunk>& chunks,
                           Landing* landing, std::string_view label) {
  std::uint64_t bytes = 0;
  for (const device::DmaChunk& chunk : chunks) bytes += chunk.bytes;
  landing->Expect(bytes);
  const Status status = in_.device->StartDma({.direction = direction,
                                              .vmem = vmem,
                                              .chunks = chunks,
                                              .semaphore = landing->semaphore(),
                                              .engine = -1,
                                              .label = label});
  // The walk only makes ranges inside the registered tensors and the
  // allocated buffers: a refused DMA is a bug.
  RPA_CHECK_MSG(status.ok(), status.ToString().c_str());
}

void ScheduleRunner::AppendPageChunks(
    const DeviceStep& step, std::int32_t begin, std::int32_t end,
    std::vector<device::DmaChunk>* chunks) const {
  const SequenceSpan& span = in_.batch->sequences[step.sequence];
  const std::int32_t* pages = in_.batch->page_indices.data() + span.page_row;
  const auto ps = static_cast<std::int32_t>(in_.batch->cache.page_size_tokens);
  for (std::int32_t position = begin; position < end;) {
    const std::int32_t page_end = std::min(end, (position / ps + 1) * ps);
    const std::size_t slot = static_cast<std::size_t>(pages[position / ps]) *
                                 static_cast<std::size_t>(ps) +
                             static_cast<std::size_t>(position % ps);
    chunks->push_back(
        {.hbm = in_.tensors->cache.data + slot * token_bytes_,
         .vmem_offset =
             static_cast<std::uint64_t>(position - step.block_begin) *
             token_bytes_,
         .bytes =
             static_cast<std::uint64_t>(page_end - position) * token_bytes_});
    position = page_end;
  }
}

void ScheduleRunner::StartQFetch(std::uint32_t q_block, int slot,
                                 Landing* landing) {
  const DeviceQBlock& block = in_.walk->q_blocks[q_block];
  const std::size_t row_floats =
      static_cast<std::size_t>(in_.batch->shape.num_q_heads) *
      in_.batch->shape.head_dim;
  const std::vector<device::DmaChunk> chunks = {
      {.hbm = Bytes(in_.tensors->q.data() +
                    static_cast<std::size_t>(block.row_begin) * row_floats),
       .vmem_offset = 0,
       .bytes = QBytes(q_block)}};
  Start(device::DmaDirection::kHbmToVmem,
        in_.buffers.q[static_cast<std::size_t>(slot)], chunks, landing, "q");
}

void ScheduleRunner::StartKvFetch(const DeviceStep& step, int slot,
                                  Landing* landing) {
  if (KvFetchBytes(step) == 0) return;
  std::vector<device::DmaChunk> chunks;
  AppendPageChunks(step, step.compute_begin, step.fetch_end, &chunks);
  // One transfer pays its descriptors one after the other on one engine;
  // when they would cost more than an issue latency, the pages are split
  // over several engines (at most half of them, so that the other slot's
  // block and the small transfers still find one).
  const device::DeviceSpec& spec = in_.device->spec();
  const double descriptor_ns =
      static_cast<double>(chunks.size()) * spec.dma_descriptor_ns;
  const std::size_t max_transfers =
      std::max<std::size_t>(1, spec.num_dma_engines / 2);
  const std::size_t transfers = std::clamp<std::size_t>(
      static_cast<std::size_t>(
          std::ceil(descriptor_ns / std::max(1.0, spec.dma_issue_latency_ns))),
      1, std::min(max_transfers, chunks.size()));
  const std::size_t per_transfer = (chunks.size() + transfers - 1) / transfers;
  const device::VmemBuffer& vmem =
      in_.buffers.kv[static_cast<std::size_t>(slot)];
  for (std::size_t first = 0; first < chunks.size(); first += per_transfer) {
    const std::size_t last = std::min(chunks.size(), first + per_transfer);
    Start(device::DmaDirection::kHbmToVmem, vmem,
          std::vector<device::DmaChunk>(
              chunks.begin() + static_cast<std::ptrdiff_t>(first),
              chunks.begin() + static_cast<std::ptrdiff_t>(last)),
          landing, "kv");
  }
}

void ScheduleRunner::StartStageFetch(const DeviceStep& step, int slot,
                                     Landing* landing) {
  const std::uint64_t bytes = StageBytes(step);
  if (bytes == 0) return;
  const SequenceSpan& span = in_.batch->sequences[step.sequence];
  const std::int32_t gap = span.kv_len - span.q_len;
  const std::size_t row_floats =
      static_cast<std::size_t>(in_.batch->shape.num_kv_heads) *
      in_.batch->shape.head_dim;
  // Token position p of the sequence is row q_begin + (p - gap) of k / v.
  const std::size_t first_row =
      static_cast<std::size_t>(span.q_begin) +
      static_cast<std::size_t>(step.stage_begin - gap);
  const std::vector<device::DmaChunk> chunks = {
      {.hbm = Bytes(in_.tensors->k.data() + first_row * row_floats),
       .vmem_offset = 0,
       .bytes = bytes / 2},
      {.hbm = Bytes(in_.tensors->v.data() + first_row * row_floats),
       .vmem_offset = bytes / 2,
       .bytes = bytes / 2}};
  Start(device::DmaDirection::kHbmToVmem,
        in_.buffers.stage[static_cast<std::size_t>(slot)], chunks, landing,
        "new_kv");
}

void ScheduleRunner::StartKvWriteBack(const DeviceStep& step, int slot,
                                      Landing* landing) {
  if (WriteBackBytes(step) == 0) return;
  std::vector<device::DmaChunk> chunks;
  AppendPageChunks(step, step.write_begin, step.write_end, &chunks);
  Start(device::DmaDirection::kVmemToHbm,
        in_.buffers.kv[static_cast<std::size_t>(slot)], chunks, landing,
        "kv_writeback");
}

void ScheduleRunner::StartOutWriteBack(std::uint32_t q_block, int slot,
                                       Landing* landing) {
  const DeviceQBlock& block = in_.walk->q_blocks[q_block];
  const std::size_t row_floats =
      static_cast<std::size_t>(in_.batch->shape.num_q_heads) *
      in_.batch->shape.head_dim;
  const std::vector<device::DmaChunk> chunks = {
      {.hbm = reinterpret_cast<std::byte*>(
           in_.tensors->out.data() +
           static_cast<std::size_t>(block.row_begin) * row_floats),
       .vmem_offset = 0,
       .bytes = QBytes(q_block)}};
  Start(device::DmaDirection::kVmemToHbm,
        in_.buffers.out[static_cast<std::size_t>(slot)], chunks, landing,
        "out");
}

void ScheduleRunner::DrainAll() {
  for (int s = 0; s < 2; ++s) {
    const auto i = static_cast<std::size_t>(s);
    q_landed_[i].Drain();
    kv_landed_[i].Drain();
    stage_landed_[i].Drain();
    write_back_landed_[i].Drain();
    out_landed_[i].Drain();
  }
}

void ScheduleRunner::RunSerial() {
  const DeviceWalk& walk = *in_.walk;
  for (std::uint32_t k = 0; k < walk.steps.size(); ++k) {
    const DeviceStep& step = walk.steps[k];
    const DeviceQBlock& block = walk.q_blocks[step.q_block];
    if (k == block.first_step) {
      StartQFetch(step.q_block, 0, &q_landed_[0]);
      q_landed_[0].Wait(QBytes(step.q_block));
    }
    StartKvFetch(step, 0, &kv_landed_[0]);
    StartStageFetch(step, 0, &stage_landed_[0]);
    kv_landed_[0].Wait(KvFetchBytes(step));
    stage_landed_[0].Wait(StageBytes(step));
    const runtime::TimePoint converted = in_.compute->ConvertNewTokens(step, 0);
    const StepTimes times = in_.compute->Compute(step, 0, 0, 0, converted);
    in_.device->WaitUntil(std::max(converted, times.end));
    StartKvWriteBack(step, 0, &write_back_landed_[0]);
    if (k == block.last_step) {
      StartOutWriteBack(step.q_block, 0, &out_landed_[0]);
    }
    write_back_landed_[0].Wait(WriteBackBytes(step));
    if (k == block.last_step) out_landed_[0].Wait(QBytes(step.q_block));
  }
  DrainAll();
}

void ScheduleRunner::FetchTask() {
  const DeviceWalk& walk = *in_.walk;
  for (std::uint32_t k = 0; k < walk.steps.size(); ++k) {
    const DeviceStep& step = walk.steps[k];
    const int slot = static_cast<int>(k & 1U);
    const auto s = static_cast<std::size_t>(slot);
    if (k >= 2) {
      // Step k-2 is done with this slot: its ops have ended and the new
      // tokens it converted there have landed in the cache.
      kv_released_.Acquire(1);
      in_.device->WaitUntil(kv_release_time_[k - 2]);
      write_back_landed_[s].Wait(WriteBackBytes(walk.steps[k - 2]));
    }
    Pace(KvFetchBytes(step) + StageBytes(step));
    StartKvFetch(step, slot, &kv_landed_[s]);
    StartStageFetch(step, slot, &stage_landed_[s]);
    if (k == walk.q_blocks[step.q_block].first_step)
      q_blocks_started_.Release(1);
  }
}

void ScheduleRunner::Pace(std::uint64_t bytes) {
  // The device shares HBM bandwidth equally among the streaming transfers,
  // so two blocks issued close together stream together, land together,
  // free both slots together, and the next two then pay their issue latency
  // with nothing streaming. Issuing a fetch no earlier than the previous
  // fetch's issue + its bytes / bandwidth makes them stream one after the
  // other, each one's fixed cost overlapping the previous one's streaming
  // (what a FIFO memory system would do).
  // The slot is booked before waiting for it, so two tasks pacing at once
  // get consecutive slots.
  const runtime::TimePoint start = std::max(in_.device->Now(), paced_);
  const double hbm_bytes_per_ns = in_.device->spec().hbm_bytes_per_s * 1e-9;
  paced_ = start + std::chrono::nanoseconds(static_cast<std::int64_t>(
                       static_cast<double>(bytes) / hbm_bytes_per_ns));
  in_.device->WaitUntil(start);
}

void ScheduleRunner::QFetchTask() {
  const DeviceWalk& walk = *in_.walk;
  for (std::uint32_t b = 0; b < walk.q_blocks.size(); ++b) {
    // Q block b's Q after Q block b-1's first KV: what is needed first
    // streams first.
    if (b >= 1) q_blocks_started_.Acquire(1);
    if (b >= 2) {
      // Q block b-2's last op reading the slot has ended.
      q_released_.Acquire(1);
      in_.device->WaitUntil(q_release_time_[b - 2]);
    }
    const auto slot = static_cast<int>(b & 1U);
    Pace(QBytes(b));
    StartQFetch(b, slot, &q_landed_[static_cast<std::size_t>(slot)]);
  }
}

void ScheduleRunner::UpdateTask() {
  const DeviceWalk& walk = *in_.walk;
  for (std::uint32_t k = 0; k < walk.steps.size(); ++k) {
    const DeviceStep& step = walk.steps[k];
    const int slot = static_cast<int>(k & 1U);
    // The new tokens and the cached KV touch disjoint ranges of the slot:
    // converting while the cached KV still streams is no race.
    stage_landed_[static_cast<std::size_t>(slot)].Wait(StageBytes(step));
    const runtime::TimePoint converted =
        in_.compute->ConvertNewTokens(step, slot);
    converted_time_[k] = converted;
    if (WriteBackBytes(step) != 0) {
      RPA_CHECK(write_backs_
                    .TrySend({.kind = WriteBackKind::kKv,
                              .index = k,
                              .slot = slot,
                              .not_before = converted})
                    .ok());
    }
    converted_.Release(1);
  }
}

void ScheduleRunner::ComputeTask() {
  const DeviceWalk& walk = *in_.walk;
  runtime::TimePoint q_end{};
  for (std::uint32_t k = 0; k < walk.steps.size(); ++k) {
    const DeviceStep& step = walk.steps[k];
    const int slot = static_cast<int>(k & 1U);
    const auto s = static_cast<std::size_t>(slot);
    const std::uint32_t b = step.q_block;
    const DeviceQBlock& block = walk.q_blocks[b];
    const auto q_slot = static_cast<int>(b & 1U);
    const auto qs = static_cast<std::size_t>(q_slot);
    if (k == block.first_step) {
      q_end = {};
      q_landed_[qs].Wait(QBytes(b));
      // Output slot b&1 is free once Q block b-2's output DMA landed.
      if (b >= 2) out_landed_[qs].Wait(QBytes(b - 2));
    }
    converted_.Acquire(1);
    const runtime::TimePoint converted = converted_time_[k];
    if (!in_.skip_kv_wait_for_testing) kv_landed_[s].Wait(KvFetchBytes(step));
    const StepTimes times =
        in_.compute->Compute(step, slot, q_slot, q_slot, converted);
    kv_release_time_[k] = std::max(times.kv_end, converted);
    kv_released_.Release(1);
    q_end = std::max(q_end, times.q_end);
    if (k == block.last_step) {
      q_release_time_[b] = q_end;
      q_released_.Release(1);
      RPA_CHECK(write_backs_
                    .TrySend({.kind = WriteBackKind::kOut,
                              .index = b,
                              .slot = q_slot,
                              .not_before = times.out_end})
                    .ok());
    }
  }
  write_backs_.Close();
}

void ScheduleRunner::WriteBackTask() {
  while (std::optional<WriteBack> request = write_backs_.Receive()) {
    // The op producing the bytes must have ended before a DMA reads them.
    in_.device->WaitUntil(request->not_before);
    const auto s = static_cast<std::size_t>(request->slot);
    if (request->kind == WriteBackKind::kKv) {
      StartKvWriteBack(in_.walk->steps[request->index], request->slot,
                       &write_back_landed_[s]);
    } else {
      StartOutWriteBack(request->index, request->slot, &out_landed_[s]);
    }
  }
}

void ScheduleRunner::SpawnSerial(runtime::Executor* executor) {
  executor->Spawn([this] { RunSerial(); });
}

void ScheduleRunner::SpawnPipelined(runtime::Executor* executor) {
  // Spawn order is start order (one worker): the first Q block books the
  // first pacing slot. Each task says when it is done; the last one drains.
  const auto task = [this](void (ScheduleRunner::*body)()) {
    return [this, body] {
      (this->*body)();
      tasks_done_.Release(1);
    };
  };
  executor->Spawn(task(&ScheduleRunner::QFetchTask));
  executor->Spawn(task(&ScheduleRunner::FetchTask));
  executor->Spawn(task(&ScheduleRunner::UpdateTask));
  executor->Spawn(task(&ScheduleRunner::ComputeTask));
  executor->Spawn(task(&ScheduleRunner::WriteBackTask));
  executor->Spawn([this] {
    tasks_done_.Acquire(kPipelineTasks);
    // Everything issued has landed before the run ends (the device must
    // have no DMA in flight when it is destroyed, and the makespan ends at
    // the last landing).
    DrainAll();
  });
}

}  // namespace rpa::attention::internal
