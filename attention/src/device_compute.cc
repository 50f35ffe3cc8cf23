#include "device_compute.h"

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <span>

#include "building_blocks.h"

#include "rpa/attention/storage_convert.h"
#include "rpa/memory/storage_type.h"

namespace rpa::attention::internal {

namespace {

constexpr double kSoftmaxOpsPerScore = 6;
constexpr double kSoftCapOpsPerScore = 3;
constexpr double kSoftmaxOpsPerRow = 4;

runtime::TimePoint Later(runtime::TimePoint a, runtime::TimePoint b) {
  return std::max(a, b);
}

device::VmemAccess Read(const device::VmemBuffer& buffer, std::uint64_t offset,
                        std::uint64_t bytes) {
  return {.buffer = buffer, .offset = offset, .bytes = bytes, .write = false};
}
device::VmemAccess Write(const device::VmemBuffer& buffer, std::uint64_t offset,
                         std::uint64_t bytes) {
  return {.buffer = buffer, .offset = offset, .bytes = bytes, .write = true};
}

}  // namespace

StepCompute::StepCompute(const ValidatedBatch& batch,
                         const DeviceBlockChoice& choice,
                         const DeviceWalk& walk, device::Device* device,
                         const DeviceBuffers& buffers)
    : batch_(batch),
      choice_(choice),
      walk_(walk),
      device_(device),
      buffers_(buffers) {
  std::uint32_t max_pages = 0;
  std::uint32_t max_compute_tokens = 0;
  for (std::size_t r = 0; r < choice.used.size(); ++r) {
    if (!choice.used[r]) continue;
    max_pages = std::max(max_pages, choice.sizes[r].kv_pages_per_block);
    max_compute_tokens =
        std::max(max_compute_tokens, choice.sizes[r].compute_kv_tokens);
  }
  local_pages_.resize(max_pages);
  std::iota(local_pages_.begin(), local_pages_.end(), 0);
  k_tile_.resize(static_cast<std::size_t>(max_compute_tokens) *
                 batch.shape.head_dim);
  v_tile_.resize(k_tile_.size());
}

memory::KvLayerView StepCompute::KvSlotView(int slot) const {
  // The KV slot is laid out like the cache: [pages, ps, 2 Hkv, D] stored,
  // local page i at i * page_bytes. Positions relative to the block's first
  // page address it through local_pages_.
  memory::KvLayerView view;
  view.data = buffers_.kv[static_cast<std::size_t>(slot)].data;
  view.num_pages = static_cast<std::uint32_t>(local_pages_.size());
  view.page_size_tokens = batch_.cache.page_size_tokens;
  view.num_combined_heads = batch_.cache.num_combined_heads;
  view.head_dim = batch_.cache.head_dim;
  view.storage = batch_.cache.storage;
  view.token_bytes = static_cast<std::size_t>(view.num_combined_heads) *
                     view.head_dim * memory::StorageBytes(view.storage);
  view.page_bytes = view.token_bytes * view.page_size_tokens;
  return view;
}

runtime::TimePoint StepCompute::ConvertNewTokens(const DeviceStep& step,
                                                 int slot, std::int32_t begin,
                                                 std::int32_t end) {
  const std::int32_t tokens = end - begin;
  if (tokens <= 0) return {};
  RPA_CHECK(begin >= step.stage_begin && end <= step.stage_end);
  const auto s = static_cast<std::size_t>(slot);
  const std::size_t dim = batch_.shape.head_dim;
  const std::size_t heads = batch_.shape.num_kv_heads;
  const std::size_t row_floats = heads * dim;  // one token's K (or V) rows
  const std::size_t staged_tokens =
      static_cast<std::size_t>(step.stage_end - step.stage_begin);
  const std::size_t first_token =
      static_cast<std::size_t>(begin - step.stage_begin);
  const memory::KvLayerView view = KvSlotView(slot);
  const std::size_t row_bytes = dim * memory::StorageBytes(view.storage);
  const auto* staged_k =
      reinterpret_cast<const float*>(buffers_.stage[s].data) +
      first_token * row_floats;
  const float* staged_v = staged_k + staged_tokens * row_floats;
  std::byte* first =
      view.data +
      static_cast<std::size_t>(begin - step.block_begin) * view.token_bytes;
  for (std::size_t t = 0; t < static_cast<std::size_t>(tokens); ++t) {
    std::byte* slot_bytes = first + t * view.token_bytes;
    for (std::size_t h = 0; h < heads; ++h) {
      const std::size_t row = (t * heads + h) * dim;
      ConvertToStorage(std::span<const float>(staged_k + row, dim),
                       view.storage, slot_bytes + 2 * h * row_bytes);
      ConvertToStorage(std::span<const float>(staged_v + row, dim),
                       view.storage, slot_bytes + (2 * h + 1) * row_bytes);
    }
  }
  const std::uint64_t part_bytes =
      static_cast<std::uint64_t>(tokens) * row_floats * kFloatBytes;
  const std::uint64_t k_offset = first_token * row_floats * kFloatBytes;
  const std::uint64_t v_offset =
      (staged_tokens + first_token) * row_floats * kFloatBytes;
  const std::array<device::VmemAccess, 3> accesses = {
      Read(buffers_.stage[s], k_offset, part_bytes),
      Read(buffers_.stage[s], v_offset, part_bytes),
      Write(buffers_.kv[s],
            static_cast<std::uint64_t>(begin - step.block_begin) *
                view.token_bytes,
            static_cast<std::uint64_t>(tokens) * view.token_bytes)};
  return device_
      ->Vector(static_cast<double>(2 * static_cast<std::size_t>(tokens) *
                                   row_floats),
               accesses, {}, "convert")
      .end;
}

void StepCompute::ComputeUnit(const DeviceStep& step, const Unit& unit,
                              int kv_slot, int q_slot) {
  const SequenceSpan& span = batch_.sequences[step.sequence];
  const ResolvedParams& params = batch_.params;
  const std::uint32_t dim = batch_.shape.head_dim;
  const std::uint32_t hq = batch_.shape.num_q_heads;
  const std::uint32_t group = batch_.group_size;
  const std::int32_t gap = span.kv_len - span.q_len;
  const std::int32_t keys = unit.end - unit.begin;
  const auto n = static_cast<std::size_t>(keys);
  const memory::KvLayerView view = KvSlotView(kv_slot);
  LoadKvTile(view, local_pages_.data(), unit.kv_head, /*value=*/false,
             unit.begin - step.block_begin, unit.end - step.block_begin,
             k_tile_.data(), dim);
  LoadKvTile(view, local_pages_.data(), unit.kv_head, /*value=*/true,
             unit.begin - step.block_begin, unit.end - step.block_begin,
             v_tile_.data(), dim);
  const auto* q = reinterpret_cast<const float*>(
      buffers_.q[static_cast<std::size_t>(q_slot)].data);
  auto* scores = reinterpret_cast<float*>(
      buffers_.scores[static_cast<std::size_t>(unit.scores_slot)].data);
  auto* pv = reinterpret_cast<float*>(
      buffers_.pv[static_cast<std::size_t>(unit.scores_slot)].data);
  auto* acc = reinterpret_cast<float*>(buffers_.acc.data);
  auto* state = reinterpret_cast<SoftmaxRow*>(buffers_.state.data);
  const DevicePiece& piece = *unit.piece;
  for (std::int32_t a = piece.row_begin; a < piece.row_end; ++a) {
    const KeyRange visible =
        VisibleKeys(gap + step.first_query + a, span.kv_len, params);
    const std::int32_t begin = std::max(visible.begin, unit.begin);
    const std::int32_t end = std::max(begin, std::min(visible.end, unit.end));
    const std::size_t local_row =
        static_cast<std::size_t>(step.local_row) + static_cast<std::size_t>(a);
    for (std::uint32_t g = 0; g < group; ++g) {
      const std::size_t head =
          static_cast<std::size_t>(unit.kv_head) * group + g;
      const std::size_t row =
          static_cast<std::size_t>(a - piece.row_begin) * group + g;
      const float* q_row = q + (local_row * hq + head) * dim;
      float* row_scores = scores + row * n;
      // Only the visible keys are computed: a masked key's V is never
      // multiplied by a zero weight (no 0 * NaN).
      std::fill(row_scores, row_scores + n, -__builtin_inff());
      for (std::int32_t j = begin; j < end; ++j) {
        row_scores[j - unit.begin] =
            Dot(q_row,
                k_tile_.data() + static_cast<std::size_t>(j - unit.begin) * dim,
                dim);
      }
      const auto first = static_cast<std::size_t>(begin - unit.begin);
      ScaleAndCapScores(row_scores + first,
                        static_cast<std::size_t>(end - begin),
                        params.score_scale, params.soft_cap);
      SoftmaxRow* row_state = state + local_row * hq + head;
      const float factor = OnlineSoftmaxUpdate(row_state, row_scores, n);
      float* row_pv = pv + row * dim;
      std::fill(row_pv, row_pv + dim, 0.0F);
      for (std::int32_t j = begin; j < end; ++j) {
        Axpy(row_scores[j - unit.begin],
             v_tile_.data() + static_cast<std::size_t>(j - unit.begin) * dim,
             row_pv, dim);
      }
      float* row_acc = acc + (local_row * hq + head) * dim;
      ScaleInPlace(row_acc, dim, factor);
      Axpy(1.0F, row_pv, row_acc, dim);
    }
  }
}

runtime::TimePoint StepCompute::Finalize(const DeviceStep& step,
                                         std::int32_t row_begin,
                                         std::int32_t row_end, int out_slot) {
  const std::uint64_t dim = batch_.shape.head_dim;
  const std::uint64_t hq = batch_.shape.num_q_heads;
  const float v_scale = batch_.params.v_scale;
  const auto* acc = reinterpret_cast<const float*>(buffers_.acc.data);
  const auto* state = reinterpret_cast<const SoftmaxRow*>(buffers_.state.data);
  const device::VmemBuffer& out_buffer =
      buffers_.out[static_cast<std::size_t>(out_slot)];
  auto* out = reinterpret_cast<float*>(out_buffer.data);
  const std::uint64_t first_head =
      static_cast<std::uint64_t>(step.local_row + row_begin) * hq;
  const std::uint64_t head_rows =
      static_cast<std::uint64_t>(row_end - row_begin) * hq;
  for (std::uint64_t r = first_head; r < first_head + head_rows; ++r) {
    const float normaliser = v_scale / state[r].sum;
    for (std::uint64_t d = 0; d < dim; ++d) {
      out[r * dim + d] = acc[r * dim + d] * normaliser;
    }
  }
  const std::uint64_t offset = first_head * dim * kFloatBytes;
  const std::uint64_t bytes = head_rows * dim * kFloatBytes;
  const std::array<device::VmemAccess, 3> accesses = {
      Read(buffers_.acc, offset, bytes),
      Read(buffers_.state, first_head * sizeof(SoftmaxRow),
           head_rows * sizeof(SoftmaxRow)),
      Write(out_buffer, offset, bytes)};
  return device_
      ->Vector(static_cast<double>(2 * head_rows * dim), accesses, {},
               "finalize")
      .end;
}

StepTimes StepCompute::Compute(const DeviceStep& step, int kv_slot, int q_slot,
                               int out_slot, PieceHooks* hooks) {
  const std::uint64_t dim = batch_.shape.head_dim;
  const std::uint64_t hq = batch_.shape.num_q_heads;
  const std::uint64_t group = batch_.group_size;
  const auto kv_index = static_cast<std::size_t>(kv_slot);
  const auto q_index = static_cast<std::size_t>(q_slot);
  const std::uint64_t token_bytes = KvSlotView(kv_slot).token_bytes;
  const auto head_row_bytes = [&](std::int32_t row) {
    return (static_cast<std::uint64_t>(step.local_row) +
            static_cast<std::uint64_t>(row)) *
           hq * dim * kFloatBytes;
  };
  const auto state_bytes = [&](std::int32_t row) {
    return (static_cast<std::uint64_t>(step.local_row) +
            static_cast<std::uint64_t>(row)) *
           hq * sizeof(SoftmaxRow);
  };
  // The piece's rows of q, acc and state.
  const auto q_read = [&](const DevicePiece& piece) {
    return Read(
        buffers_.q[q_index], head_row_bytes(piece.row_begin),
        head_row_bytes(piece.row_end) - head_row_bytes(piece.row_begin));
  };
  const auto acc_write = [&](const DevicePiece& piece) {
    return Write(
        buffers_.acc, head_row_bytes(piece.row_begin),
        head_row_bytes(piece.row_end) - head_row_bytes(piece.row_begin));
  };
  const auto state_write = [&](const DevicePiece& piece) {
    return Write(buffers_.state, state_bytes(piece.row_begin),
                 state_bytes(piece.row_end) - state_bytes(piece.row_begin));
  };
  const auto matrix_rows = [&](const Unit& unit) {
    return static_cast<std::uint64_t>(unit.piece->row_end -
                                      unit.piece->row_begin) *
           group;
  };
  StepTimes times;

  runtime::TimePoint not_before = hooks->Wait(0);
  if (step.first_of_segment) {
    const DevicePiece all{.row_begin = 0, .row_end = step.num_rows};
    auto* acc = reinterpret_cast<float*>(buffers_.acc.data) +
                head_row_bytes(0) / kFloatBytes;
    const std::uint64_t head_rows =
        static_cast<std::uint64_t>(step.num_rows) * hq;
    std::fill(acc, acc + head_rows * dim, 0.0F);
    auto* state = reinterpret_cast<SoftmaxRow*>(buffers_.state.data) +
                  state_bytes(0) / sizeof(SoftmaxRow);
    std::fill(state, state + head_rows, SoftmaxRow{});
    const std::array<device::VmemAccess, 2> accesses = {acc_write(all),
                                                        state_write(all)};
    times.end = device_
                    ->Vector(static_cast<double>(head_rows * (dim + 2)),
                             accesses, {}, "init")
                    .end;
  }

  const std::int32_t tile_tokens = static_cast<std::int32_t>(
      choice_.sizes[batch_.sequences[step.sequence].range].compute_kv_tokens);
  const double score_ops =
      kSoftmaxOpsPerScore +
      (batch_.params.soft_cap != 0.0F ? kSoftCapOpsPerScore : 0.0);
  const auto kv_access = [&](const Unit& unit) {
    return Read(
        buffers_.kv[kv_index],
        static_cast<std::uint64_t>(unit.begin - step.block_begin) * token_bytes,
        static_cast<std::uint64_t>(unit.end - unit.begin) * token_bytes);
  };
  const auto scores_bytes = [&](const Unit& unit) {
    return matrix_rows(unit) *
           static_cast<std::uint64_t>(unit.end - unit.begin) * kFloatBytes;
  };

  // Software pipeline over the units: QK(u+1), PV(u), SM(u+1), ACC(u).
  Unit previous;
  bool has_previous = false;
  const auto issue_back_half = [&](const Unit& unit) {
    const auto s = static_cast<std::size_t>(unit.scores_slot);
    const auto keys = static_cast<std::uint64_t>(unit.end - unit.begin);
    const std::uint64_t rows = matrix_rows(unit);
    const std::array<device::VmemAccess, 3> pv_accesses = {
        Read(buffers_.scores[s], 0, scores_bytes(unit)), kv_access(unit),
        Write(buffers_.pv[s], 0, rows * dim * kFloatBytes)};
    const device::ComputeOp pv =
        device_->MatMul(rows, keys, dim, pv_accesses, unit.sm_end, "pv");
    times.kv_end = Later(times.kv_end, pv.end);
    return pv;
  };
  const auto issue_acc = [&](const Unit& unit, runtime::TimePoint pv_end) {
    const auto s = static_cast<std::size_t>(unit.scores_slot);
    const std::array<device::VmemAccess, 2> accesses = {
        Read(buffers_.pv[s], 0, matrix_rows(unit) * dim * kFloatBytes),
        acc_write(*unit.piece)};
    times.end =
        Later(times.end,
              device_
                  ->Vector(static_cast<double>(2 * matrix_rows(unit) * dim),
                           accesses, pv_end, "acc")
                  .end);
  };
  const auto drain = [&] {
    if (has_previous) issue_acc(previous, issue_back_half(previous).end);
    has_previous = false;
  };
  runtime::TimePoint pending_pv_end{};
  runtime::TimePoint previous_qk_start{};
  bool has_previous_qk = false;
  const DevicePiece* pieces = walk_.pieces.data() + step.first_piece;
  for (std::uint32_t p = 0; p < step.num_pieces; ++p) {
    const DevicePiece& piece = pieces[p];
    if (p > 0) {
      // Keep the pipeline full when the piece's data is there; otherwise
      // let the previous unit finish while this task waits.
      if (!hooks->Ready(p)) drain();
      not_before = Later(not_before, hooks->Wait(p));
    }
    // Sub-tiles on the step's grid (from compute_begin), clipped to the
    // keys the piece sees.
    const std::int32_t grid_begin =
        step.compute_begin +
        (piece.compute_begin - step.compute_begin) / tile_tokens * tile_tokens;
    for (std::int32_t begin = grid_begin; begin < piece.compute_end;
         begin += tile_tokens) {
      for (std::uint32_t h = 0; h < batch_.shape.num_kv_heads; ++h) {
        if (has_previous_qk) hooks->BeforeUnit(previous_qk_start);
        Unit unit;
        unit.piece = &piece;
        unit.kv_head = h;
        unit.begin = std::max(begin, piece.compute_begin);
        unit.end = std::min(piece.compute_end, begin + tile_tokens);
        unit.scores_slot = next_scores_slot_;
        next_scores_slot_ ^= 1;
        ComputeUnit(step, unit, kv_slot, q_slot);

        const auto s = static_cast<std::size_t>(unit.scores_slot);
        const auto keys = static_cast<std::uint64_t>(unit.end - unit.begin);
        const std::uint64_t rows = matrix_rows(unit);
        const std::array<device::VmemAccess, 3> qk_accesses = {
            q_read(piece), kv_access(unit),
            Write(buffers_.scores[s], 0, scores_bytes(unit))};
        const device::ComputeOp qk =
            device_->MatMul(rows, dim, keys, qk_accesses, not_before, "qk");
        previous_qk_start = qk.start;
        has_previous_qk = true;
        times.q_end = Later(times.q_end, qk.end);
        times.kv_end = Later(times.kv_end, qk.end);
        if (has_previous) pending_pv_end = issue_back_half(previous).end;
        const std::array<device::VmemAccess, 2> sm_accesses = {
            Write(buffers_.scores[s], 0, scores_bytes(unit)),
            state_write(piece)};
        unit.sm_end = device_
                          ->Vector(static_cast<double>(rows) *
                                       (score_ops * static_cast<double>(keys) +
                                        kSoftmaxOpsPerRow),
                                   sm_accesses, qk.end, "softmax")
                          .end;
        if (has_previous) issue_acc(previous, pending_pv_end);
        previous = unit;
        has_previous = true;
      }
    }
    if (step.out_by_piece) {
      drain();
      const runtime::TimePoint end =
          Finalize(step, piece.row_begin, piece.row_end, out_slot);
      times.out_end = Later(times.out_end, end);
      hooks->Finalized(p, end);
    }
  }
  drain();
  if (step.last_of_segment && !step.out_by_piece) {
    times.out_end = Finalize(step, 0, step.num_rows, out_slot);
  }
  times.end = Later(Later(times.end, times.out_end), times.kv_end);
  return times;
}

}  // namespace rpa::attention::internal
