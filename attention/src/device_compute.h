#pragma once

// The numerics of one step on the simulated device: the real f32 arithmetic
// on the VMEM contents (the same building blocks as the host kernels) and
// the device time it is charged (matrix and vector reservations naming the
// VMEM ranges they touch). Private to attention/.
//
// A step's work, per row piece (device_blocks.h; usually all the segment's
// rows), per compute sub-tile of compute_kv_tokens keys (the step's grid from
// compute_begin, clipped to the keys the piece sees) and per kv head (a
// "unit": the GQA group's query rows of the piece against the sub-tile's
// keys):
//   QK   matrix  MatMul(rows, D, keys)        q slot, kv slot -> scores
//   SM   vector  mask, scale, soft cap, online softmax
//                                             scores, state -> scores (P)
//   PV   matrix  MatMul(rows, keys, D)        P, kv slot -> pv
//   ACC  vector  acc = acc * rescale + pv     pv, acc -> acc
// issued as QK(u+1), PV(u), SM(u+1), ACC(u) so the matrix unit computes the
// next unit's scores while the vector unit does this unit's softmax. Units
// are piece major, then sub-tile, then kv head, so consecutive units are
// independent (two pieces have disjoint rows).
// Hazards between compute ops (not seen by the device's race checker, which
// watches DMAs against ops) are ordered by the units being in-order: the
// scores / pv slots alternate between units, QK(u+2) follows PV(u) on the
// matrix unit, and SM(u+2) follows ACC(u) on the vector unit; acc and state
// are touched only by the vector unit.
//
// Vector op counts (one op = one element operation, exp included):
//   conversion  1 per converted element (2 Hkv D per new token)
//   init        D + 2 per (query token, q head) of a segment
//   SM          6 per score (mask, scale, max, subtract, exp, sum), 9 with a
//               soft cap (divide, tanh, multiply), + 4 per row
//   ACC         2 per accumulator element
//   finalize    2 per output element (1 / sum * v_scale, then the multiply)

#include <array>
#include <cstdint>
#include <vector>

#include "device_blocks.h"
#include "plan_data.h"

#include "rpa/device/device.h"
#include "rpa/memory/kv_cache.h"
#include "rpa/runtime/clock.h"

namespace rpa::attention::internal {

// The VMEM buffers of the schedule; [2] = double-buffered (slot = index).
struct DeviceBuffers {
  std::array<device::VmemBuffer, 2> q{};
  std::array<device::VmemBuffer, 2> out{};
  std::array<device::VmemBuffer, 2> kv{};
  std::array<device::VmemBuffer, 2> stage{};
  std::array<device::VmemBuffer, 2> scores{};
  std::array<device::VmemBuffer, 2> pv{};
  device::VmemBuffer acc{};
  device::VmemBuffer state{};
};

// What the schedule does between the row pieces of a step (device_blocks.h);
// the compute task may suspend in Wait.
class PieceHooks {
 public:
  virtual ~PieceHooks() = default;
  // True when Wait(piece) would not suspend (its data has landed).
  virtual bool Ready(std::uint32_t piece) = 0;
  // Waits until the data of piece `piece` (an index into the step's pieces)
  // has landed; returns the end of its conversion: no matrix op of the
  // piece starts earlier.
  virtual runtime::TimePoint Wait(std::uint32_t piece) = 0;
  // out_by_piece steps: the piece's output rows are in the output slot,
  // written by an op ending at `end`.
  virtual void Finalized(std::uint32_t piece, runtime::TimePoint end) = 0;
  // Before a unit other than the step's first: `previous` is the start of
  // the previous unit's QK^T. The pipelined schedule waits until then, so
  // that it reserves at most about one unit ahead of the matrix unit and a
  // conversion issued meanwhile (the update task's, in-order vector unit)
  // is not queued behind the rest of the step.
  virtual void BeforeUnit(runtime::TimePoint previous) = 0;
};

// Reserved end times of a step's ops, for the buffers the schedule reuses.
struct StepTimes {
  runtime::TimePoint kv_end{};   // last op reading or writing the KV slot
  runtime::TimePoint q_end{};    // last op reading the Q slot
  runtime::TimePoint out_end{};  // the finalize (last_of_segment steps)
  runtime::TimePoint end{};      // the step's last op
};

class StepCompute {
 public:
  StepCompute(const ValidatedBatch& batch, const DeviceBlockChoice& choice,
              const DeviceWalk& walk, device::Device* device,
              const DeviceBuffers& buffers);

  // The staged new tokens [begin, end) of `step` (a sub-range of
  // [stage_begin, stage_end); the stage slot holds K rows then V rows of the
  // whole stage range, f32, in stage slot `slot`) converted to the cache
  // type into their slots of KV slot `slot`: one vector op, returns its
  // end. No-op (returns {}) for an empty range.
  runtime::TimePoint ConvertNewTokens(const DeviceStep& step, int slot,
                                      std::int32_t begin, std::int32_t end);
  runtime::TimePoint ConvertNewTokens(const DeviceStep& step, int slot) {
    return ConvertNewTokens(step, slot, step.stage_begin, step.stage_end);
  }

  // The step's attention: init of the segment's accumulators on its first
  // step, then per row piece (in order; hooks->Wait before its first op)
  // the units (file comment) over the keys the piece sees, and on the
  // segment's last step the finalize into output slot `out_slot` (per piece
  // with out_by_piece, reported to hooks->Finalized). Reads Q slot `q_slot`
  // and KV slot `kv_slot`. The unit pipeline runs on across pieces when the
  // next piece is Ready, and drains first otherwise.
  StepTimes Compute(const DeviceStep& step, int kv_slot, int q_slot,
                    int out_slot, PieceHooks* hooks);

 private:
  struct Unit {
    const DevicePiece* piece = nullptr;
    std::uint32_t kv_head = 0;
    std::int32_t begin = 0;  // sub-tile keys [begin, end)
    std::int32_t end = 0;
    int scores_slot = 0;
    runtime::TimePoint sm_end{};
  };
  // The unit's real arithmetic: scores, softmax, pv and the accumulator.
  void ComputeUnit(const DeviceStep& step, const Unit& unit, int kv_slot,
                   int q_slot);
  memory::KvLayerView KvSlotView(int slot) const;

  // Reserves the finalize of rows [row_begin, row_end) of the step's
  // segment into output slot `out_slot`; returns its end.
  runtime::TimePoint Finalize(const DeviceStep& step, std::int32_t row_begin,
                              std::int32_t row_end, int out_slot);

  const ValidatedBatch& batch_;
  const DeviceBlockChoice& choice_;
  const DeviceWalk& walk_;
  device::Device* device_;
  DeviceBuffers buffers_;
  std::vector<std::int32_t> local_pages_;  // 0, 1, ..., kv pages - 1
  std::vector<float> k_tile_;              // host scratch: converted rows
  std::vector<float> v_tile_;
  int next_scores_slot_ = 0;
};

}  // namespace rpa::attention::internal
