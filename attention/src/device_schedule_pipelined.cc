// The pipelined schedule (device_schedule.h): the fetch, Q fetch, update,
// compute and write-back tasks and their synchronisation. The runner's
// DMAs, byte counts and the serial schedule are in device_schedule.cc.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "device_blocks.h"
#include "device_compute.h"
#include "device_schedule.h"

#include "rpa/runtime/check.h"
#include "rpa/runtime/clock.h"
#include "rpa/runtime/executor.h"

namespace rpa::attention::internal {

void ScheduleRunner::FetchStep(std::uint32_t k, int slot) {
  const DeviceStep& step = in_.walk->steps[k];
  const auto s = static_cast<std::size_t>(slot);
  if (!step.fetch_by_piece) {
    Pace(KvFetchBytes(step) + StageBytes(step));
    StartKvFetch(step, {step.compute_begin, step.fetch_end}, slot,
                 &kv_landed_[s]);
    StartStageFetch(step, {step.stage_begin, step.stage_end}, slot,
                    &stage_landed_[s]);
    return;
  }
  // Piece by piece, in the order the pieces compute: each piece's Q rows,
  // then the keys it is the first to need.
  const auto q_slot = static_cast<int>(step.q_block & 1U);
  for (std::uint32_t p = 0; p < step.num_pieces; ++p) {
    const DevicePiece& piece = Piece(step, p);
    PieceLanding& landing = piece_landed_[fetch_piece_begin_[k] + p];
    const KeySpan cached = PieceCached(step, piece);
    const KeySpan staged = PieceStaged(step, piece);
    const std::uint64_t q_bytes =
        step.q_by_piece ? RowBytes(piece.row_end - piece.row_begin) : 0;
    const std::uint64_t bytes =
        q_bytes + CacheBytes(cached) + StagedBytes(staged);
    if (bytes == 0) continue;  // its keys came with earlier pieces
    Pace(bytes);
    if (step.q_by_piece) {
      StartQFetch(step.q_block, step.local_row + piece.row_begin,
                  step.local_row + piece.row_end, q_slot, &landing.q);
    }
    StartKvFetch(step, cached, slot, &landing.kv);
    StartStageFetch(step, staged, slot, &landing.stage);
  }
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
    FetchStep(k, slot);
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
    // The fetch task fetches a q_by_piece block with its first step.
    if (walk.steps[walk.q_blocks[b].first_step].q_by_piece) continue;
    const auto slot = static_cast<int>(b & 1U);
    Pace(QBytes(b));
    const DeviceQBlock& block = walk.q_blocks[b];
    StartQFetch(b, 0, block.row_end - block.row_begin, slot,
                &q_landed_[static_cast<std::size_t>(slot)]);
  }
}

void ScheduleRunner::UpdateTask() {
  const DeviceWalk& walk = *in_.walk;
  for (std::uint32_t k = 0; k < walk.steps.size(); ++k) {
    const DeviceStep& step = walk.steps[k];
    const int slot = static_cast<int>(k & 1U);
    const auto s = static_cast<std::size_t>(slot);
    // The new tokens and the cached KV touch disjoint ranges of the slot:
    // converting while the cached KV still streams is no race.
    runtime::TimePoint converted{};
    for (std::uint32_t p = 0; p < FetchPieces(step); ++p) {
      const std::uint32_t f = fetch_piece_begin_[k] + p;
      runtime::TimePoint end{};
      if (step.fetch_by_piece) {
        const KeySpan staged = PieceStaged(step, Piece(step, p));
        piece_landed_[f].stage.Wait(StagedBytes(staged));
        end =
            in_.compute->ConvertNewTokens(step, slot, staged.begin, staged.end);
      } else {
        stage_landed_[s].Wait(StageBytes(step));
        end = in_.compute->ConvertNewTokens(step, slot);
      }
      converted = std::max(converted, end);
      converted_time_[f] = converted;
      converted_.Release(1);
    }
    steps_converted_ = k + 1;
    if (WriteBackBytes(step) != 0) {
      RPA_CHECK(write_backs_
                    .TrySend({.kind = WriteBackKind::kKv,
                              .index = k,
                              .slot = slot,
                              .not_before = converted})
                    .ok());
    }
  }
}

// The compute task's side of a step's pieces (PieceHooks).
class ScheduleRunner::ComputeHooks final : public PieceHooks {
 public:
  ComputeHooks(ScheduleRunner* runner, std::uint32_t k)
      : runner_(*runner),
        k_(k),
        step_(runner->in_.walk->steps[k]),
        slot_(k & 1U),
        q_slot_(static_cast<int>(step_.q_block & 1U)) {}

  bool Ready(std::uint32_t piece) override {
    if (!step_.fetch_by_piece) return piece > 0;
    const std::uint32_t f = runner_.fetch_piece_begin_[k_] + piece;
    const DevicePiece& p = runner_.Piece(step_, piece);
    const PieceLanding& landing = runner_.piece_landed_[f];
    return runner_.converted_.available() >= 1 &&
           (!step_.q_by_piece ||
            landing.q.Landed(runner_.RowBytes(p.row_end - p.row_begin))) &&
           landing.kv.Landed(runner_.CacheBytes(PieceCached(step_, p)));
  }

