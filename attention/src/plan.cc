// AttentionPlan: Create and Update validate a batch (validate.cc) and plan
// it: the work items of each range's kernel, the splits of long decode
// sequences over the threads, and the SPEC section 7 costs. Run is in run.cc.

#include "rpa/attention/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#if defined(RPA_ATTENTION_AVX2)
#include <cpuid.h>
#endif

#include "building_blocks.h"
#include "kernels.h"
#include "plan_data.h"
#include "validate.h"

#include "rpa/runtime/int_math.h"

namespace rpa::attention {

using internal::PlanData;
using internal::SequenceSpan;
using internal::ValidatedBatch;
using internal::WorkItem;

std::string_view KernelKindName(KernelKind kind) {
  switch (kind) {
    case KernelKind::kDecode:
      return "decode";
    case KernelKind::kPrefill:
      return "prefill";
    case KernelKind::kMixed:
      return "mixed";
  }
  return "unknown";
}

namespace {

// Keys per decode split unless the options say otherwise: long enough that
// the merge (group x D floats per split) and the per-task overhead are noise
// next to streaming the split's K/V (512 keys x 2 x D x 2 bytes = 256 KiB at
// D 128, f16).
constexpr std::uint32_t kDefaultDecodeMinKvTokensPerSplit = 512;
// Splitting pays off until there are this many items per thread: enough for
// the largest-first order to balance the tail.
constexpr std::size_t kItemsPerThreadTarget = 4;

#if defined(RPA_ATTENTION_AVX2)
// F16C is CPUID leaf 1, ECX bit 29 (clang's __builtin_cpu_supports does not
// know "f16c"; the OS-saves-YMM part is covered by the "avx2" check).
bool CpuHasF16c() {
  unsigned int eax = 0;
  unsigned int ebx = 0;
  unsigned int ecx = 0;
  unsigned int edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return false;
  return (ecx & (1U << 29)) != 0;
}
#endif

Status CheckCpu() {
#if defined(RPA_ATTENTION_AVX2)
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") ||
      !CpuHasF16c()) {
    return UnavailableError(
        "this CPU lacks AVX2, FMA or F16C, which the attention kernels were "
        "built for; rebuild rpa with -DRPA_PORTABLE=ON");
  }
#endif
  return OkStatus();
}

// Options' block sizes, field by field, over the host default.
BlockSizes ResolveBlocks(const BlockSizes& requested, KernelKind kind,
                         const ValidatedBatch& batch) {
  const BlockSizes defaults = internal::DefaultBlockSizes(kind, batch);
  return {requested.q_tokens_per_block != 0 ? requested.q_tokens_per_block
                                            : defaults.q_tokens_per_block,
          requested.kv_tokens_per_block != 0 ? requested.kv_tokens_per_block
                                             : defaults.kv_tokens_per_block};
}

double Flops(const ValidatedBatch& batch, std::uint64_t visible_pairs) {
  return 4.0 * batch.group_size * batch.shape.head_dim *
         static_cast<double>(visible_pairs);
}

// Decode items: one per sequence, covering every kv head, so that the
// kernel streams each page's tokens whole (a token holds the K and V rows of
// all kv heads next to each other: 4 KiB at Hkv 8, D 128, f16), later maybe
// split along KV or across heads.
void AddDecodeItems(const ValidatedBatch& batch, std::uint32_t sequence,
                    std::vector<WorkItem>* items) {
  const SequenceSpan& span = batch.sequences[sequence];
  const internal::KeyRange keys =
      internal::VisibleKeys(span.kv_len - 1, span.kv_len, batch.params);
  WorkItem item;
  item.sequence = sequence;
  item.kv_head = 0;
  item.num_kv_heads = batch.shape.num_kv_heads;
  item.q_begin = 0;
  item.q_end = 1;
  item.kv_begin = keys.begin;
  item.kv_end = keys.end;
  item.kernel = span.kernel;
  item.cost_flops =
      Flops(batch, static_cast<std::uint64_t>(keys.end - keys.begin)) *
      item.num_kv_heads;
  items->push_back(item);
}

// Flash items: (sequence, kv head, block of query rows), the KV range the
// union of the block's visible keys. Never split along KV.
void AddFlashItems(const ValidatedBatch& batch, std::uint32_t sequence,
                   std::uint32_t q_tokens_per_block,
                   std::vector<WorkItem>* items) {
  const SequenceSpan& span = batch.sequences[sequence];
  const std::int32_t gap = span.kv_len - span.q_len;
  const auto block =
      static_cast<std::int32_t>(std::max(1U, q_tokens_per_block));
  for (std::int32_t q_begin = 0; q_begin < span.q_len; q_begin += block) {
    const std::int32_t q_end = std::min(span.q_len, q_begin + block);
    std::uint64_t visible_pairs = 0;
    for (std::int32_t a = q_begin; a < q_end; ++a) {
      const internal::KeyRange keys =
          internal::VisibleKeys(gap + a, span.kv_len, batch.params);
      visible_pairs += static_cast<std::uint64_t>(keys.end - keys.begin);
    }
    const internal::KeyRange first =
        internal::VisibleKeys(gap + q_begin, span.kv_len, batch.params);
    const internal::KeyRange last =
        internal::VisibleKeys(gap + q_end - 1, span.kv_len, batch.params);
    for (std::uint32_t head = 0; head < batch.shape.num_kv_heads; ++head) {
      WorkItem item;
      item.sequence = sequence;
      item.kv_head = head;
      item.q_begin = q_begin;
      item.q_end = q_end;
      item.kv_begin = first.begin;
      item.kv_end = last.end;
      item.kernel = span.kernel;
      item.cost_flops = Flops(batch, visible_pairs);
      items->push_back(item);
    }
  }
}

// Splits decode items when there are too few items to keep `parallelism`
// threads busy: first along KV at page boundaries (pieces of at least the
// minimum length; every piece still streams whole tokens), then, if that is
// not enough (short sequences), across kv heads. Each KV piece writes one
// partial slot per kv head, and a merge group per (sequence, kv head)
// combines its pieces. Slots of a split sequence with C pieces are laid out
// head-major: head h, piece j -> first + h * C + j.
// Reads data->items, writes the result through data->split_items (swapped
// in), so that a re-plan reuses both vectors' capacity.
void SplitDecodeItems(const ValidatedBatch& batch, const PlanOptions& options,
                      PlanData* data) {
  std::vector<WorkItem>* items = &data->items;
  const std::size_t target =
      kItemsPerThreadTarget * static_cast<std::size_t>(options.parallelism);
  if (options.parallelism <= 1 || items->empty() || items->size() >= target) {
    return;
  }
  const auto ps = static_cast<std::int32_t>(batch.cache.page_size_tokens);
  const std::uint32_t min_split_tokens =
      options.decode_min_kv_tokens_per_split != 0
          ? options.decode_min_kv_tokens_per_split
          : kDefaultDecodeMinKvTokensPerSplit;
  // Pieces are whole pages: a split never shares a page with its neighbour.
  const std::int32_t min_chunk =
      std::max(ps, static_cast<std::int32_t>(
                       (min_split_tokens + static_cast<std::uint32_t>(ps) - 1) /
                       static_cast<std::uint32_t>(ps)) *
                       ps);
  const std::size_t max_splits_per_item =
      DivideRoundUp<std::size_t>(target, items->size());

  std::vector<WorkItem>& result = data->split_items;
  result.clear();
  result.reserve(items->size() * max_splits_per_item);
  for (const WorkItem& item : *items) {
    if (item.kernel != KernelKind::kDecode) {
      result.push_back(item);
      continue;
    }
    const std::int32_t length = item.kv_end - item.kv_begin;
    const std::size_t wanted = std::min(
        max_splits_per_item, static_cast<std::size_t>(length / min_chunk));
    // Cuts at page-aligned absolute positions.
    std::vector<std::int32_t>& cuts = data->split_cuts;
    cuts.clear();
    cuts.push_back(item.kv_begin);
    if (wanted >= 2) {
      std::int32_t chunk =
          DivideRoundUp(length, static_cast<std::int32_t>(wanted));
      chunk = std::max(min_chunk, RoundUpToMultiple(chunk, ps));
      for (std::int32_t cut = item.kv_begin / ps * ps + chunk;
           cut < item.kv_end; cut += chunk) {
        if (cut > item.kv_begin) cuts.push_back(cut);
      }
    }
    cuts.push_back(item.kv_end);
    const auto num_pieces = static_cast<std::int32_t>(cuts.size() - 1);
    // Head groups for what the KV split could not provide.
    const std::size_t wanted_head_groups = std::min<std::size_t>(
        item.num_kv_heads, DivideRoundUp(max_splits_per_item,
                                         static_cast<std::size_t>(num_pieces)));
    const std::uint32_t heads_per_group = static_cast<std::uint32_t>(
        DivideRoundUp<std::size_t>(item.num_kv_heads, wanted_head_groups));
    std::int32_t first_partial = -1;
    if (num_pieces > 1) {
      first_partial = data->num_partials;
      data->num_partials +=
          num_pieces * static_cast<std::int32_t>(item.num_kv_heads);
      for (std::uint32_t h = 0; h < item.num_kv_heads; ++h) {
        PlanData::MergeGroup group;
        group.sequence = item.sequence;
        group.kv_head = item.kv_head + h;
        group.first_partial =
            first_partial + static_cast<std::int32_t>(h) * num_pieces;
        group.num_partials = num_pieces;
        data->merges.push_back(group);
      }
    }
    for (std::int32_t j = 0; j < num_pieces; ++j) {
      for (std::uint32_t h = 0; h < item.num_kv_heads; h += heads_per_group) {
        WorkItem piece = item;
        piece.kv_begin = cuts[static_cast<std::size_t>(j)];
        piece.kv_end = cuts[static_cast<std::size_t>(j) + 1];
        piece.kv_head = item.kv_head + h;
        piece.num_kv_heads = std::min(heads_per_group, item.num_kv_heads - h);
        if (num_pieces > 1) {
          piece.partial =
              first_partial + static_cast<std::int32_t>(h) * num_pieces + j;
          piece.partial_head_stride = num_pieces;
        }
        piece.cost_flops =
            Flops(batch,
                  static_cast<std::uint64_t>(piece.kv_end - piece.kv_begin)) *
            piece.num_kv_heads;
        result.push_back(piece);
      }
    }
  }
  items->swap(result);
}

// Plans data->batch (validated) into `data`, reusing its vectors. Cannot
// fail: everything that can was checked by ValidateBatch.
void PlanInto(const PlanOptions& options, PlanData* data) {
  const ValidatedBatch& batch = data->batch;
  data->options = options;
  data->options.prefill_blocks =
      ResolveBlocks(options.prefill_blocks, KernelKind::kPrefill, batch);
  data->options.mixed_blocks =
      ResolveBlocks(options.mixed_blocks, KernelKind::kMixed, batch);
  data->items.clear();
  data->merges.clear();
  data->num_partials = 0;
  for (std::uint32_t i = 0; i < batch.sequences.size(); ++i) {
    const KernelKind kind = batch.sequences[i].kernel;
    if (kind == KernelKind::kDecode) {
      AddDecodeItems(batch, i, &data->items);
    } else {
      AddFlashItems(batch, i, data->flash_blocks(kind).q_tokens_per_block,
                    &data->items);
    }
  }
  SplitDecodeItems(batch, options, data);
  data->decode_avx512_allowed =
      options.allow_avx512_decode && internal::CpuRunsAvx512Decode();
  bool any_decode = false;
  bool all_avx512 = data->decode_avx512_allowed;
  for (const WorkItem& item : data->items) {
    if (item.kernel != KernelKind::kDecode) continue;
    any_decode = true;
    all_avx512 =
        all_avx512 && internal::Avx512DecodeSupports(batch, item.num_kv_heads);
  }
  data->decode_avx512 = any_decode && all_avx512;
  // Largest first, so that the last items to start are the short ones and
  // the threads finish together; equal items keep creation (sequence)
  // order. std::sort with the order tie-break, not std::stable_sort, whose
  // temporary buffer would allocate on every plan.
  for (std::size_t i = 0; i < data->items.size(); ++i) {
    data->items[i].order = static_cast<std::uint32_t>(i);
  }
  std::sort(data->items.begin(), data->items.end(),
            [](const WorkItem& a, const WorkItem& b) {
              return a.cost_flops != b.cost_flops ? a.cost_flops > b.cost_flops
                                                  : a.order < b.order;
            });
}

// Everything Create and Update check before they change anything, into
// `scratch` (a plan's next_batch: its vectors keep their capacity).
Status Validate(const BatchMetadata& metadata, const memory::KvLayerView& cache,
                const AttentionParams& params, const PlanOptions& options,
                ValidatedBatch* scratch) {
  RPA_RETURN_IF_ERROR(CheckCpu());
  if (options.parallelism < 1) {
    return InvalidArgumentError(fmt::format(
        "options.parallelism must be >= 1, got {}", options.parallelism));
  }
  return internal::ValidateBatchInto(metadata, cache, params, options, scratch);
}

}  // namespace

