#include "device_blocks.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>

#include "rpa/memory/storage_type.h"
#include "rpa/runtime/check.h"
#include "rpa/runtime/int_math.h"

namespace rpa::attention::internal {

namespace {

// Decode Q blocks: f32 queries per block (the Q and output DMAs of a block
// each pay one issue latency; 512 KiB amortises it).
constexpr std::uint64_t kDecodeQBlockBytes = std::uint64_t{512} * 1024;
constexpr std::uint32_t kDecodeMaxComputeTokens = 2048;
// KV block bytes >= this many times the bandwidth-delay product (HBM
// bandwidth x DMA issue latency).
constexpr double kDecodeDelayMargin = 4.0;
// Flash: matrix rows (query tokens x group) per kv head and Q block.
constexpr std::uint32_t kFlashRowsPerBlock = 1024;
constexpr std::uint32_t kFlashKvTokensPerBlock = 512;
constexpr std::uint32_t kFlashMaxComputeTokens = 512;

// What the defaults and the layout need to know about one range.
struct RangeShape {
  std::uint32_t num_sequences = 0;
  std::int32_t max_q_len = 0;
  std::uint32_t max_pages = 0;  // pages of the longest sequence
};

std::array<RangeShape, kNumRanges> ShapeRanges(const ValidatedBatch& batch) {
  std::array<RangeShape, kNumRanges> shapes{};
  const std::uint32_t ps = batch.cache.page_size_tokens;
  for (const SequenceSpan& span : batch.sequences) {
    RangeShape& shape = shapes[span.range];
    ++shape.num_sequences;
    shape.max_q_len = std::max(shape.max_q_len, span.q_len);
    shape.max_pages =
        std::max(shape.max_pages,
                 DivideRoundUp(static_cast<std::uint32_t>(span.kv_len), ps));
  }
  return shapes;
}

DeviceBlockSizes DefaultBlocks(KernelKind kernel, const RangeShape& range,
                               const ValidatedBatch& batch,
                               const device::DeviceSpec& spec) {
  const std::uint64_t page_bytes =
      static_cast<std::uint64_t>(batch.cache.page_size_tokens) *
      batch.cache.num_combined_heads * batch.cache.head_dim *
      memory::StorageBytes(batch.cache.storage);
  const std::uint32_t ps = batch.cache.page_size_tokens;
  DeviceBlockSizes blocks;
  if (kernel == KernelKind::kDecode) {
    blocks.q_tokens_per_block =
        std::min(DefaultDecodeQTokensPerBlock(batch.shape.num_q_heads,
                                              batch.shape.head_dim),
                 std::max(1U, range.num_sequences));
    const double delay_bytes = kDecodeDelayMargin * spec.hbm_bytes_per_s *
                               spec.dma_issue_latency_ns * 1e-9;
    const auto wanted_pages = static_cast<std::uint32_t>(std::max(
        1.0, std::ceil(delay_bytes / static_cast<double>(page_bytes))));
    // Equal blocks: with two slots, block k+1 is fetched when block k-1 is
    // done, so a short block between two long ones leaves the next long
    // one's issue latency exposed.
    const std::uint32_t max_pages = std::max(1U, range.max_pages);
    const std::uint32_t num_blocks = DivideRoundUp(max_pages, wanted_pages);
    blocks.kv_pages_per_block = DivideRoundUp(max_pages, num_blocks);
    blocks.compute_kv_tokens =
        std::min(blocks.kv_pages_per_block * ps, kDecodeMaxComputeTokens);
  } else {
    blocks.q_tokens_per_block = std::clamp<std::uint32_t>(
        kFlashRowsPerBlock / batch.group_size, 1,
        static_cast<std::uint32_t>(std::max(1, range.max_q_len)));
    blocks.kv_pages_per_block =
        std::clamp(DivideRoundUp(kFlashKvTokensPerBlock, ps), 1U,
                   std::max(1U, range.max_pages));
    blocks.compute_kv_tokens =
        std::min(blocks.kv_pages_per_block * ps, kFlashMaxComputeTokens);
  }
  return blocks;
}

// The buffers one range needs (its Q block, KV block, staging and tiles).
VmemLayout RangeLayout(const BatchShape& shape, memory::StorageType storage,
                       std::uint32_t page_size_tokens,
                       const DeviceRangeDemand& range) {
  const std::uint64_t hq = shape.num_q_heads;
  const std::uint64_t hkv = shape.num_kv_heads;
  const std::uint64_t dim = shape.head_dim;
  const std::uint64_t group = hkv == 0 ? 1 : hq / hkv;
  const std::uint64_t ps = page_size_tokens;
  const DeviceBlockSizes& blocks = range.blocks;
  const std::uint64_t q_tokens = blocks.q_tokens_per_block;
  const std::uint64_t block_tokens = blocks.kv_pages_per_block * ps;
  const std::uint64_t compute_tokens =
      std::min<std::uint64_t>(blocks.compute_kv_tokens, block_tokens);
  // New tokens staged by one step: at most the block's, and at most q_len.
  const std::uint64_t stage_tokens = std::min<std::uint64_t>(
      block_tokens, static_cast<std::uint64_t>(std::max(1, range.max_q_len)));
  const std::uint64_t step_rows =
      (range.kernel == KernelKind::kDecode ? 1 : q_tokens) * group;
  VmemLayout layout;
  layout.q_slot_bytes = q_tokens * hq * dim * kFloatBytes;
  layout.out_slot_bytes = layout.q_slot_bytes;
  layout.kv_slot_bytes = blocks.kv_pages_per_block * ps * 2 * hkv * dim *
                         memory::StorageBytes(storage);
  layout.stage_slot_bytes = stage_tokens * 2 * hkv * dim * kFloatBytes;
  layout.scores_slot_bytes = step_rows * compute_tokens * kFloatBytes;
  layout.pv_slot_bytes = step_rows * dim * kFloatBytes;
  layout.acc_bytes = q_tokens * hq * dim * kFloatBytes;
  layout.state_bytes = q_tokens * hq * 2 * kFloatBytes;
  return layout;
}

VmemLayout RangeLayout(const ValidatedBatch& batch, KernelKind kernel,
                       const RangeShape& range,
                       const DeviceBlockSizes& blocks) {
  return RangeLayout(
      batch.shape, batch.cache.storage, batch.cache.page_size_tokens,
      {.kernel = kernel, .max_q_len = range.max_q_len, .blocks = blocks});
}

VmemLayout MaxLayout(const VmemLayout& a, const VmemLayout& b) {
  VmemLayout m;
  m.q_slot_bytes = std::max(a.q_slot_bytes, b.q_slot_bytes);
  m.out_slot_bytes = std::max(a.out_slot_bytes, b.out_slot_bytes);
  m.kv_slot_bytes = std::max(a.kv_slot_bytes, b.kv_slot_bytes);
  m.stage_slot_bytes = std::max(a.stage_slot_bytes, b.stage_slot_bytes);
  m.scores_slot_bytes = std::max(a.scores_slot_bytes, b.scores_slot_bytes);
  m.pv_slot_bytes = std::max(a.pv_slot_bytes, b.pv_slot_bytes);
  m.acc_bytes = std::max(a.acc_bytes, b.acc_bytes);
  m.state_bytes = std::max(a.state_bytes, b.state_bytes);
  return m;
}

const DeviceBlockSizes& RequestedBlocks(const DeviceRunOptions& options,
                                        KernelKind kernel) {
  switch (kernel) {
    case KernelKind::kDecode:
      return options.decode_blocks;
    case KernelKind::kPrefill:
      return options.prefill_blocks;
    case KernelKind::kMixed:
      break;
  }
  return options.mixed_blocks;
}

// Halves `value` if it is > 1; false if it cannot shrink.
bool Halve(std::uint32_t* value) {
  if (*value <= 1) return false;
  *value /= 2;
  return true;
}

}  // namespace

VmemLayout ComputeVmemLayout(const ValidatedBatch& batch,
                             const DeviceBlockChoice& choice) {
  const std::array<RangeShape, kNumRanges> shapes = ShapeRanges(batch);
  VmemLayout layout;
  for (int r = 0; r < kNumRanges; ++r) {
    const auto i = static_cast<std::size_t>(r);
    if (!choice.used[i]) continue;
    layout = MaxLayout(layout, RangeLayout(batch, choice.kernels[i], shapes[i],
                                           choice.sizes[i]));
  }
  return layout;
}

}  // namespace rpa::attention::internal