  runtime::TimePoint Wait(std::uint32_t piece) override {
    if (!step_.fetch_by_piece) {
      if (piece > 0) return converted_;
      runner_.converted_.Acquire(1);
      converted_ = runner_.converted_time_[runner_.fetch_piece_begin_[k_]];
      if (!runner_.in_.skip_kv_wait_for_testing) {
        runner_.kv_landed_[slot_].Wait(runner_.KvFetchBytes(step_));
      }
      return converted_;
    }
    const std::uint32_t f = runner_.fetch_piece_begin_[k_] + piece;
    const DevicePiece& p = runner_.Piece(step_, piece);
    PieceLanding& landing = runner_.piece_landed_[f];
    runner_.converted_.Acquire(1);
    converted_ = std::max(converted_, runner_.converted_time_[f]);
    if (step_.q_by_piece) {
      landing.q.Wait(runner_.RowBytes(p.row_end - p.row_begin));
    }
    if (!runner_.in_.skip_kv_wait_for_testing) {
      landing.kv.Wait(runner_.CacheBytes(PieceCached(step_, p)));
    }
    return converted_;
  }

  void Finalized(std::uint32_t piece, runtime::TimePoint end) override {
    RPA_CHECK(runner_.write_backs_
                  .TrySend({.kind = WriteBackKind::kOutPiece,
                            .index = k_,
                            .piece = piece,
                            .slot = q_slot_,
                            .not_before = end})
                  .ok());
  }

  void BeforeUnit(runtime::TimePoint previous) override {
    // Only while the next step's conversion is still to come and worth
    // hurrying (a conversion of a few tokens costs nothing where it falls).
    const std::size_t next = k_ + 1;
    if (next >= runner_.in_.walk->steps.size() ||
        runner_.steps_converted_ > next ||
        runner_.StageBytes(runner_.in_.walk->steps[next]) <
            runner_.small_dma_bytes_) {
      return;
    }
    runner_.in_.device->WaitUntil(previous);
  }

  // The end of the step's last conversion (once every piece was waited).
  runtime::TimePoint converted() const { return converted_; }

 private:
  ScheduleRunner& runner_;
  std::uint32_t k_;
  const DeviceStep& step_;
  std::size_t slot_;
  int q_slot_;
  runtime::TimePoint converted_{};
};

void ScheduleRunner::ComputeTask() {
  const DeviceWalk& walk = *in_.walk;
  runtime::TimePoint q_end{};
  bool out_free = false;
  for (std::uint32_t k = 0; k < walk.steps.size(); ++k) {
    const DeviceStep& step = walk.steps[k];
    const int slot = static_cast<int>(k & 1U);
    const std::uint32_t b = step.q_block;
    const DeviceQBlock& block = walk.q_blocks[b];
    const auto q_slot = static_cast<int>(b & 1U);
    const auto qs = static_cast<std::size_t>(q_slot);
    if (k == block.first_step) {
      q_end = {};
      out_free = b < 2;
      // A q_by_piece block's rows are waited for piece by piece.
      if (!step.q_by_piece) q_landed_[qs].Wait(QBytes(b));
    }
    if (step.last_of_segment && !out_free) {
      // Output slot b&1 is free for this step's finalize once Q block b-2's
      // output DMA landed.
      out_landed_[qs].Wait(QBytes(b - 2));
      out_free = true;
    }
    ComputeHooks hooks(this, k);
    const StepTimes times =
        in_.compute->Compute(step, slot, q_slot, q_slot, &hooks);
    kv_release_time_[k] = std::max(times.kv_end, hooks.converted());
    kv_released_.Release(1);
    q_end = std::max(q_end, times.q_end);
    if (k == block.last_step) {
      q_release_time_[b] = q_end;
      q_released_.Release(1);
      if (!step.out_by_piece) {
        RPA_CHECK(write_backs_
                      .TrySend({.kind = WriteBackKind::kOut,
                                .index = b,
                                .slot = q_slot,
                                .not_before = times.out_end})
                      .ok());
      }
    }
  }
  write_backs_.Close();
}

void ScheduleRunner::WriteBackTask() {
  while (std::optional<WriteBack> request = write_backs_.Receive()) {
    // The op producing the bytes must have ended before a DMA reads them.
    in_.device->WaitUntil(request->not_before);
    const auto s = static_cast<std::size_t>(request->slot);
    switch (request->kind) {
      case WriteBackKind::kKv:
        StartKvWriteBack(in_.walk->steps[request->index], request->slot,
                         &write_back_landed_[s]);
        break;
      case WriteBackKind::kOut: {
        const DeviceQBlock& block = in_.walk->q_blocks[request->index];
        StartOutWriteBack(request->index, 0, block.row_end - block.row_begin,
                          request->slot, &out_landed_[s]);
        break;
      }
      case WriteBackKind::kOutPiece: {
        const DeviceStep& step = in_.walk->steps[request->index];
        const DevicePiece& piece = Piece(step, request->piece);
        StartOutWriteBack(step.q_block, step.local_row + piece.row_begin,
                          step.local_row + piece.row_end, request->slot,
                          &out_landed_[s]);
        break;
      }
    }
  }
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
