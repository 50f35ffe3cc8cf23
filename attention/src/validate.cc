// ValidateBatch: SPEC section 3, checked in an order that makes every later
// check safe (sizes before indexing, indices before page lookups), with all
// arithmetic on the caller's int32 / uint32 values done in 64 bits. The cost
// of each sequence is computed in validate_cost.cc.

#include "validate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "rpa/runtime/int_math.h"

namespace rpa::attention::internal {
namespace {

using memory::StorageBytes;

constexpr std::int64_t kInt32Max = std::numeric_limits<std::int32_t>::max();
// No tensor of a real batch comes near this (x86-64 user space is 2^47
// bytes); a larger shape is a corrupt one, and the bound keeps every byte
// count below in 64 bits.
constexpr std::uint64_t kMaxTensorBytes = std::uint64_t{1} << 48;

Status Invalid(std::string message) {
  return InvalidArgumentError(std::move(message));
}

// a * b * c with a false result on overflow past kMaxTensorBytes.
bool BoundedProduct(std::uint64_t a, std::uint64_t b, std::uint64_t c,
                    std::uint64_t* product) {
  std::uint64_t ab = 0;
  if (__builtin_mul_overflow(a, b, &ab)) return false;
  if (__builtin_mul_overflow(ab, c, product)) return false;
  return *product <= kMaxTensorBytes;
}

const char* RangeName(int range) {
  static constexpr const char* kNames[] = {"decode", "prefill", "mixed"};
  return kNames[range];
}

Status ValidateParams(const AttentionParams& params, const PlanOptions& options,
                      ResolvedParams* resolved) {
  if (!std::isfinite(params.sm_scale)) {
    return Invalid(
        fmt::format("sm_scale must be finite, got {}", params.sm_scale));
  }
  if (params.sliding_window.has_value() && *params.sliding_window <= 0) {
    return Invalid(fmt::format("sliding_window must be positive, got {}",
                               *params.sliding_window));
  }
  if (params.soft_cap.has_value()) {
    if (*params.soft_cap == 0.0F) {
      return Invalid("soft_cap must not be 0");
    }
    if (!std::isfinite(*params.soft_cap)) {
      return Invalid(
          fmt::format("soft_cap must be finite, got {}", *params.soft_cap));
    }
  }
  const auto check_scale = [](const char* name,
                              const std::optional<float>& scale) -> Status {
    if (scale.has_value() && !(std::isfinite(*scale) && *scale > 0.0F)) {
      return Invalid(
          fmt::format("{} must be positive and finite, got {}", name, *scale));
    }
    return OkStatus();
  };
  RPA_RETURN_IF_ERROR(check_scale("k_scale", params.k_scale));
  RPA_RETURN_IF_ERROR(check_scale("v_scale", params.v_scale));
  if (params.chunk_prefill_size.has_value() &&
      *params.chunk_prefill_size <= 0) {
    return Invalid(fmt::format("chunk_prefill_size must be positive, got {}",
                               *params.chunk_prefill_size));
  }
  const float k_scale = params.k_scale.value_or(1.0F);
  const float score_scale = params.sm_scale * k_scale;
  if (!std::isfinite(score_scale)) {
    return Invalid(
        fmt::format("sm_scale * k_scale = {} * {} is not finite in f32",
                    params.sm_scale, k_scale));
  }
  if (options.parallelism < 1) {
    return Invalid(fmt::format("PlanOptions::parallelism must be >= 1, got {}",
                               options.parallelism));
  }
  const KernelKind kinds[] = {options.decode_range_kernel,
                              options.prefill_range_kernel,
                              options.mixed_range_kernel};
  static constexpr const char* kFields[] = {
      "decode_range_kernel", "prefill_range_kernel", "mixed_range_kernel"};
  for (int r = 0; r < 3; ++r) {
    if (kinds[r] != KernelKind::kDecode && kinds[r] != KernelKind::kPrefill &&
        kinds[r] != KernelKind::kMixed) {
      return Invalid(fmt::format("PlanOptions::{} = {} is not a kernel",
                                 kFields[r], static_cast<int>(kinds[r])));
    }
  }
  resolved->score_scale = score_scale;
  resolved->v_scale = params.v_scale.value_or(1.0F);
  resolved->soft_cap = params.soft_cap.value_or(0.0F);
  resolved->sliding_window = params.sliding_window.value_or(0);
  resolved->causal = params.causal;
  return OkStatus();
}

Status ValidateShape(const BatchShape& shape, const memory::KvLayerView& cache,
                     CacheGeometry* geometry) {
  if (shape.num_q_heads == 0) {
    return Invalid("shape.num_q_heads (Hq) must be positive, got 0");
  }
  if (shape.num_kv_heads == 0) {
    return Invalid("shape.num_kv_heads (Hkv) must be positive, got 0");
  }
  if (shape.head_dim == 0) {
    return Invalid("shape.head_dim (D) must be positive, got 0");
  }
  if (shape.num_q_heads % shape.num_kv_heads != 0) {
    return Invalid(fmt::format(
        "shape.num_q_heads = {} is not a multiple of shape.num_kv_heads = {}",
        shape.num_q_heads, shape.num_kv_heads));
  }
  if (cache.num_pages == 0) {
    return Invalid("cache.num_pages (P) must be positive, got 0");
  }
  if (cache.page_size_tokens == 0) {
    return Invalid("cache.page_size_tokens (ps) must be positive, got 0");
  }
  if (cache.storage != memory::StorageType::kF32 &&
      cache.storage != memory::StorageType::kF16 &&
      cache.storage != memory::StorageType::kBf16) {
    return Invalid(fmt::format("cache.storage = {} is not a storage type",
                               static_cast<int>(cache.storage)));
  }
  const std::uint64_t combined_heads = 2 * std::uint64_t{shape.num_kv_heads};
  if (cache.num_combined_heads != combined_heads) {
    return Invalid(fmt::format(
        "cache.num_combined_heads = {} but 2 * shape.num_kv_heads = {}",
        cache.num_combined_heads, combined_heads));
  }
  if (cache.head_dim != shape.head_dim) {
    return Invalid(fmt::format("cache.head_dim = {} but shape.head_dim = {}",
                               cache.head_dim, shape.head_dim));
  }
  const std::uint64_t element_bytes = StorageBytes(cache.storage);
  std::uint64_t token_bytes = 0;
  std::uint64_t page_bytes = 0;
  std::uint64_t cache_bytes = 0;
  if (!BoundedProduct(combined_heads, shape.head_dim, element_bytes,
                      &token_bytes) ||
      !BoundedProduct(token_bytes, cache.page_size_tokens, 1, &page_bytes) ||
      !BoundedProduct(page_bytes, cache.num_pages, 1, &cache_bytes)) {
    return Invalid(fmt::format(
        "cache of {} pages x {} tokens x {} heads x {} elements is too large",
        cache.num_pages, cache.page_size_tokens, combined_heads,
        shape.head_dim));
  }
  // Kernels address the cache through these two fields (KvRowAddress), so a
  // view whose strides disagree with its geometry would send them out of
  // bounds.
  if (cache.token_bytes != token_bytes) {
    return Invalid(fmt::format(
        "cache.token_bytes = {} but num_combined_heads * head_dim * {} = {}",
        cache.token_bytes, element_bytes, token_bytes));
  }
  if (cache.page_bytes != page_bytes) {
    return Invalid(fmt::format(
        "cache.page_bytes = {} but page_size_tokens * token_bytes = {}",
        cache.page_bytes, page_bytes));
  }
  std::uint64_t q_bytes = 0;
  if (!BoundedProduct(shape.num_tokens, shape.num_q_heads,
                      std::uint64_t{shape.head_dim} * sizeof(float),
                      &q_bytes)) {
    return Invalid(fmt::format(
        "shape: q of {} tokens x {} heads x {} elements is too large",
        shape.num_tokens, shape.num_q_heads, shape.head_dim));
  }
  geometry->num_pages = cache.num_pages;
  geometry->page_size_tokens = cache.page_size_tokens;
  geometry->num_combined_heads = cache.num_combined_heads;
  geometry->head_dim = cache.head_dim;
  geometry->storage = cache.storage;
  return OkStatus();
}

// One page's worth of a sequence's new tokens: slots [slot_begin, slot_end)
// of `page`, holding positions from `position` on.
struct WrittenSlots {
  std::int32_t page = 0;
  std::int32_t slot_begin = 0;
  std::int32_t slot_end = 0;
  std::int32_t sequence = 0;
  std::int64_t position = 0;
};

// SPEC 3: no two new tokens may land in the same cache slot (the result
// would depend on the write order). Sorting the per-page slot intervals makes
// this O(W log W) in the number of written pages W, not quadratic in tokens:
// once sorted by (page, slot_begin), any overlap shows between neighbours.
Status CheckDisjointWrites(const ValidatedBatch& batch) {
  const std::int64_t ps = batch.cache.page_size_tokens;
  // Grow-only per thread: validation runs every step of a serving loop.
  thread_local std::vector<WrittenSlots> written;
  written.clear();
  for (std::size_t i = 0; i < batch.sequences.size(); ++i) {
    const SequenceSpan& seq = batch.sequences[i];
    const std::int64_t gap = std::int64_t{seq.kv_len} - seq.q_len;
    for (std::int64_t page = gap / ps; page * ps < seq.kv_len; ++page) {
      const std::int64_t begin = std::max(gap, page * ps);
      const std::int64_t end =
          std::min<std::int64_t>(seq.kv_len, (page + 1) * ps);
      written.push_back(WrittenSlots{
          .page =
              batch.page_indices[static_cast<std::size_t>(seq.page_row + page)],
          .slot_begin = static_cast<std::int32_t>(begin - page * ps),
          .slot_end = static_cast<std::int32_t>(end - page * ps),
          .sequence = static_cast<std::int32_t>(i),
          .position = begin});
    }
  }
  std::sort(written.begin(), written.end(),
            [](const WrittenSlots& a, const WrittenSlots& b) {
              return a.page != b.page ? a.page < b.page
                                      : a.slot_begin < b.slot_begin;
            });
  for (std::size_t j = 1; j < written.size(); ++j) {
    const WrittenSlots& a = written[j - 1];
    const WrittenSlots& b = written[j];
    if (a.page != b.page || b.slot_begin >= a.slot_end) continue;
    // b starts inside a: slot b.slot_begin is written by both.
    const std::int64_t a_position = a.position + (b.slot_begin - a.slot_begin);
    return Invalid(fmt::format(
        "sequences {} and {} write the same cache slot: new token at kv "
        "position {} of sequence {} and at kv position {} of sequence {} are "
        "both page {} slot {}",
        std::min(a.sequence, b.sequence), std::max(a.sequence, b.sequence),
        a_position, a.sequence, b.position, b.sequence, a.page, b.slot_begin));
  }
  return OkStatus();
}

}  // namespace

StatusOr<ValidatedBatch> ValidateBatch(const BatchMetadata& metadata,
                                       const memory::KvLayerView& cache,
                                       const AttentionParams& params,
                                       const PlanOptions& options) {
  ValidatedBatch batch;
  RPA_RETURN_IF_ERROR(
      ValidateBatchInto(metadata, cache, params, options, &batch));
  return batch;
}

Status ValidateBatchInto(const BatchMetadata& metadata,
                         const memory::KvLayerView& cache,
                         const AttentionParams& params,
                         const PlanOptions& options, ValidatedBatch* out) {
  ValidatedBatch& batch = *out;
  // Everything but the vectors' capacity starts over.
  std::vector<std::int32_t> page_indices = std::move(batch.page_indices);
  std::vector<SequenceSpan> sequences = std::move(batch.sequences);
  batch = ValidatedBatch{};
  page_indices.clear();
  sequences.clear();
  batch.page_indices = std::move(page_indices);
  batch.sequences = std::move(sequences);
  RPA_RETURN_IF_ERROR(ValidateParams(params, options, &batch.params));
  RPA_RETURN_IF_ERROR(ValidateShape(metadata.shape, cache, &batch.cache));
  batch.shape = metadata.shape;
  batch.group_size = metadata.shape.num_q_heads / metadata.shape.num_kv_heads;

  // Sizes of the metadata arrays.
  const std::size_t num_seqs = metadata.kv_lens.size();
  if (num_seqs >= static_cast<std::size_t>(kInt32Max)) {
    return Invalid(
        fmt::format("kv_lens has {} entries, more than 2^31 - 2", num_seqs));
  }
  if (metadata.page_indices.size() > static_cast<std::size_t>(kInt32Max)) {
    return Invalid(
        fmt::format("page_indices has {} entries, more than 2^31 - 1",
                    metadata.page_indices.size()));
  }
  if (num_seqs == 0) {
    if (!metadata.page_indices.empty()) {
      return Invalid(fmt::format(
          "page_indices has {} entries but kv_lens is empty (S = 0)",
          metadata.page_indices.size()));
    }
  } else if (metadata.page_indices.size() % num_seqs != 0) {
    return Invalid(fmt::format(
        "page_indices has {} entries, not a multiple of S = len(kv_lens) = {}",
        metadata.page_indices.size(), num_seqs));
  }
  batch.pages_per_sequence =
      num_seqs == 0
          ? 0
          : static_cast<std::uint32_t>(metadata.page_indices.size() / num_seqs);
  if (metadata.cu_q_lens.size() != num_seqs + 1) {
    return Invalid(fmt::format(
        "cu_q_lens has {} entries but S + 1 = {} (S = len(kv_lens))",
        metadata.cu_q_lens.size(), num_seqs + 1));
  }
  if (metadata.cu_q_lens[0] != 0) {
    return Invalid(
        fmt::format("cu_q_lens[0] = {} must be 0", metadata.cu_q_lens[0]));
  }
  for (std::size_t i = 1; i <= num_seqs; ++i) {
    if (metadata.cu_q_lens[i] < metadata.cu_q_lens[i - 1]) {
      return Invalid(fmt::format("cu_q_lens[{}] = {} < cu_q_lens[{}] = {}", i,
                                 metadata.cu_q_lens[i], i - 1,
                                 metadata.cu_q_lens[i - 1]));
    }
  }
  if (metadata.distribution.size() != 3) {
    return Invalid(fmt::format("distribution has {} entries, expected 3",
                               metadata.distribution.size()));
  }
  const std::int32_t d0 = metadata.distribution[0];
  const std::int32_t d1 = metadata.distribution[1];
  const std::int32_t d2 = metadata.distribution[2];
  if (!(0 <= d0 && d0 <= d1 && d1 <= d2 &&
        static_cast<std::size_t>(d2) <= num_seqs)) {
    return Invalid(fmt::format(
        "distribution = ({}, {}, {}) must satisfy 0 <= d0 <= d1 <= d2 <= S = "
        "{}",
        d0, d1, d2, num_seqs));
  }
  batch.distribution = {d0, d1, d2};
  const std::int32_t used_tokens =
      metadata.cu_q_lens[static_cast<std::size_t>(d2)];
  if (static_cast<std::int64_t>(used_tokens) > metadata.shape.num_tokens) {
    return Invalid(fmt::format(
        "cu_q_lens[{}] = {} (d2 = distribution[2]) > shape.num_tokens = {}", d2,
        used_tokens, metadata.shape.num_tokens));
  }
  batch.num_used_tokens = used_tokens;
  if (d1 > d0 && !params.chunk_prefill_size.has_value()) {
    return Invalid(fmt::format(
        "the prefill range [distribution[0], distribution[1]) = [{}, {}) is "
        "not empty but chunk_prefill_size is none",
        d0, d1));
  }

  // Every processed sequence.
  const KernelKind kernels[] = {options.decode_range_kernel,
                                options.prefill_range_kernel,
                                options.mixed_range_kernel};
  const std::int64_t ps = cache.page_size_tokens;
  const std::int64_t pps = batch.pages_per_sequence;
  // Reserved geometrically: in a serving loop the page table grows a column
  // every page_size_tokens steps, and a re-plan reuses these vectors.
  const auto reserve = [](auto* vector, std::size_t size) {
    if (vector->capacity() < size) {
      vector->reserve(std::max(size, 2 * vector->capacity()));
    }
  };
  reserve(&batch.page_indices, metadata.page_indices.size());
  batch.page_indices.assign(metadata.page_indices.begin(),
                            metadata.page_indices.end());
  reserve(&batch.sequences, static_cast<std::size_t>(d2));
  for (std::int32_t i = 0; i < d2; ++i) {
    const auto index = static_cast<std::size_t>(i);
    const int range = i < d0 ? 0 : (i < d1 ? 1 : 2);
    const std::int64_t q_begin = metadata.cu_q_lens[index];
    const std::int64_t q_len = metadata.cu_q_lens[index + 1] - q_begin;
    const std::int64_t kv_len = metadata.kv_lens[index];
    if (q_len < 1) {
      return Invalid(fmt::format(
          "sequence {}: q_len = cu_q_lens[{}] - cu_q_lens[{}] = {} must be >= "
          "1 (it is processed: {} < distribution[2] = {})",
          i, i + 1, i, q_len, i, d2));
    }
    if (q_len > kv_len) {
      return Invalid(fmt::format("sequence {}: q_len = {} > kv_lens[{}] = {}",
                                 i, q_len, i, kv_len));
    }
    const std::int64_t pages = DivideRoundUp<std::int64_t>(kv_len, ps);
    if (pages > pps) {
      return Invalid(fmt::format(
          "kv_lens[{}] = {} needs {} pages but pages_per_sequence = {}", i,
          kv_len, pages, pps));
    }
    for (std::int64_t p = 0; p < pages; ++p) {
      const auto entry = static_cast<std::size_t>(i * pps + p);
      const std::int32_t page = metadata.page_indices[entry];
      if (page < 0 || static_cast<std::uint32_t>(page) >= cache.num_pages) {
        return Invalid(fmt::format(
            "page_indices[{}] = {} outside [0, {}) (page {} of sequence {}, "
            "kv_lens[{}] = {})",
            entry, page, cache.num_pages, p, i, i, kv_len));
      }
    }
    if (range == 0 && q_len != 1) {
      return Invalid(fmt::format(
          "sequence {} is in the decode range [0, {}) but has q_len = {} != 1",
          i, d0, q_len));
    }
    if (range == 1 && q_len != *params.chunk_prefill_size) {
      return Invalid(fmt::format(
          "sequence {} is in the prefill range [{}, {}) but has q_len = {} != "
          "chunk_prefill_size = {}",
          i, d0, d1, q_len, *params.chunk_prefill_size));
    }
    if (kernels[range] == KernelKind::kDecode && q_len != 1) {
      return Invalid(fmt::format(
          "PlanOptions routes the {} range to the decode kernel, but sequence "
          "{} has q_len = {} != 1",
          RangeName(range), i, q_len));
    }
    batch.sequences.push_back(
        SequenceSpan{.q_begin = static_cast<std::int32_t>(q_begin),
                     .q_len = static_cast<std::int32_t>(q_len),
                     .kv_len = static_cast<std::int32_t>(kv_len),
                     .page_row = static_cast<std::int32_t>(i * pps),
                     .kernel = kernels[range],
                     .range = static_cast<std::uint8_t>(range)});
  }
  RPA_RETURN_IF_ERROR(CheckDisjointWrites(batch));

  for (const SequenceSpan& seq : batch.sequences) {
    batch.range_cost[seq.range] += SequenceCost(batch, seq);
  }
  for (const BatchCost& range_cost : batch.range_cost) {
    batch.cost += range_cost;
  }
  return OkStatus();
}

}  // namespace rpa::attention::internal