AttentionPlan::AttentionPlan(std::unique_ptr<PlanData> data)
    : data_(std::move(data)) {}
AttentionPlan::AttentionPlan(AttentionPlan&&) noexcept = default;
AttentionPlan& AttentionPlan::operator=(AttentionPlan&&) noexcept = default;
AttentionPlan::~AttentionPlan() = default;

const BatchShape& AttentionPlan::shape() const { return data_->batch.shape; }
std::uint32_t AttentionPlan::num_sequences() const {
  return static_cast<std::uint32_t>(data_->batch.sequences.size());
}
std::uint32_t AttentionPlan::num_used_tokens() const {
  return static_cast<std::uint32_t>(data_->batch.num_used_tokens);
}
KernelKind AttentionPlan::kernel_for_range(int range) const {
  RPA_CHECK(range >= 0 && range < 3);
  switch (range) {
    case 0:
      return data_->options.decode_range_kernel;
    case 1:
      return data_->options.prefill_range_kernel;
    default:
      return data_->options.mixed_range_kernel;
  }
}
std::uint32_t AttentionPlan::num_work_items() const {
  return static_cast<std::uint32_t>(data_->items.size());
}
bool AttentionPlan::decode_uses_avx512() const { return data_->decode_avx512; }
const BatchCost& AttentionPlan::cost() const { return data_->batch.cost; }
const BatchCost& AttentionPlan::range_cost(int range) const {
  RPA_CHECK(range >= 0 && range < 3);
  return data_->batch.range_cost[static_cast<std::size_t>(range)];
}

