// Run and Attend: check the tensors against the plan, write the new tokens'
// K/V into the cache (SPEC 2 step 1), then run the plan's work items (on the
// calling thread or spread over an executor) and merge split decode
// sequences. Planning itself is in plan.cc.

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "building_blocks.h"
#include "kernels.h"
#include "plan_data.h"
#include "tensor_check.h"

#include "rpa/attention/plan.h"
#include "rpa/attention/storage_convert.h"
#include "rpa/runtime/executor.h"

namespace rpa::attention {

using internal::PlanData;
using internal::SequenceSpan;
using internal::ValidatedBatch;
using internal::WorkItem;

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
  args.decode_avx512 = data.decode_avx512_allowed;
  const auto run_item = [&](std::size_t index) {
    const WorkItem& item = data.items[index];
    if (item.kernel == KernelKind::kDecode) {
      internal::RunDecodeItem(args, item);
    } else {
      internal::RunFlashItem(args, item, data.flash_blocks(item.kernel));
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