namespace rpa::attention {

std::uint64_t DeviceVmemBytes(const BatchShape& shape,
                              memory::StorageType storage,
                              std::uint32_t page_size_tokens,
                              std::span<const DeviceRangeDemand> ranges) {
  internal::VmemLayout layout;
  for (const DeviceRangeDemand& range : ranges) {
    layout = internal::MaxLayout(
        layout, internal::RangeLayout(shape, storage, page_size_tokens, range));
  }
  return layout.total_bytes();
}

std::uint32_t DefaultDecodeQTokensPerBlock(std::uint32_t num_q_heads,
                                           std::uint32_t head_dim) {
  const std::uint64_t q_token_bytes =
      std::max<std::uint64_t>(1, std::uint64_t{num_q_heads} * head_dim) *
      internal::kFloatBytes;
  return static_cast<std::uint32_t>(
      std::max<std::uint64_t>(1, internal::kDecodeQBlockBytes / q_token_bytes));
}

DeviceBlockSizes DeviceBlocksFromTokens(std::uint32_t q_tokens,
                                        std::uint32_t kv_tokens,
                                        std::uint32_t compute_kv_tokens,
                                        std::uint32_t page_size_tokens) {
  return {.q_tokens_per_block = q_tokens,
          .kv_pages_per_block =
              std::max(1U, kv_tokens / std::max(1U, page_size_tokens)),
          .compute_kv_tokens = compute_kv_tokens};
}

}  // namespace rpa::attention

