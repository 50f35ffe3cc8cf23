#pragma once

// The plan/run API of ragged paged attention (shared/SPEC.md sections 1-3,
// 6): validate a batch once, then run it.
//
//   AttentionPlan::Create  checks every rule of SPEC section 3 against the
//                          batch metadata, the cache's geometry and the
//                          parameters; copies the (small) metadata; decides
//                          which kernel serves each range of the distribution
//                          and splits the work into items. Nothing is written.
//   Run                    checks the tensors against the plan in O(1), then
//                          (1) writes every new token's K/V into the cache,
//                          converted to the cache's type (round to nearest
//                          even), and (2) computes attention for every
//                          processed sequence into out. Tokens past
//                          cu_q_lens[d2] and sequences past d2 are not touched.
//
// Kernels (SPEC section 6): the decode range [0, d0) runs the decode kernel
// (q_len 1, GQA heads served from one load of K/V, long KV ranges split over
// threads and merged); the prefill range [d0, d1) the prefill kernel and the
// mixed range [d1, d2) the mixed kernel (flash-attention tiling with the GQA
// query heads packed as rows, tiles hidden by the causal mask or the window
// skipped). PlanOptions can route a range to another kernel (tests and
// benchmarks use this to compare kernels on the same batch).
//
// Errors: InvalidArgument naming the field and the value ("kv_lens[3] = 70
// needs 5 pages but pages_per_sequence = 4"); Unavailable when the library
// was built for AVX2/FMA/F16C and this CPU lacks them. A failed Create or Run
// changes nothing (Run validates before its first write).
//
// Thread-safety: a plan is immutable after Create (until Update, which must
// not overlap any other use of the plan); several Runs of one plan may
// proceed concurrently on different tensors. A plan owns scratch for Run
// (the partial softmax states of split decode sequences): the first Run
// takes it with an atomic try-lock and a Run that finds it taken allocates
// its own, so concurrent Runs stay correct and an uncontended Run (one
// serving loop) allocates nothing once warmed up. Run itself never creates
// threads: with an executor it spreads the work items over the executor's
// workers as tasks and joins them (from a fiber it suspends, from any other
// thread it blocks); without one it runs them on the calling thread.
//
// Example:
//   rpa::attention::BatchMetadata meta{.shape = {T, 32, 8, 128}, .kv_lens =
//       kv_lens, .page_indices = pages, .cu_q_lens = cu, .distribution = dist};
//   RPA_ASSIGN_OR_RETURN(auto plan, AttentionPlan::Create(meta, cache.Layer(l),
//                                                         params));
//   RPA_RETURN_IF_ERROR(Run(plan, {q, k, v, cache.Layer(l), out}, executor));

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "rpa/attention/batch.h"
#include "rpa/attention/cost.h"
#include "rpa/attention/params.h"
#include "rpa/memory/kv_cache.h"
#include "rpa/runtime/status.h"

namespace rpa::runtime {
class Executor;
}

namespace rpa::attention {

enum class KernelKind : std::uint8_t { kDecode, kPrefill, kMixed };

// "decode", "prefill", "mixed".
std::string_view KernelKindName(KernelKind kind);

// Tile sizes of the flash kernels; 0 = the host default, sized to this CPU's
// caches (see attention/README.md).
struct BlockSizes {
  std::uint32_t q_tokens_per_block = 0;   // query tokens per tile (x group)
  std::uint32_t kv_tokens_per_block = 0;  // keys per tile
};

struct PlanOptions {
  // The kernel that serves each range. kDecode accepts only q_len 1 (checked
  // for every sequence of the range); kPrefill and kMixed accept any q_len.
  KernelKind decode_range_kernel = KernelKind::kDecode;
  KernelKind prefill_range_kernel = KernelKind::kPrefill;
  KernelKind mixed_range_kernel = KernelKind::kMixed;
  // How many threads Run will spread the work over (an executor's worker
  // count): the plan splits long KV ranges of decode sequences so that every
  // thread has work even for one sequence. >= 1.
  int parallelism = 1;
  // Minimum keys per decode split (0 = default); splits are page aligned.
  std::uint32_t decode_min_kv_tokens_per_split = 0;
  BlockSizes prefill_blocks{};
  BlockSizes mixed_blocks{};
  // Decode items run on the AVX-512 decode kernel when this CPU has AVX-512
  // (F, BW, DQ, VL) and the shape suits it (head_dim a multiple of 16, group
  // size 1, 2, 4, 8 or 16, an item's kv heads x group a multiple of 8 and at
  // most 256); otherwise, or with false, on the AVX2 kernel. Same results
  // within SPEC section 4's bounds; AttentionPlan::decode_uses_avx512 says
  // whether every decode item took the AVX-512 kernel.
  bool allow_avx512_decode = true;
};

namespace internal {
struct PlanData;
}

class AttentionPlan {
 public:
  // Validates (SPEC section 3) and plans. Only the geometry and storage type
  // of `cache` are read (num_pages, page_size_tokens, num_combined_heads,
  // head_dim, storage), not its data.
  static StatusOr<AttentionPlan> Create(const BatchMetadata& metadata,
                                        const memory::KvLayerView& cache,
                                        const AttentionParams& params,
                                        const PlanOptions& options = {});

