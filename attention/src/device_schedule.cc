#include "device_schedule.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "rpa/memory/storage_type.h"
#include "rpa/runtime/executor.h"
#include "rpa/runtime/int_math.h"

namespace rpa::attention::internal {

namespace {

std::byte* Bytes(const float* data) {
  // The device only reads HBM sources of HBM -> VMEM transfers.
  return reinterpret_cast<std::byte*>(const_cast<float*>(data));
}

}  // namespace

ScheduleRunner::ScheduleRunner(const ScheduleInputs& inputs)
    : in_(inputs),
      kv_release_time_(inputs.walk->steps.size()),
      q_release_time_(inputs.walk->q_blocks.size()),
      write_backs_(inputs.walk->steps.size() + inputs.walk->q_blocks.size() +
                   inputs.walk->pieces.size() + 1) {
  const CacheGeometry& cache = in_.batch->cache;
  token_bytes_ = static_cast<std::uint64_t>(cache.num_combined_heads) *
                 cache.head_dim * memory::StorageBytes(cache.storage);
  fetch_piece_begin_.reserve(in_.walk->steps.size());
  for (const DeviceStep& step : in_.walk->steps) {
    fetch_piece_begin_.push_back(static_cast<std::uint32_t>(num_fetch_pieces_));
    num_fetch_pieces_ += FetchPieces(step);
  }
  converted_time_.resize(num_fetch_pieces_);
  const device::DeviceSpec& spec = in_.device->spec();
  small_dma_bytes_ = static_cast<std::uint64_t>(
      spec.hbm_bytes_per_s * spec.dma_issue_latency_ns * 1e-9 /
      static_cast<double>(spec.num_dma_engines));
  piece_landed_ = std::make_unique<PieceLanding[]>(num_fetch_pieces_);
}

std::uint64_t ScheduleRunner::RowBytes(std::int32_t rows) const {
  return static_cast<std::uint64_t>(rows) * in_.batch->shape.num_q_heads *
         in_.batch->shape.head_dim * kFloatBytes;
}

std::uint64_t ScheduleRunner::QBytes(std::uint32_t q_block) const {
  const DeviceQBlock& block = in_.walk->q_blocks[q_block];
  return RowBytes(block.row_end - block.row_begin);
}

std::uint64_t ScheduleRunner::CacheBytes(KeySpan keys) const {
  return static_cast<std::uint64_t>(std::max(0, keys.end - keys.begin)) *
         token_bytes_;
}

std::uint64_t ScheduleRunner::StagedBytes(KeySpan keys) const {
  return static_cast<std::uint64_t>(std::max(0, keys.end - keys.begin)) * 2 *
         in_.batch->shape.num_kv_heads * in_.batch->shape.head_dim *
         kFloatBytes;
}

std::uint64_t ScheduleRunner::KvFetchBytes(const DeviceStep& step) const {
  return CacheBytes({step.compute_begin, step.fetch_end});
}

std::uint64_t ScheduleRunner::StageBytes(const DeviceStep& step) const {
  return StagedBytes({step.stage_begin, step.stage_end});
}

std::uint64_t ScheduleRunner::WriteBackBytes(const DeviceStep& step) const {
  return static_cast<std::uint64_t>(step.write_end - step.write_begin) *
         token_bytes_;
}

ScheduleRunner::KeySpan ScheduleRunner::PieceCached(const DeviceStep& step,
                                                    const DevicePiece& piece) {
  const std::int32_t end = std::min(piece.new_end, step.fetch_end);
  return {piece.new_begin, std::max(piece.new_begin, end)};
}

ScheduleRunner::KeySpan ScheduleRunner::PieceStaged(const DeviceStep& step,
                                                    const DevicePiece& piece) {
  const std::int32_t begin = std::max(piece.new_begin, step.stage_begin);
  return {begin, std::max(begin, std::min(piece.new_end, step.stage_end))};
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

void ScheduleRunner::StartQFetch(std::uint32_t q_block, std::int32_t row_begin,
                                 std::int32_t row_end, int slot,
                                 Landing* landing) {
  if (row_end <= row_begin) return;
  const DeviceQBlock& block = in_.walk->q_blocks[q_block];
  const std::size_t row_floats =
      static_cast<std::size_t>(in_.batch->shape.num_q_heads) *
      in_.batch->shape.head_dim;
  const std::vector<device::DmaChunk> chunks = {
      {.hbm = Bytes(in_.tensors->q.data() +
                    static_cast<std::size_t>(block.row_begin + row_begin) *
                        row_floats),
       .vmem_offset = RowBytes(row_begin),
       .bytes = RowBytes(row_end - row_begin)}};
  Start(device::DmaDirection::kHbmToVmem,
        in_.buffers.q[static_cast<std::size_t>(slot)], chunks, landing, "q");
}

void ScheduleRunner::StartKvFetch(const DeviceStep& step, KeySpan keys,
                                  int slot, Landing* landing) {
  if (CacheBytes(keys) == 0) return;
  std::vector<device::DmaChunk> chunks;
  AppendPageChunks(step, keys.begin, keys.end, &chunks);
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
  const std::size_t per_transfer =
      DivideRoundUp<std::size_t>(chunks.size(), transfers);
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

void ScheduleRunner::StartStageFetch(const DeviceStep& step, KeySpan keys,
                                     int slot, Landing* landing) {
  const std::uint64_t bytes = StagedBytes(keys);
  if (bytes == 0) return;
  const SequenceSpan& span = in_.batch->sequences[step.sequence];
  const std::int32_t gap = span.kv_len - span.q_len;
  const std::size_t row_floats =
      static_cast<std::size_t>(in_.batch->shape.num_kv_heads) *
      in_.batch->shape.head_dim;
  // Token position p of the sequence is row q_begin + (p - gap) of k / v.
  // The stage slot holds the K rows of the whole stage range, then its V
  // rows; `keys` is a part of that range.
  const std::size_t first_row = static_cast<std::size_t>(span.q_begin) +
                                static_cast<std::size_t>(keys.begin - gap);
  const std::uint64_t k_offset =
      StagedBytes({step.stage_begin, keys.begin}) / 2;
  const std::uint64_t v_offset = StageBytes(step) / 2 + k_offset;
  const std::vector<device::DmaChunk> chunks = {
      {.hbm = Bytes(in_.tensors->k.data() + first_row * row_floats),
       .vmem_offset = k_offset,
       .bytes = bytes / 2},
      {.hbm = Bytes(in_.tensors->v.data() + first_row * row_floats),
       .vmem_offset = v_offset,
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

void ScheduleRunner::StartOutWriteBack(std::uint32_t q_block,
                                       std::int32_t row_begin,
                                       std::int32_t row_end, int slot,
                                       Landing* landing) {
  if (row_end <= row_begin) return;
  const DeviceQBlock& block = in_.walk->q_blocks[q_block];
  const std::size_t row_floats =
      static_cast<std::size_t>(in_.batch->shape.num_q_heads) *
      in_.batch->shape.head_dim;
  const std::vector<device::DmaChunk> chunks = {
      {.hbm = reinterpret_cast<std::byte*>(
           in_.tensors->out.data() +
           static_cast<std::size_t>(block.row_begin + row_begin) * row_floats),
       .vmem_offset = RowBytes(row_begin),
       .bytes = RowBytes(row_end - row_begin)}};
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
  for (std::size_t f = 0; f < num_fetch_pieces_; ++f) {
    piece_landed_[f].q.Drain();
    piece_landed_[f].kv.Drain();
    piece_landed_[f].stage.Drain();
  }
}

// The serial schedule has every byte of a step before it computes.
class ScheduleRunner::SerialHooks final : public PieceHooks {
 public:
  explicit SerialHooks(runtime::TimePoint converted) : converted_(converted) {}
  bool Ready(std::uint32_t /*piece*/) override { return true; }
  runtime::TimePoint Wait(std::uint32_t /*piece*/) override {
    return converted_;
  }
  void Finalized(std::uint32_t /*piece*/, runtime::TimePoint /*end*/) override {
  }
  void BeforeUnit(runtime::TimePoint /*previous*/) override {}

 private:
  runtime::TimePoint converted_;
};

void ScheduleRunner::RunSerial() {
  const DeviceWalk& walk = *in_.walk;
  for (std::uint32_t k = 0; k < walk.steps.size(); ++k) {
    const DeviceStep& step = walk.steps[k];
    const DeviceQBlock& block = walk.q_blocks[step.q_block];
    const std::int32_t block_rows = block.row_end - block.row_begin;
    if (k == block.first_step) {
      StartQFetch(step.q_block, 0, block_rows, 0, &q_landed_[0]);
      q_landed_[0].Wait(QBytes(step.q_block));
    }
    StartKvFetch(step, {step.compute_begin, step.fetch_end}, 0, &kv_landed_[0]);
    StartStageFetch(step, {step.stage_begin, step.stage_end}, 0,
                    &stage_landed_[0]);
    kv_landed_[0].Wait(KvFetchBytes(step));
    stage_landed_[0].Wait(StageBytes(step));
    const runtime::TimePoint converted = in_.compute->ConvertNewTokens(step, 0);
    SerialHooks hooks(converted);
    const StepTimes times = in_.compute->Compute(step, 0, 0, 0, &hooks);
    in_.device->WaitUntil(std::max(converted, times.end));
    StartKvWriteBack(step, 0, &write_back_landed_[0]);
    if (k == block.last_step) {
      StartOutWriteBack(step.q_block, 0, block_rows, 0, &out_landed_[0]);
    }
    write_back_landed_[0].Wait(WriteBackBytes(step));
    if (k == block.last_step) out_landed_[0].Wait(QBytes(step.q_block));
  }
  DrainAll();
}

void ScheduleRunner::SpawnSerial(runtime::Executor* executor) {
  executor->Spawn([this] { RunSerial(); });
}

}  // namespace rpa::attention::internal
