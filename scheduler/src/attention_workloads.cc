#include "rpa/scheduler/attention_workloads.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>

#include "rpa/attention/storage_convert.h"
#include "rpa/runtime/int_math.h"

namespace rpa::scheduler {
namespace {

constexpr std::uint32_t kNumQHeads = 32;
constexpr std::uint32_t kNumKvHeads = 8;
constexpr std::uint32_t kHeadDim = 128;
constexpr std::uint32_t kPageSizeTokens = 16;
constexpr std::uint64_t kAzureSeed = 2023;

constexpr std::array<AttentionWorkloadInfo, 8> kWorkloads = {{
    {"decode_32x2048_f16", "Decode32x2048F16",
     "32 decode sequences, kv_len 2048, f16 cache"},
    {"decode_32x2048_f32", "Decode32x2048F32",
     "32 decode sequences, kv_len 2048, f32 cache"},
    {"decode_32x8192_f16", "Decode32x8192F16",
     "32 decode sequences, kv_len 8192, f16 cache"},
    {"decode_1x32768_f16", "Decode1x32768F16",
     "1 decode sequence, kv_len 32768, f16 cache"},
    {"prefill_1x2048_f16", "Prefill1x2048F16",
     "1 causal prefill chunk of 2048 tokens, kv_len 2048, f16 cache"},
    {"mixed_azure_f16", "MixedAzureF16",
     "24 decode (kv_len 300-4000) + 2 prefill chunks of 512, f16 cache"},
    {"mixed_azure_f16_decode", "MixedAzureF16Decode",
     "the mixed batch's 24 decode sequences alone"},
    {"mixed_azure_f16_prefill", "MixedAzureF16Prefill",
     "the mixed batch's 2 prefill chunks alone"},
}};

// SplitMix64: small, fast and good enough for test data.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t Next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1).
  float Symmetric() {
    return static_cast<float>(static_cast<double>(Next() >> 40) * 0x1p-23 -
                              1.0);
  }
  // Uniform in [lo, hi].
  std::int32_t Between(std::int32_t lo, std::int32_t hi) {
    auto span = static_cast<std::uint64_t>(hi - lo + 1);
    return lo + static_cast<std::int32_t>(Next() % span);
  }

 private:
  std::uint64_t state_;
};

using Spec = AttentionWorkloadSpec;

Spec Named(memory::StorageType storage, std::vector<WorkloadSequence> seqs,
           std::array<std::int32_t, 3> distribution,
           std::optional<std::int32_t> chunk = {}) {
  Spec spec;
  spec.storage = storage;
  spec.num_q_heads = kNumQHeads;
  spec.num_kv_heads = kNumKvHeads;
  spec.head_dim = kHeadDim;
  spec.page_size_tokens = kPageSizeTokens;
  spec.sequences = std::move(seqs);
  spec.distribution = distribution;
  spec.chunk_prefill_size = chunk;
  return spec;
}

std::vector<WorkloadSequence> Repeat(int count, WorkloadSequence seq) {
  return std::vector<WorkloadSequence>(static_cast<std::size_t>(count), seq);
}

std::vector<WorkloadSequence> AzureDecode() {
  std::vector<WorkloadSequence> out;
  for (std::int32_t kv_len : AzureDecodeKvLens()) out.push_back({1, kv_len});
  return out;
}

std::vector<WorkloadSequence> AzurePrefill() {
  return {{512, 512}, {512, 1536}};
}

StatusOr<Spec> SpecFor(std::string_view name) {
  using memory::StorageType;
  if (name == "decode_32x2048_f16") {
    return Named(StorageType::kF16, Repeat(32, {1, 2048}), {32, 32, 32});
  }
  if (name == "decode_32x2048_f32") {
    return Named(StorageType::kF32, Repeat(32, {1, 2048}), {32, 32, 32});
  }
  if (name == "decode_32x8192_f16") {
    return Named(StorageType::kF16, Repeat(32, {1, 8192}), {32, 32, 32});
  }
  if (name == "decode_1x32768_f16") {
    return Named(StorageType::kF16, Repeat(1, {1, 32768}), {1, 1, 1});
  }
  if (name == "prefill_1x2048_f16") {
    return Named(StorageType::kF16, Repeat(1, {2048, 2048}), {0, 1, 1}, 2048);
  }
  if (name == "mixed_azure_f16") {
    std::vector<WorkloadSequence> seqs = AzureDecode();
    for (WorkloadSequence s : AzurePrefill()) seqs.push_back(s);
    return Named(StorageType::kF16, std::move(seqs), {24, 26, 26}, 512);
  }
  if (name == "mixed_azure_f16_decode") {
    return Named(StorageType::kF16, AzureDecode(), {24, 24, 24});
  }
  if (name == "mixed_azure_f16_prefill") {
    return Named(StorageType::kF16, AzurePrefill(), {0, 2, 2}, 512);
  }
  std::string known;
  for (const auto& info : kWorkloads) {
    known += (known.empty() ? "" : ", ") + std::string(info.name);
  }
  return NotFoundError("unknown attention workload \"" + std::string(name) +
                       "\" (known: " + known + ")");
}

void FillSymmetric(Rng& rng, std::span<float> out) {
  for (float& x : out) x = rng.Symmetric();
}

}  // namespace

std::span<const AttentionWorkloadInfo> AttentionWorkloads() {
  return kWorkloads;
}

std::vector<std::int32_t> AzureDecodeKvLens() {
  Rng rng(kAzureSeed);
  std::vector<std::int32_t> kv_lens(24);
  for (auto& kv_len : kv_lens) kv_len = rng.Between(300, 4000);
  return kv_lens;
}

