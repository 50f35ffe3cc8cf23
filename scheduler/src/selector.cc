#include "rpa/scheduler/selector.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <span>
#include <utility>

#include "rpa/runtime/int_math.h"

namespace rpa::scheduler {
namespace {

using attention::KernelKind;

// What one range of the distribution holds.
struct RangeShape {
  std::uint32_t num_sequences = 0;
  std::uint32_t max_q_len = 0;
  std::uint32_t max_kv_len = 0;
};

RangeShape DescribeRange(const attention::BatchMetadata& metadata, int range) {
  const auto r = static_cast<std::size_t>(range);
  const auto begin =
      static_cast<std::size_t>(range == 0 ? 0 : metadata.distribution[r - 1]);
  const auto end = static_cast<std::size_t>(metadata.distribution[r]);
  RangeShape shape;
  for (std::size_t i = begin; i < end; ++i) {
    const auto q_len = static_cast<std::uint32_t>(metadata.cu_q_lens[i + 1] -
                                                  metadata.cu_q_lens[i]);
    shape.max_q_len = std::max(shape.max_q_len, q_len);
    shape.max_kv_len = std::max(
        shape.max_kv_len, static_cast<std::uint32_t>(metadata.kv_lens[i]));
    ++shape.num_sequences;
  }
  return shape;
}

KernelKind KernelFor(int range, const RangeShape& shape) {
  if (range == 0) return KernelKind::kDecode;
  if (range == 1) return KernelKind::kPrefill;
  return shape.max_q_len == 1 ? KernelKind::kDecode : KernelKind::kMixed;
}

// The documented fallback rule (selector.h) for a device.
void DeviceFallback(KernelKind kernel, const TuningKey& key,
                    std::uint32_t num_kv_heads, KernelChoice* choice) {
  const std::uint32_t page = key.page_size;
  if (kernel == KernelKind::kDecode) {
    // The device default's rule (the Q and output DMAs of a block each pay
    // one issue latency).
    choice->q_tokens_per_block = attention::DefaultDecodeQTokensPerBlock(
        key.q_per_kv * num_kv_heads, key.head_dim);
    choice->kv_tokens_per_block = std::max(page, 1024 / page * page);
    choice->compute_kv_tokens =
        std::min<std::uint32_t>(512, choice->kv_tokens_per_block);
  } else {
    choice->q_tokens_per_block = std::min<std::uint32_t>(
        256, RoundUpToMultiple(std::max(key.max_q_len, 1U), 8U));
    choice->kv_tokens_per_block = std::max(page, 512 / page * page);
    choice->compute_kv_tokens =
        std::min<std::uint32_t>(256, choice->kv_tokens_per_block);
  }
}

attention::DeviceBlockSizes ToDeviceBlocks(const KernelChoice& choice,
                                           std::uint32_t page) {
  return attention::DeviceBlocksFromTokens(choice.q_tokens_per_block,
                                           choice.kv_tokens_per_block,
                                           choice.compute_kv_tokens, page);
}

attention::DeviceRangeDemand Demand(const KernelChoice& choice,
                                    std::uint32_t page) {
  return {.kernel = choice.kernel,
          .max_q_len =
              static_cast<std::int32_t>(std::max(choice.key.max_q_len, 1U)),
          .blocks = ToDeviceBlocks(choice, page)};
}

// One step smaller: kv (page multiples), else q, else the compute sub-tile.
// False when the choice is one page, one token and one key already.
bool Shrink(std::uint32_t page, KernelChoice* choice) {
  if (choice->kv_tokens_per_block > page) {
    choice->kv_tokens_per_block =
        std::max(page, choice->kv_tokens_per_block / 2 / page * page);
  } else if (choice->q_tokens_per_block > 1) {
    choice->q_tokens_per_block /= 2;
  } else if (choice->compute_kv_tokens > 1) {
    choice->compute_kv_tokens /= 2;
  } else {
    return false;
  }
  return true;
}

// RunOnDevice takes one set of blocks per kernel kind, so a mixed range that
// runs the decode kernel (all its q_lens 1) runs with range 0's decode
// blocks. The range that shares `choice`'s blocks that way, or null.
KernelChoice* SharesBlocksWith(std::array<KernelChoice, 3>* ranges,
                               const KernelChoice* choice) {
  KernelChoice& decode = (*ranges)[0];
  KernelChoice& mixed = (*ranges)[2];
  if (!decode.used || !mixed.used || mixed.kernel != decode.kernel) {
    return nullptr;
  }
  if (choice == &decode) return &mixed;
  if (choice == &mixed) return &decode;
  return nullptr;
}

void CopyBlocks(const KernelChoice& from, KernelChoice* to) {
  to->q_tokens_per_block = from.q_tokens_per_block;
  to->kv_tokens_per_block = from.kv_tokens_per_block;
  to->compute_kv_tokens = from.compute_kv_tokens;
}

// Shrinks the range whose own buffers are largest (or, once it is at its
// minimum, the next largest), one step at a time, until the buffers the used
// ranges share (attention::DeviceVmemBytes, the model RunOnDevice checks)
// fit; if nothing can shrink, RunOnDevice reports the shortfall.
void FitVmem(const attention::BatchShape& shape, memory::StorageType storage,
             std::uint32_t page, std::uint64_t vmem_bytes,
             std::array<KernelChoice, 3>* ranges) {
  for (;;) {
    std::array<attention::DeviceRangeDemand, 3> demands{};
    // The used ranges and the VMEM each needs alone.
    std::array<std::pair<std::uint64_t, KernelChoice*>, 3> by_need{};
    std::size_t num_used = 0;
    for (KernelChoice& choice : *ranges) {
      if (!choice.used) continue;
      choice.compute_kv_tokens =
          std::min(choice.compute_kv_tokens, choice.kv_tokens_per_block);
      demands[num_used] = Demand(choice, page);
      by_need[num_used] = {
          attention::DeviceVmemBytes(shape, storage, page,
                                     std::span(&demands[num_used], 1)),
          &choice};
      ++num_used;
    }
    if (attention::DeviceVmemBytes(shape, storage, page,
                                   std::span(demands.data(), num_used)) <=
        vmem_bytes) {
      return;
    }
    // The neediest range that can still shrink does (a range already at its
    // minimum leaves it to the next one).
    std::array<bool, 3> tried{};
    bool shrunk = false;
    for (std::size_t attempt = 0; attempt < num_used && !shrunk; ++attempt) {
      std::size_t pick = num_used;
      for (std::size_t i = 0; i < num_used; ++i) {
        if (!tried[i] &&
            (pick == num_used || by_need[i].first > by_need[pick].first)) {
          pick = i;
        }
      }
      tried[pick] = true;
      KernelChoice* choice = by_need[pick].second;
      shrunk = Shrink(page, choice);
      if (KernelChoice* twin = SharesBlocksWith(ranges, choice);
          shrunk && twin != nullptr) {
        CopyBlocks(*choice, twin);
      }
    }
    if (!shrunk) return;  // every range is at its minimum
  }
}

}  // namespace

KernelSelector::KernelSelector(std::string target,
                               std::optional<device::DeviceSpec> device,
                               TuningTable table)
    : target_(std::move(target)),
      device_(std::move(device)),
      table_(std::move(table)) {}

StatusOr<KernelSelector> KernelSelector::Create(std::string_view target) {
  std::optional<device::DeviceSpec> spec;
  std::string name(target);
  if (target != "host") {
    RPA_ASSIGN_OR_RETURN(device::DeviceSpec resolved,
                         device::ResolveDeviceSpec(target));
    name = resolved.name;
    spec = std::move(resolved);
  }
  TuningTable table = TuningTable::Shipped(name);
  return KernelSelector(std::move(name), std::move(spec), std::move(table));
}

StatusOr<KernelSelector> KernelSelector::Create(std::string_view target,
                                                TuningTable table) {
  RPA_ASSIGN_OR_RETURN(KernelSelector selector, Create(target));
  if (table.target() != selector.target_) {
    return InvalidArgumentError("tuning table target \"" + table.target() +
                                "\" does not match the target \"" +
                                selector.target_ + "\"");
  }
  selector.table_ = std::move(table);
  return selector;
}

Selection KernelSelector::Select(const attention::BatchMetadata& metadata,
                                 const memory::KvLayerView& cache,
                                 int parallelism) const {
  Selection selection;
  selection.plan_options.parallelism = std::max(parallelism, 1);
  const attention::BatchShape& shape = metadata.shape;
  const std::uint32_t page = std::max(cache.page_size_tokens, 1U);
  // Kernels and block sizes per range, from the table or the fallback rule.
  for (int range = 0; range < 3; ++range) {
    KernelChoice& choice = selection.ranges[static_cast<std::size_t>(range)];
    const RangeShape described = DescribeRange(metadata, range);
    choice.kernel = KernelFor(range, described);
    choice.used = described.num_sequences > 0;
    choice.key = {.storage = cache.storage,
                  .head_dim = shape.head_dim,
                  .q_per_kv = shape.num_kv_heads == 0
                                  ? 0
                                  : shape.num_q_heads / shape.num_kv_heads,
                  .page_size = cache.page_size_tokens,
                  .max_q_len = described.max_q_len,
                  .max_kv_len = described.max_kv_len};
    if (!choice.used) continue;
    if (const TuningEntry* entry = table_.Find(choice.kernel, choice.key)) {
      choice.from_table = true;
      choice.q_tokens_per_block = entry->q_tokens_per_block;
      choice.kv_tokens_per_block = entry->kv_tokens_per_block;
      choice.compute_kv_tokens = entry->compute_kv_tokens;
    } else if (device_.has_value()) {
      DeviceFallback(choice.kernel, choice.key, shape.num_kv_heads, &choice);
    }
    if (device_.has_value()) {
      choice.kv_tokens_per_block =
          std::max(page, choice.kv_tokens_per_block / page * page);
      // A Q block never holds more than the range has: decode blocks hold
      // sequences, flash blocks query tokens of one sequence (8-row steps).
      const std::uint32_t q_limit =
          choice.kernel == KernelKind::kDecode
              ? described.num_sequences
              : RoundUpToMultiple(std::max(described.max_q_len, 1U), 8U);
      choice.q_tokens_per_block =
          std::clamp(choice.q_tokens_per_block, 1U, q_limit);
      if (choice.compute_kv_tokens == 0) {
        choice.compute_kv_tokens = choice.kv_tokens_per_block;
      }
    }
  }
  // On a device the ranges share VMEM buffers: fit them together.
  if (device_.has_value()) {
    // Range 0's blocks (the decode range proper) for a range sharing them;
    // FitVmem shrinks the two together.
    const KernelChoice& decode = selection.ranges[0];
    if (KernelChoice* twin = SharesBlocksWith(&selection.ranges, &decode)) {
      CopyBlocks(decode, twin);
      twin->from_table = decode.from_table;
    }
    FitVmem(shape, cache.storage, page, device_->vmem_bytes, &selection.ranges);
  }
  for (int range = 0; range < 3; ++range) {
    const KernelChoice& choice =
        selection.ranges[static_cast<std::size_t>(range)];
    switch (range) {
      case 0:
        selection.plan_options.decode_range_kernel = choice.kernel;
        break;
      case 1:
        selection.plan_options.prefill_range_kernel = choice.kernel;
        break;
      default:
        selection.plan_options.mixed_range_kernel = choice.kernel;
        break;
    }
    if (!choice.used) continue;
    const attention::BlockSizes host_blocks{
        .q_tokens_per_block = choice.q_tokens_per_block,
        .kv_tokens_per_block = choice.kv_tokens_per_block};
    if (device_.has_value()) {
      const attention::DeviceBlockSizes blocks = ToDeviceBlocks(choice, page);
      switch (choice.kernel) {
        case KernelKind::kDecode:
          selection.device_options.decode_blocks = blocks;
          break;
        case KernelKind::kPrefill:
          selection.device_options.prefill_blocks = blocks;
          break;
        case KernelKind::kMixed:
          selection.device_options.mixed_blocks = blocks;
          break;
      }
    } else if (choice.kernel == KernelKind::kPrefill) {
      selection.plan_options.prefill_blocks = host_blocks;
    } else if (choice.kernel == KernelKind::kMixed) {
      selection.plan_options.mixed_blocks = host_blocks;
    } else if (choice.from_table) {
      // The host decode kernel's only knob: keys per KV split.
      selection.plan_options.decode_min_kv_tokens_per_split =
          choice.kv_tokens_per_block;
    }
  }
  return selection;
}

}  // namespace rpa::scheduler
