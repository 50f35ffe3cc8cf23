#include "rpa/attention/plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <span>
#include <utility>
#include <vector>

#if defined(RPA_ATTENTION_AVX2)
#include <cpuid.h>
#endif

#include "building_blocks.h"
#include "kernels.h"
#include "plan_data.h"
#include "tensor_check.h"
#include "validate.h"

#include "rpa/attention/storage_convert.h"
#include "rpa/runtime/executor.h"

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

const BlockSizes& BlocksFor(const PlanData& data, KernelKind kind) {
  return kind == KernelKind::kPrefill ? data.options.prefill_blocks
                                      : data.options.mixed_blocks;
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
      (target + items->size() - 1) / items->size();

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
      std::int32_t chunk = (length + static_cast<std::int32_t>(wanted) - 1) /
                           static_cast<std::int32_t>(wanted);
      chunk = std::max(min_chunk, (chunk + ps - 1) / ps * ps);
      for (std::int32_t cut = item.kv_begin / ps * ps + chunk;
           cut < item.kv_end; cut += chunk) {
        if (cut > item.kv_begin) cuts.push_back(cut);
      }
    }
    cuts.push_back(item.kv_end);
    const auto num_pieces = static_cast<std::int32_t>(cuts.size() - 1);
    // Head groups for what the KV split could not provide.
    const std::size_t wanted_head_groups = std::min<std::size_t>(
        item.num_kv_heads,
        (max_splits_per_item + static_cast<std::size_t>(num_pieces) - 1) /
            static_cast<std::size_t>(num_pieces));
    const std::uint32_t heads_per_group = static_cast<std::uint32_t>(
        (item.num_kv_heads + wanted_head_groups - 1) / wanted_head_groups);
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
      AddFlashItems(batch, i, BlocksFor(*data, kind).q_tokens_per_block,
                    &data->items);
    }
  }
  SplitDecodeItems(batch, options, data);
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

namespace internal {

Status CheckTensors(const ValidatedBatch& batch, const BatchTensors& tensors) {
  const BatchShape& shape = batch.shape;
  const std::size_t tokens = shape.num_tokens;
  const std::size_t q_size =
      tokens * shape.num_q_heads * static_cast<std::size_t>(shape.head_dim);
  const std::size_t kv_size =
      tokens * shape.num_kv_heads * static_cast<std::size_t>(shape.head_dim);
  const std::size_t out_size = static_cast<std::size_t>(batch.num_used_tokens) *
                               shape.num_q_heads * shape.head_dim;
  const auto check_size = [](std::string_view name, std::size_t got,
                             std::size_t want, const void* data) -> Status {
    if (got != want) {
      return InvalidArgumentError(
          fmt::format("{}.size() = {}, the plan needs {}", name, got, want));
    }
    if (got != 0 && data == nullptr) {
      return InvalidArgumentError(fmt::format("{} has null data", name));
    }
    return OkStatus();
  };
  RPA_RETURN_IF_ERROR(
      check_size("q", tensors.q.size(), q_size, tensors.q.data()));
  RPA_RETURN_IF_ERROR(
      check_size("k", tensors.k.size(), kv_size, tensors.k.data()));
  RPA_RETURN_IF_ERROR(
      check_size("v", tensors.v.size(), kv_size, tensors.v.data()));
  RPA_RETURN_IF_ERROR(
      check_size("out", tensors.out.size(), out_size, tensors.out.data()));

  const memory::KvLayerView& cache = tensors.cache;
  const internal::CacheGeometry& planned = batch.cache;
  if (cache.data == nullptr) {
    return InvalidArgumentError("cache.data is null");
  }
  const auto check_field = [](std::string_view name, std::size_t got,
                              std::size_t want) -> Status {
    if (got != want) {
      return InvalidArgumentError(fmt::format(
          "cache.{} = {}, but the plan was made for {}", name, got, want));
    }
    return OkStatus();
  };
  RPA_RETURN_IF_ERROR(
      check_field("num_pages", cache.num_pages, planned.num_pages));
  RPA_RETURN_IF_ERROR(check_field("page_size_tokens", cache.page_size_tokens,
                                  planned.page_size_tokens));
  RPA_RETURN_IF_ERROR(check_field("num_combined_heads",
                                  cache.num_combined_heads,
                                  planned.num_combined_heads));
  RPA_RETURN_IF_ERROR(
      check_field("head_dim", cache.head_dim, planned.head_dim));
  if (cache.storage != planned.storage) {
    return InvalidArgumentError(
        fmt::format("cache.storage = {}, but the plan was made for {}",
                    memory::StorageTypeName(cache.storage),
                    memory::StorageTypeName(planned.storage)));
  }
  // The kernels address rows with token_bytes: a view whose strides do not
  // match its geometry would send them outside the buffer.
  const std::size_t token_bytes =
      static_cast<std::size_t>(planned.num_combined_heads) * planned.head_dim *
      memory::StorageBytes(planned.storage);
  RPA_RETURN_IF_ERROR(
      check_field("token_bytes", cache.token_bytes, token_bytes));
  RPA_RETURN_IF_ERROR(check_field("page_bytes", cache.page_bytes,
                                  token_bytes * planned.page_size_tokens));
  return OkStatus();
}

}  // namespace internal