  // Re-plans this plan for another batch (a serving loop's next step) in
  // place: the same validation and errors as Create, and on error the plan
  // is unchanged. The plan's vectors keep their capacity (validation goes
  // into scratch the plan owns, swapped in once it passed), so re-planning a
  // batch no larger than ones this plan has held allocates nothing.
  // Thread-safety: not concurrently with any other use of this plan (Run
  // included).
  //
  // Example (one plan per step, reused):
  //   if (!plan.has_value()) {
  //     RPA_ASSIGN_OR_RETURN(plan, AttentionPlan::Create(meta, view, params));
  //   } else {
  //     RPA_RETURN_IF_ERROR(plan->Update(meta, view, params));
  //   }
  [[nodiscard]] Status Update(const BatchMetadata& metadata,
                              const memory::KvLayerView& cache,
                              const AttentionParams& params,
                              const PlanOptions& options = {});

  // Capacity for batches of up to `num_sequences` processed sequences and
  // `page_table_entries` page-table entries, so that Update for such batches
  // does not grow the plan's copies of the metadata (a serving loop whose
  // page table grows a column every page_size_tokens steps calls it when it
  // grows its own table). Changes nothing but capacity. Thread-safety: as
  // Update.
  void Reserve(std::size_t num_sequences, std::size_t page_table_entries);

  AttentionPlan(AttentionPlan&&) noexcept;
  AttentionPlan& operator=(AttentionPlan&&) noexcept;
  ~AttentionPlan();

  const BatchShape& shape() const;
  std::uint32_t num_sequences() const;           // d2: sequences processed
  std::uint32_t num_used_tokens() const;         // T_used = cu_q_lens[d2]
  KernelKind kernel_for_range(int range) const;  // range 0, 1, 2
  std::uint32_t num_work_items() const;
  // Whether every decode item of the plan runs on the AVX-512 decode kernel
  // (PlanOptions::allow_avx512_decode; an item it does not take, e.g. a
  // split across kv heads that leaves its heads x group not a multiple of 8,
  // runs on the AVX2 kernel); false for a plan without decode items.
  bool decode_uses_avx512() const;
  // Bytes moved and FLOPs of SPEC section 7 (whole batch and per range).
  const BatchCost& cost() const;
  const BatchCost& range_cost(int range) const;

  const internal::PlanData& data() const { return *data_; }

 private:
  explicit AttentionPlan(std::unique_ptr<internal::PlanData> data);
  std::unique_ptr<internal::PlanData> data_;
};

// Runs a plan (see the file comment). InvalidArgument, before anything is
// written, when a tensor does not match the plan: q.size() != T * Hq * D,
// k / v != T * Hkv * D, out.size() != T_used * Hq * D, a cache whose geometry
// or storage differs from the planned one, or a null cache.
[[nodiscard]] Status Run(const AttentionPlan& plan, const BatchTensors& tensors,
                         runtime::Executor* executor = nullptr);

// Create + Run in one call.
[[nodiscard]] Status Attend(const BatchMetadata& metadata,
                            const BatchTensors& tensors,
                            const AttentionParams& params,
                            const PlanOptions& options = {},
                            runtime::Executor* executor = nullptr);

}  // namespace rpa::attention