namespace rpa::attention::internal {

std::string DescribeBlocks(const DeviceBlockChoice& choice) {
  std::string text;
  for (std::size_t r = 0; r < kNumRanges; ++r) {
    if (!choice.used[r]) continue;
    if (!text.empty()) text += " + ";
    const DeviceBlockSizes& b = choice.sizes[r];
    text += fmt::format(
        "{} kernel blocks (q_tokens_per_block {}, kv_pages_per_block {}, "
        "compute_kv_tokens {})",
        KernelKindName(choice.kernels[r]), b.q_tokens_per_block,
        b.kv_pages_per_block, b.compute_kv_tokens);
  }
  return text;
}

StatusOr<DeviceBlockChoice> ChooseDeviceBlocks(const AttentionPlan& plan,
                                               const DeviceRunOptions& options,
                                               const device::DeviceSpec& spec) {
  const ValidatedBatch& batch = plan.data().batch;
  const std::array<RangeShape, kNumRanges> shapes = ShapeRanges(batch);
  DeviceBlockChoice choice;
  // Which fields may shrink (the caller left them 0).
  std::array<DeviceBlockSizes, kNumRanges> shrinkable{};
  for (int r = 0; r < kNumRanges; ++r) {
    const auto i = static_cast<std::size_t>(r);
    choice.kernels[i] = plan.kernel_for_range(r);
    choice.used[i] = shapes[i].num_sequences > 0;
    if (!choice.used[i]) continue;
    const DeviceBlockSizes& requested =
        RequestedBlocks(options, choice.kernels[i]);
    const DeviceBlockSizes defaults =
        DefaultBlocks(choice.kernels[i], shapes[i], batch, spec);
    DeviceBlockSizes& sizes = choice.sizes[i];
    const auto pick = [](std::uint32_t want, std::uint32_t fallback,
                         std::uint32_t* can_shrink) {
      *can_shrink = want == 0 ? 1 : 0;
      return want != 0 ? want : fallback;
    };
    sizes.q_tokens_per_block =
        pick(requested.q_tokens_per_block, defaults.q_tokens_per_block,
             &shrinkable[i].q_tokens_per_block);
    sizes.kv_pages_per_block =
        pick(requested.kv_pages_per_block, defaults.kv_pages_per_block,
             &shrinkable[i].kv_pages_per_block);
    sizes.compute_kv_tokens =
        pick(requested.compute_kv_tokens, defaults.compute_kv_tokens,
             &shrinkable[i].compute_kv_tokens);
    RPA_CHECK(sizes.q_tokens_per_block > 0 && sizes.kv_pages_per_block > 0 &&
              sizes.compute_kv_tokens > 0);
  }

  while (ComputeVmemLayout(batch, choice).total_bytes() > spec.vmem_bytes) {
    // The range whose buffers are largest shrinks one default-chosen field.
    int largest = -1;
    std::uint64_t largest_bytes = 0;
    for (int r = 0; r < kNumRanges; ++r) {
      const auto i = static_cast<std::size_t>(r);
      if (!choice.used[i]) continue;
      const DeviceBlockSizes& s = shrinkable[i];
      const DeviceBlockSizes& b = choice.sizes[i];
      const bool can_shrink =
          (s.kv_pages_per_block != 0 && b.kv_pages_per_block > 1) ||
          (s.q_tokens_per_block != 0 && b.q_tokens_per_block > 1) ||
          (s.compute_kv_tokens != 0 && b.compute_kv_tokens > 1);
      if (!can_shrink) continue;
      const std::uint64_t bytes =
          RangeLayout(batch, choice.kernels[i], shapes[i], b).total_bytes();
      if (largest < 0 || bytes > largest_bytes) {
        largest = r;
        largest_bytes = bytes;
      }
    }
    if (largest < 0) {
      return InvalidArgumentError(fmt::format(
          "the device's VMEM is too small for the schedule: {} need {} bytes "
          "of VMEM (double-buffered Q, KV, new-KV staging, output, scores "
          "and PV tiles, plus the accumulators), but device '{}' has "
          "vmem_bytes = {}",
          DescribeBlocks(choice),
          ComputeVmemLayout(batch, choice).total_bytes(), spec.name,
          spec.vmem_bytes));
    }
    const auto i = static_cast<std::size_t>(largest);
    DeviceBlockSizes& b = choice.sizes[i];
    const DeviceBlockSizes& s = shrinkable[i];
    if (!(s.kv_pages_per_block != 0 && Halve(&b.kv_pages_per_block)) &&
        !(s.q_tokens_per_block != 0 && Halve(&b.q_tokens_per_block))) {
      Halve(&b.compute_kv_tokens);
    }
  }
  // The sub-tile never exceeds the block.
  for (std::size_t i = 0; i < kNumRanges; ++i) {
    if (!choice.used[i]) continue;
    DeviceBlockSizes& b = choice.sizes[i];
    b.compute_kv_tokens =
        std::min(b.compute_kv_tokens,
                 b.kv_pages_per_block * batch.cache.page_size_tokens);
  }
  return choice;
}

}  // namespace rpa::attention::internal