namespace {

// SPEC 2 step 1: the new tokens' K/V of sequence `sequence`, converted to the
// cache type, into positions [gap, kv_len).
void WriteSequenceKv(const ValidatedBatch& batch, const BatchTensors& tensors,
                     std::uint32_t sequence) {
  const SequenceSpan& span = batch.sequences[sequence];
  const std::uint32_t heads = batch.shape.num_kv_heads;
  const std::size_t dim = batch.shape.head_dim;
  const std::size_t row_bytes = dim * memory::StorageBytes(batch.cache.storage);
  const std::int32_t gap = span.kv_len - span.q_len;
  const std::int32_t* pages = batch.page_indices.data() + span.page_row;
  for (std::int32_t a = 0; a < span.q_len; ++a) {
    const std::size_t token = static_cast<std::size_t>(span.q_begin + a);
    std::byte* slot = const_cast<std::byte*>(internal::KvRowAddress(
        tensors.cache, pages, gap + a, /*kv_head=*/0, /*value=*/false));
    for (std::uint32_t h = 0; h < heads; ++h) {
      const std::size_t row = (token * heads + h) * dim;
      ConvertToStorage(tensors.k.subspan(row, dim), batch.cache.storage,
                       slot + 2 * h * row_bytes);
      ConvertToStorage(tensors.v.subspan(row, dim), batch.cache.storage,
                       slot + (2 * h + 1) * row_bytes);
    }
  }
}

// Runs fn(index) for index in [0, count) on min(workers, count) tasks of
// `executor` that pull indices from a shared counter, and joins them. The
// caller may be a fiber of the executor (Join suspends it, or runs a task
// that has not started inline) or any other thread (Join blocks).
template <typename Fn>
Status ParallelFor(runtime::Executor* executor, std::size_t count,
                   const Fn& fn) {
  const std::size_t tasks = std::min(
      count, static_cast<std::size_t>(std::max(executor->num_workers(), 1)));
  std::atomic<std::size_t> next{0};
  // Relaxed suffices: the counter only hands out distinct indices; Spawn and
  // Join order everything else.
  const auto body = [&next, count, &fn] {
    for (std::size_t i = next.fetch_add(1, std::memory_order_relaxed);
         i < count; i = next.fetch_add(1, std::memory_order_relaxed)) {
      fn(i);
    }
  };
  // The handles live on the stack up to kInlineTasks workers (no
  // allocation per call), in a vector beyond.
  constexpr std::size_t kInlineTasks = 64;
  std::array<runtime::JoinHandle<void>, kInlineTasks> inline_handles;
  std::vector<runtime::JoinHandle<void>> heap_handles;
  std::span<runtime::JoinHandle<void>> handles(inline_handles.data(),
                                               std::min(tasks, kInlineTasks));
  if (tasks > kInlineTasks) {
    heap_handles.resize(tasks);
    handles = heap_handles;
  }
  for (auto& handle : handles) handle = executor->Spawn(body);
  Status result;
  for (auto& handle : handles) {
    Status status = handle.Join();
    if (!status.ok() && result.ok()) result = std::move(status);
  }
  return result;
}

}  // namespace