StatusOr<AttentionPlan> AttentionPlan::Create(const BatchMetadata& metadata,
                                              const memory::KvLayerView& cache,
                                              const AttentionParams& params,
                                              const PlanOptions& options) {
  auto data = std::make_unique<PlanData>();
  RPA_RETURN_IF_ERROR(Validate(metadata, cache, params, options, &data->batch));
  PlanInto(options, data.get());
  return AttentionPlan(std::move(data));
}

Status AttentionPlan::Update(const BatchMetadata& metadata,
                             const memory::KvLayerView& cache,
                             const AttentionParams& params,
                             const PlanOptions& options) {
  RPA_CHECK_MSG(data_ != nullptr, "Update on a moved-from AttentionPlan");
  // Validate into the plan's scratch batch: a failure returns with the plan
  // itself untouched (next_batch is scratch, not part of its meaning).
  RPA_RETURN_IF_ERROR(
      Validate(metadata, cache, params, options, &data_->next_batch));
  std::swap(data_->batch, data_->next_batch);
  PlanInto(options, data_.get());
  return OkStatus();
}

void AttentionPlan::Reserve(std::size_t num_sequences,
                            std::size_t page_table_entries) {
  RPA_CHECK_MSG(data_ != nullptr, "Reserve on a moved-from AttentionPlan");
  data_->batch.page_indices.reserve(page_table_entries);
  data_->batch.sequences.reserve(num_sequences);
  data_->next_batch.page_indices.reserve(page_table_entries);
  data_->next_batch.sequences.reserve(num_sequences);
}

}  // namespace rpa::attention