StatusOr<std::unique_ptr<AttentionWorkload>> AttentionWorkload::Create(
    std::string_view name, std::uint64_t seed) {
  RPA_ASSIGN_OR_RETURN(Spec spec, SpecFor(name));
  return Create(name, spec, seed);
}

StatusOr<std::unique_ptr<AttentionWorkload>> AttentionWorkload::Create(
    std::string_view name, const AttentionWorkloadSpec& spec,
    std::uint64_t seed) {
  if (spec.num_q_heads == 0 || spec.num_kv_heads == 0 || spec.head_dim == 0 ||
      spec.page_size_tokens == 0) {
    return InvalidArgumentError(
        "attention workload: heads, head_dim and page_size_tokens must be > 0");
  }
  if (spec.sequences.empty()) {
    return InvalidArgumentError("attention workload: no sequences");
  }
  const std::uint32_t num_q_heads = spec.num_q_heads;
  const std::uint32_t num_kv_heads = spec.num_kv_heads;
  const std::uint32_t head_dim = spec.head_dim;
  const std::uint32_t page_size = spec.page_size_tokens;
  std::unique_ptr<AttentionWorkload> w(new AttentionWorkload());
  w->name_ = std::string(name);
  w->sequences_ = spec.sequences;
  w->params_.sm_scale = 1.0F / std::sqrt(static_cast<float>(head_dim));
  w->params_.causal = true;
  w->params_.chunk_prefill_size = spec.chunk_prefill_size;

  const auto num_seqs = spec.sequences.size();
  std::uint32_t pages_per_seq = 1;
  std::uint32_t total_pages = 0;
  std::int32_t total_tokens = 0;
  w->cu_q_lens_.push_back(0);
  for (const WorkloadSequence& s : spec.sequences) {
    const std::uint32_t pages =
        DivideRoundUp(static_cast<std::uint32_t>(s.kv_len), page_size);
    pages_per_seq = std::max(pages_per_seq, pages);
    total_pages += pages;
    total_tokens += s.q_len;
    w->kv_lens_.push_back(s.kv_len);
    w->cu_q_lens_.push_back(total_tokens);
  }
  w->distribution_.assign(spec.distribution.begin(), spec.distribution.end());

  Rng rng(seed);
  // Shuffled page table: sequence i's pages are the next entries of a
  // random permutation of all pages; unused entries stay 0.
  std::vector<std::int32_t> permutation(total_pages);
  std::iota(permutation.begin(), permutation.end(), 0);
  for (std::size_t i = permutation.size(); i > 1; --i) {
    std::swap(permutation[i - 1], permutation[rng.Next() % i]);
  }
  w->page_indices_.assign(num_seqs * pages_per_seq, 0);
  std::size_t next_page = 0;
  for (std::size_t i = 0; i < num_seqs; ++i) {
    const std::size_t pages = DivideRoundUp<std::size_t>(
        static_cast<std::size_t>(spec.sequences[i].kv_len), page_size);
    for (std::size_t p = 0; p < pages; ++p) {
      w->page_indices_[i * pages_per_seq + p] = permutation[next_page++];
    }
  }

  w->shape_ = {.num_tokens = static_cast<std::uint32_t>(total_tokens),
               .num_q_heads = num_q_heads,
               .num_kv_heads = num_kv_heads,
               .head_dim = head_dim};
  const auto tokens = static_cast<std::size_t>(total_tokens);
  w->q_.resize(tokens * num_q_heads * head_dim);
  w->k_.resize(tokens * num_kv_heads * head_dim);
  w->v_.resize(tokens * num_kv_heads * head_dim);
  w->out_.resize(tokens * num_q_heads * head_dim);
  FillSymmetric(rng, w->q_);
  FillSymmetric(rng, w->k_);
  FillSymmetric(rng, w->v_);

  NpyDtype dtype = spec.storage == memory::StorageType::kF32   ? NpyDtype::kF32
                   : spec.storage == memory::StorageType::kF16 ? NpyDtype::kF16
                                                               : NpyDtype::kU16;
  RPA_ASSIGN_OR_RETURN(w->cache_buffer_,
                       NpyArray::Create(dtype, {total_pages, page_size,
                                                2 * num_kv_heads, head_dim}));
  // Fill in chunks: generate f32, convert to the cache's type.
  std::vector<float> chunk(8192);
  const std::size_t elements = w->cache_buffer_.num_elements();
  const std::size_t element_bytes = memory::StorageBytes(spec.storage);
  for (std::size_t done = 0; done < elements; done += chunk.size()) {
    std::size_t n = std::min(chunk.size(), elements - done);
    std::span<float> part(chunk.data(), n);
    FillSymmetric(rng, part);
    attention::ConvertToStorage(part, spec.storage,
                                w->cache_buffer_.data() + done * element_bytes);
  }
  memory::KvLayerView& view = w->cache_view_;
  view.data = w->cache_buffer_.data();
  view.num_pages = total_pages;
  view.page_size_tokens = page_size;
  view.num_combined_heads = 2 * num_kv_heads;
  view.head_dim = head_dim;
  view.storage = spec.storage;
  view.token_bytes = static_cast<std::size_t>(view.num_combined_heads) *
                     head_dim * element_bytes;
  view.page_bytes = view.token_bytes * page_size;
  return w;
}

attention::BatchMetadata AttentionWorkload::metadata() const {
  return {.shape = shape_,
          .kv_lens = kv_lens_,
          .page_indices = page_indices_,
          .cu_q_lens = cu_q_lens_,
          .distribution = distribution_};
}

attention::BatchTensors AttentionWorkload::tensors() {
  return {.q = q_, .k = k_, .v = v_, .cache = cache_view_, .out = out_};
}

}  // namespace rpa::scheduler
