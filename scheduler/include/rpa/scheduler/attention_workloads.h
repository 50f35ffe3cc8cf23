#pragma once

// The named attention batches that `rpa bench attention` and
// bench/attention_bench.cc measure, defined once here. All use the
// Llama-3-8B attention geometry of the RPA paper: Hq 32, Hkv 8, D 128, page
// 16 tokens, sm_scale 1/sqrt(D), causal; shuffled page tables (every
// sequence's pages are a random permutation of the cache, so no two
// consecutive pages are adjacent in memory); q, k, v and the whole cache
// (unused slots included) filled with seeded uniform values in [-1, 1).
//
//   name                     sequences (q_len x kv_len)    cache  distribution
//   decode_32x2048_f16       32 x (1 x 2048)               f16    (32, 32, 32)
//   decode_32x2048_f32       32 x (1 x 2048)               f32    (32, 32, 32)
//   decode_32x8192_f16       32 x (1 x 8192)               f16    (32, 32, 32)
//   decode_1x32768_f16       1 x (1 x 32768)               f16    (1, 1, 1)
//   prefill_1x2048_f16       1 x (2048 x 2048), chunk 2048 f16    (0, 1, 1)
//   mixed_azure_f16          24 decode, kv_len uniform in  f16    (24, 26, 26)
//                            [300, 4000] (seed 2023), then
//                            2 prefill chunks of 512:
//                            (512 x 512) and (512 x 1536),
//                            chunk 512
//   mixed_azure_f16_decode   the 24 decode sequences alone f16    (24, 24, 24)
//   mixed_azure_f16_prefill  the 2 prefill chunks alone    f16    (0, 2, 2)
//
// The mixed batch puts its decode sequences in the decode range and its
// chunks in the prefill range (the order a continuous-batching scheduler
// emits), so each part runs on its specialised kernel; its two parts alone
// are the same sequences with the same kv_lens.
//
// Memory: decode_32x8192_f16 holds a 1 GiB cache, decode_32x2048_f32 512
// MiB; build one workload at a time.
//
// Thread-safety: a workload is a plain value; Run on it mutates its cache
// (the new tokens' K/V, the same values every time) and its out buffer.
//
// Example:
//   RPA_ASSIGN_OR_RETURN(auto w,
//                        AttentionWorkload::Create("decode_32x2048_f16"));
//   RPA_ASSIGN_OR_RETURN(auto plan,
//                        attention::AttentionPlan::Create(
//                            w->metadata(), w->cache(), w->params(),
//                            {.parallelism = 2}));
//   RPA_RETURN_IF_ERROR(attention::Run(plan, w->tensors(), executor));

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rpa/attention/batch.h"
#include "rpa/attention/params.h"
#include "rpa/memory/kv_cache.h"
#include "rpa/runtime/status.h"
#include "rpa/scheduler/npy.h"

namespace rpa::scheduler {

struct AttentionWorkloadInfo {
  std::string_view name;        // "decode_32x2048_f16"
  std::string_view bench_name;  // "Decode32x2048F16" (Google Benchmark)
  std::string_view description;
};

// Every workload, in report order.
std::span<const AttentionWorkloadInfo> AttentionWorkloads();

// One sequence of a workload.
struct WorkloadSequence {
  std::int32_t q_len = 0;
  std::int32_t kv_len = 0;
};

// The kv_lens of the mixed batch's 24 decode sequences (seeded, in [300,
// 4000]); exposed for tests and documentation.
std::vector<std::int32_t> AzureDecodeKvLens();

// A custom batch in the same geometry family: Hq / Hkv / D, the page size
// and the storage type are free; the rest (shuffled pages, seeded values,
// causal, sm_scale 1/sqrt(D)) is as above.
struct AttentionWorkloadSpec {
  memory::StorageType storage = memory::StorageType::kBf16;
  std::uint32_t num_q_heads = 32;
  std::uint32_t num_kv_heads = 8;
  std::uint32_t head_dim = 128;
  std::uint32_t page_size_tokens = 16;
  std::vector<WorkloadSequence> sequences;
  std::array<std::int32_t, 3> distribution{};
  std::optional<std::int32_t> chunk_prefill_size;
};

class AttentionWorkload {
 public:
  static constexpr std::uint64_t kDefaultSeed = 20240601;

  // NotFound for an unknown name (the message lists the known ones);
  // ResourceExhausted when the buffers cannot be allocated.
  static StatusOr<std::unique_ptr<AttentionWorkload>> Create(
      std::string_view name, std::uint64_t seed = kDefaultSeed);
  // InvalidArgument for zero sizes or an empty sequence list (the batch's own
  // validation happens when it is planned).
  static StatusOr<std::unique_ptr<AttentionWorkload>> Create(
      std::string_view name, const AttentionWorkloadSpec& spec,
      std::uint64_t seed = kDefaultSeed);

  const std::string& name() const { return name_; }
  attention::BatchMetadata metadata() const;
  const attention::AttentionParams& params() const { return params_; }
  memory::KvLayerView cache() const { return cache_view_; }
  // Views of q, k, v, the cache and out (out: T_used x Hq x D floats).
  attention::BatchTensors tensors();
  const std::vector<WorkloadSequence>& sequences() const { return sequences_; }

 private:
  AttentionWorkload() = default;

  std::string name_;
  attention::BatchShape shape_;
  attention::AttentionParams params_;
  std::vector<WorkloadSequence> sequences_;
  std::vector<std::int32_t> kv_lens_;
  std::vector<std::int32_t> page_indices_;
  std::vector<std::int32_t> cu_q_lens_;
  std::vector<std::int32_t> distribution_;
  std::vector<float> q_;
  std::vector<float> k_;
  std::vector<float> v_;
  std::vector<float> out_;
  NpyArray cache_buffer_;  // page aligned (NpyArray: 4 KiB from 4 KiB up)
  memory::KvLayerView cache_view_;
};

}  // namespace rpa::scheduler