Status Run(const AttentionPlan& plan, const BatchTensors& tensors,
           runtime::Executor* executor) {
  const PlanData& data = plan.data();
  const ValidatedBatch& batch = data.batch;
  RPA_RETURN_IF_ERROR(internal::CheckTensors(batch, tensors));
  const bool parallel = executor != nullptr && executor->num_workers() > 0;
  const auto num_sequences = static_cast<std::uint32_t>(batch.sequences.size());

  // (1) The cache update, complete before any item reads the cache: an item
  // reads its sequence's new keys, and (with shared pages) possibly slots
  // another sequence writes.
  if (parallel && num_sequences > 1) {
    RPA_RETURN_IF_ERROR(
        ParallelFor(executor, num_sequences, [&](std::size_t i) {
          WriteSequenceKv(batch, tensors, static_cast<std::uint32_t>(i));
        }));
  } else {
    for (std::uint32_t i = 0; i < num_sequences; ++i) {
      WriteSequenceKv(batch, tensors, i);
    }
  }

  // (2) The work items, largest first.
  // Partial slots: the plan's buffer when no other Run of this plan holds
  // it, else a buffer of this call's own (see plan.h, Thread-safety).
  const std::size_t partial_floats =
      static_cast<std::size_t>(data.num_partials) *
      internal::PartialSlotFloats(batch);
  std::vector<float> own_partials;
  std::vector<float>* partials = &own_partials;
  bool holds_scratch = false;
  if (partial_floats != 0) {
    // Acquire pairs with the release below: the previous holder's writes to
    // run_partials happen-before ours.
    holds_scratch =
        !data.run_scratch_busy.exchange(true, std::memory_order_acquire);
    if (holds_scratch) partials = &data.run_partials;
    partials->assign(partial_floats, 0.0F);
  }
  const auto release_scratch = [&data, holds_scratch] {
    if (holds_scratch) {
      data.run_scratch_busy.store(false, std::memory_order_release);
    }
  };
  internal::KernelArgs args;
  args.batch = &batch;
  args.q = tensors.q.data();
  args.cache = tensors.cache;
  args.out = tensors.out.data();
  args.partials = partials->data();
  const auto run_item = [&](std::size_t index) {
    const WorkItem& item = data.items[index];
    if (item.kernel == KernelKind::kDecode) {
      internal::RunDecodeItem(args, item);
    } else {
      internal::RunFlashItem(args, item, BlocksFor(data, item.kernel));
    }
  };
  if (parallel && data.items.size() > 1) {
    // On failure the scratch stays taken: a join that failed (a virtual-time
    // deadlock) may leave items that still write to it; later Runs of the
    // plan then use buffers of their own.
    RPA_RETURN_IF_ERROR(ParallelFor(executor, data.items.size(), run_item));
  } else {
    for (std::size_t i = 0; i < data.items.size(); ++i) run_item(i);
  }

  // (3) Merges of split decode items (few: splitting only happens when the
  // batch has few items).
  for (const PlanData::MergeGroup& group : data.merges) {
    internal::MergePartials(args, group);
  }
  release_scratch();
  return OkStatus();
}

Status Attend(const BatchMetadata& metadata, const BatchTensors& tensors,
              const AttentionParams& params, const PlanOptions& options,
              runtime::Executor* executor) {
  RPA_ASSIGN_OR_RETURN(
      AttentionPlan plan,
      AttentionPlan::Create(metadata, tensors.cache, params, options));
  return Run(plan, tensors, executor);
}

}  // namespace rpa::attention
