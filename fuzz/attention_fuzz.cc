// Differential fuzzer of the attention module: an input decodes into a small
// ragged batch (tests/attention/batch_builder.h: NaN-filled cache, shuffled
// page tables, garbage unused entries, NaN padding rows), runs Attend with
// the kernels the input routes each range to, and compares with the double
// precision oracle (tests/attention/oracle.h): out within the SPEC section 4
// bound (or, where the fuzzed scales amplify scores or values past what f32
// can evaluate to that bound, within the oracle's f32 rounding bound), the
// cache byte for byte. In malformed mode the metadata, parameters,
// options or cache geometry are then mutated: Attend must either reject the
// batch with InvalidArgument and leave cache and out untouched, or accept it
// and agree with the oracle.
//
// Input layout (missing bytes read as zero, so every input is valid):
//   byte 0   bits 0-1 S - 1 (1..4), bits 2-3 storage {f32, f16, bf16, f32},
//            bit 4 non-causal, bit 5 malformed mode, bit 6 run on a 2-worker
//            executor, bit 7 normal (else uniform) values
//   byte 1   bit 0 Hkv - 1, bits 1-2 group {1, 2, 3, 3}, bits 3-5 head dim
//            {4, 8, 16, 32, 12, 20, 64, 8}
//   byte 2   bits 0-2 page size - 1, bits 3-4 extra pages, bits 5-6 extra
//            page-table entries, bit 7 keep the page order
//   byte 3   flags: bit 0 window, 1 soft cap, 2 k_scale, 3 v_scale,
//            4 sm_scale, bit 5-7 chunk_prefill_size - 1
//   bytes 4-8  window (1 + b % 40), soft cap, k_scale, v_scale, sm_scale
//   byte 9   kernels: bits 0-1 decode range, 2-3 prefill, 4-5 mixed
//            ({decode, prefill, mixed, default}); bits 6-7 parallelism - 1
//   byte 10  bits 0-2 / 3-5 q / kv tokens per flash block, bits 6-7 decode
//            split minimum {0, 1, 4, 16}
//   bytes 11-13  distribution (d0, d1 - d0, d2 - d1, each modulo what is
//            left)
//   bytes 14-15  seed
//   then 2 bytes per sequence: q_len (mixed / past d2), kv_len - q_len
//   then, in malformed mode, up to 4 mutations of 3 bytes (what, index,
//   value).
// Set RPA_FUZZ_TRACE=1 to print the decoded batch when replaying.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/oracle.h"

#include "rpa/attention/plan.h"
#include "rpa/runtime/executor.h"

namespace rpa::attention::fuzz {
namespace {

using memory::StorageType;
using testutil::BatchSpec;
using testutil::TestBatch;

class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size)
      : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  std::uint8_t U8() { return pos_ < size_ ? data_[pos_++] : std::uint8_t{0}; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

bool TraceEnabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("RPA_FUZZ_TRACE");
    return value != nullptr && value[0] != '\0' && value[0] != '0';
  }();
  return enabled;
}

std::string g_context;  // the decoded case, printed on failure

void Trace(const std::string& line) {
  g_context += line;
  g_context += '\n';
  if (TraceEnabled()) std::fprintf(stderr, "%s\n", line.c_str());
}

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "\nattention_fuzz: MISMATCH: %s\ncase:\n%s",
               what.c_str(), g_context.c_str());
  std::fflush(stderr);
  std::abort();
}

runtime::Executor* SharedExecutor() {
  static runtime::Executor* executor = [] {
    auto created = runtime::Executor::Create({.num_workers = 2});
    if (!created.ok()) Fail("executor: " + created.status().ToString());
    return created->release();  // lives for the process
  }();
  return executor;
}

std::string Join(const std::vector<std::int32_t>& values) {
  std::string text = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i != 0) text += ", ";
    text += std::to_string(values[i]);
  }
  return text + "}";
}

struct Case {
  BatchMetadata metadata;
  memory::KvLayerView cache;
  AttentionParams params;
  PlanOptions options;
};

// Checks the outcome of Attend on `input` (metadata views may differ from
// the batch's own).
void CheckCall(TestBatch* batch, const Case& input, runtime::Executor* executor,
               bool must_succeed) {
  BatchTensors tensors = batch->tensors();
  tensors.cache = input.cache;
  const Status status =
      Attend(input.metadata, tensors, input.params, input.options, executor);
  Trace("status: " + status.ToString());
  if (!status.ok()) {
    if (must_succeed) Fail("a valid batch was rejected: " + status.ToString());
    if (status.code() != StatusCode::kInvalidArgument) {
      Fail("rejected with " + status.ToString() + ", not INVALID_ARGUMENT");
    }
    if (std::memcmp(batch->cache_bytes().data(), batch->original_cache.data(),
                    batch->original_cache.size()) != 0) {
      Fail("a rejected call changed the cache");
    }
    for (float value : batch->out) {
      if (!std::isnan(value)) Fail("a rejected call wrote out");
    }
    return;
  }
  testutil::OracleInput oracle = batch->original_oracle_input();
  oracle.metadata = input.metadata;
  oracle.params = input.params;
  const std::byte* original = oracle.cache.data;
  oracle.cache = input.cache;
  oracle.cache.data = const_cast<std::byte*>(original);
  const testutil::OracleOutput expected = testutil::RunOracle(oracle);
  // The cache: the oracle's view may cover fewer pages than the buffer; the
  // rest must be untouched.
  const std::size_t covered = expected.cache.size();
  const std::string cache_difference = testutil::DescribeCacheDifference(
      input.cache, batch->cache_bytes().first(covered), expected.cache);
  if (!cache_difference.empty()) Fail(cache_difference);
  if (std::memcmp(batch->cache_bytes().data() + covered,
                  batch->original_cache.data() + covered,
                  batch->original_cache.size() - covered) != 0) {
    Fail("the call wrote past the planned cache");
  }
  // A mutated batch may legitimately attend to cached NaNs (the builder's
  // fill for slots that were not cached); then only the writes are checked.
  const bool expected_nan =
      std::any_of(expected.out.begin(), expected.out.end(),
                  [](double value) { return std::isnan(value); });
  if (expected_nan) {
    if (must_succeed) Fail("the oracle saw a NaN in a valid batch");
    return;
  }
  if (tensors.out.size() != expected.out.size()) {
    Fail("out has " + std::to_string(tensors.out.size()) + " floats, oracle " +
         std::to_string(expected.out.size()));
  }
  // The SPEC 4 bound holds for inputs in its domain (uniform or standard
  // normal) with parameters that do not scale scores or values up. The
  // fuzzer also draws sm_scale, k_scale and v_scale up to ~4; where they
  // amplify, the scores reach a few hundred and f32 itself cannot meet that
  // bound, so out is held to the oracle's f32 rounding bound there.
  const AttentionParams& params = input.params;
  const bool amplified =
      std::fabs(params.sm_scale) * params.k_scale.value_or(1.0F) > 1.0F ||
      params.v_scale.value_or(1.0F) > 1.0F;
  const testutil::Comparison comparison = testutil::CompareOutputs(
      tensors.out, expected.out, input.metadata.shape.num_q_heads,
      input.metadata.shape.head_dim, /*tolerance=*/1e-4,
      amplified ? std::span<const double>(expected.f32_rounding_bound)
                : std::span<const double>());
  if (!comparison.ok) {
    Fail(std::to_string(comparison.num_bad) + " outputs off, first " +
         comparison.first_bad);
  }
}

// Values near the edges of what validation must reject: off by one, zero,
// negative, the int32 limits. Computed in 64 bits and clamped to int32.
std::int32_t Interesting(std::uint8_t selector, std::int32_t near) {
  const std::int64_t n = near;
  std::int64_t value = 0;
  switch (selector % 10) {
    case 0:
      value = -1;
      break;
    case 1:
      value = 0;
      break;
    case 2:
      value = n - 1;
      break;
    case 3:
      value = n + 1;
      break;
    case 4:
      value = n;
      break;
    case 5:
      value = std::numeric_limits<std::int32_t>::max();
      break;
    case 6:
      value = std::numeric_limits<std::int32_t>::min();
      break;
    case 7:
      value = n * 2;
      break;
    case 8:
      value = std::int64_t{1} << 30;
      break;
    default:
      value = static_cast<std::int64_t>(selector) - 128;
      break;
  }
  return static_cast<std::int32_t>(
      std::clamp<std::int64_t>(value, std::numeric_limits<std::int32_t>::min(),
                               std::numeric_limits<std::int32_t>::max()));
}

float InterestingFloat(std::uint8_t selector) {
  const float kValues[] = {0.0F,
                           -0.0F,
                           -1.0F,
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::quiet_NaN(),
                           1e-30F,
                           1e30F,
                           0.5F,
                           3.0F};
  return kValues[selector % std::size(kValues)];
}

void Mutate(ByteReader* in, TestBatch* batch, Case* input,
            std::vector<std::int32_t>* kv_lens,
            std::vector<std::int32_t>* page_indices,
            std::vector<std::int32_t>* cu_q_lens,
            std::vector<std::int32_t>* distribution) {
  const std::uint8_t what = in->U8();
  const std::uint8_t index = in->U8();
  const std::uint8_t value = in->U8();
  const auto pick = [&](const std::vector<std::int32_t>& array) {
    return array.empty() ? std::size_t{0} : index % array.size();
  };
  switch (what % 13) {
    case 0:
      if (!kv_lens->empty()) {
        const std::size_t i = pick(*kv_lens);
        (*kv_lens)[i] = Interesting(value, (*kv_lens)[i]);
        Trace("mutate kv_lens[" + std::to_string(i) +
              "] = " + std::to_string((*kv_lens)[i]));
      }
      break;
    case 1:
      if (!page_indices->empty()) {
        const std::size_t i = pick(*page_indices);
        (*page_indices)[i] =
            value % 2 == 0
                ? Interesting(value / 2,
                              static_cast<std::int32_t>(input->cache.num_pages))
                : (*page_indices)[index / 2 % page_indices->size()];
        Trace("mutate page_indices[" + std::to_string(i) +
              "] = " + std::to_string((*page_indices)[i]));
      }
      break;
    case 2: {
      const std::size_t i = pick(*cu_q_lens);
      (*cu_q_lens)[i] = Interesting(value, (*cu_q_lens)[i]);
      Trace("mutate cu_q_lens[" + std::to_string(i) +
            "] = " + std::to_string((*cu_q_lens)[i]));
      break;
    }
    case 3: {
      const std::size_t i = index % 3;
      (*distribution)[i] = static_cast<std::int32_t>(value % 8) - 1;
      Trace("mutate distribution = " + Join(*distribution));
      break;
    }
    case 4:
      input->metadata.shape.num_tokens = static_cast<std::uint32_t>(
          static_cast<std::int64_t>(input->metadata.shape.num_tokens) +
          (value % 5) - 2);
      Trace("mutate num_tokens = " +
            std::to_string(input->metadata.shape.num_tokens));
      break;
    case 5: {
      BatchShape& shape = input->metadata.shape;
      std::uint32_t* fields[] = {&shape.num_q_heads, &shape.num_kv_heads,
                                 &shape.head_dim};
      *fields[index % 3] = value % 9;
      Trace("mutate shape field " + std::to_string(index % 3) + " = " +
            std::to_string(value % 9));
      break;
    }
    case 6: {
      AttentionParams& params = input->params;
      switch (index % 6) {
        case 0:
          params.sliding_window = Interesting(value, 4);
          break;
        case 1:
          params.soft_cap = InterestingFloat(value);
          break;
        case 2:
          params.k_scale = InterestingFloat(value);
          break;
        case 3:
          params.v_scale = InterestingFloat(value);
          break;
        case 4:
          params.sm_scale = InterestingFloat(value);
          break;
        default:
          params.chunk_prefill_size =
              Interesting(value, params.chunk_prefill_size.value_or(1));
          break;
      }
      Trace("mutate param " + std::to_string(index % 6));
      break;
    }
    case 7:
      if (index % 2 == 0) {
        input->options.parallelism = static_cast<int>(value % 4) - 1;
      } else {
        input->options.mixed_range_kernel = KernelKind::kDecode;
        input->options.prefill_range_kernel =
            value % 2 == 0 ? KernelKind::kDecode : KernelKind::kMixed;
      }
      Trace("mutate options");
      break;
    case 8:
      if (value % 2 == 0 && !page_indices->empty()) {
        page_indices->pop_back();
      } else {
        page_indices->push_back(Interesting(value, 0));
      }
      Trace("mutate page_indices size " + std::to_string(page_indices->size()));
      break;
    case 9:
      if (value % 2 == 0 && !cu_q_lens->empty()) {
        cu_q_lens->pop_back();
      } else {
        cu_q_lens->push_back(
            cu_q_lens->empty() ? 0 : Interesting(4, cu_q_lens->back()));
      }
      Trace("mutate cu_q_lens size " + std::to_string(cu_q_lens->size()));
      break;
    case 10: {
      memory::KvLayerView& cache = input->cache;
      if (index % 3 == 0) {
        cache.num_pages -= std::min<std::uint32_t>(cache.num_pages, value % 4);
      } else if (index % 3 == 1) {
        cache.page_size_tokens = value % 9;
      } else {
        cache.token_bytes += value % 3;
      }
      Trace("mutate cache geometry " + std::to_string(index % 3));
      break;
    }
    case 11:
      // Two sequences' pages made the same: overlapping writes, or sharing.
      if (page_indices->size() >= 2) {
        const std::size_t a = pick(*page_indices);
        const std::size_t b = value % page_indices->size();
        (*page_indices)[a] = (*page_indices)[b];
        Trace("mutate page_indices[" + std::to_string(a) + "] = page_indices[" +
              std::to_string(b) + "] = " + std::to_string((*page_indices)[b]));
      }
      break;
    default:
      if (!kv_lens->empty()) {
        kv_lens->pop_back();
        Trace("mutate kv_lens size " + std::to_string(kv_lens->size()));
      }
      break;
  }
  (void)batch;
}

}  // namespace
}  // namespace rpa::attention::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  namespace fz = rpa::attention::fuzz;
  using rpa::attention::KernelKind;
  using rpa::memory::StorageType;
  fz::ByteReader in(data, size);
  fz::g_context.clear();
  std::array<std::uint8_t, 16> header{};
  for (std::size_t i = 0; i < header.size(); ++i) header[i] = in.U8();

  constexpr StorageType kStorage[4] = {StorageType::kF32, StorageType::kF16,
                                       StorageType::kBf16, StorageType::kF32};
  constexpr std::uint32_t kGroup[4] = {1, 2, 3, 3};
  constexpr std::uint32_t kHeadDim[8] = {4, 8, 16, 32, 12, 20, 64, 8};
  constexpr KernelKind kKernel[3] = {KernelKind::kDecode, KernelKind::kPrefill,
                                     KernelKind::kMixed};
  constexpr std::uint32_t kQBlock[8] = {0, 1, 2, 3, 4, 8, 16, 0};
  constexpr std::uint32_t kKvBlock[8] = {0, 1, 2, 5, 8, 16, 32, 0};
  constexpr std::uint32_t kSplit[4] = {0, 1, 4, 16};

  const int num_seqs = (header[0] & 3) + 1;
  const bool malformed = (header[0] & 32) != 0;
  const bool use_executor = (header[0] & 64) != 0;
  rpa::attention::testutil::BatchSpec spec;
  spec.storage = kStorage[(header[0] >> 2) & 3];
  spec.params.causal = (header[0] & 16) == 0;
  spec.values = (header[0] & 128) != 0
                    ? rpa::attention::testutil::ValueDistribution::kNormal
                    : rpa::attention::testutil::ValueDistribution::kUniform;
  spec.num_kv_heads = (header[1] & 1) + 1;
  spec.num_q_heads = spec.num_kv_heads * kGroup[(header[1] >> 1) & 3];
  spec.head_dim = kHeadDim[(header[1] >> 3) & 7];
  spec.page_size_tokens = (header[2] & 7) + 1;
  spec.extra_pages = (header[2] >> 3) & 3;
  spec.extra_table_entries = (header[2] >> 5) & 3;
  spec.shuffle_pages = (header[2] & 128) == 0;
  const std::uint8_t flags = header[3];
  const std::int32_t chunk = ((flags >> 5) & 7) + 1;
  spec.params.chunk_prefill_size = chunk;
  if ((flags & 1) != 0) spec.params.sliding_window = 1 + header[4] % 40;
  if ((flags & 2) != 0) {
    spec.params.soft_cap = (header[5] % 2 == 0 ? 1.0F : -1.0F) *
                           (0.25F + static_cast<float>(header[5]) / 16);
  }
  if ((flags & 4) != 0) {
    spec.params.k_scale = 0.125F + static_cast<float>(header[6]) / 64;
  }
  if ((flags & 8) != 0) {
    spec.params.v_scale = 0.125F + static_cast<float>(header[7]) / 64;
  }
  if ((flags & 16) != 0) {
    spec.params.sm_scale = (static_cast<float>(header[8]) - 128) / 32;
  }
  rpa::attention::PlanOptions options;
  const auto kernel = [&](int shift, KernelKind fallback) {
    const int code = (header[9] >> shift) & 3;
    return code == 3 ? fallback : kKernel[code];
  };
  options.parallelism = ((header[9] >> 6) & 3) + 1;
  options.prefill_blocks.q_tokens_per_block = kQBlock[header[10] & 7];
  options.prefill_blocks.kv_tokens_per_block = kKvBlock[(header[10] >> 3) & 7];
  options.mixed_blocks = options.prefill_blocks;
  options.decode_min_kv_tokens_per_split = kSplit[(header[10] >> 6) & 3];

  std::array<std::int32_t, 3> distribution{};
  distribution[0] = header[11] % (num_seqs + 1);
  distribution[1] =
      distribution[0] + header[12] % (num_seqs - distribution[0] + 1);
  distribution[2] =
      distribution[1] + header[13] % (num_seqs - distribution[1] + 1);
  spec.distribution = distribution;
  spec.seed = (std::uint64_t{header[14]} << 8) | header[15];
  // Kernels: the decode kernel only where every q_len is 1 (the prefill
  // range is q_len 1 only with chunk 1; the mixed range never, to keep
  // valid inputs valid).
  options.decode_range_kernel = kernel(0, KernelKind::kDecode);
  options.prefill_range_kernel = kernel(2, KernelKind::kPrefill);
  options.mixed_range_kernel = kernel(4, KernelKind::kMixed);
  if (options.prefill_range_kernel == KernelKind::kDecode && chunk != 1) {
    options.prefill_range_kernel = KernelKind::kPrefill;
  }
  if (options.mixed_range_kernel == KernelKind::kDecode) {
    options.mixed_range_kernel = KernelKind::kMixed;
  }

  for (int i = 0; i < num_seqs; ++i) {
    const std::uint8_t q_byte = in.U8();
    const std::uint8_t kv_byte = in.U8();
    std::int32_t q_len = 1;
    if (i < distribution[0]) {
      q_len = 1;
    } else if (i < distribution[1]) {
      q_len = chunk;
    } else if (i < distribution[2]) {
      q_len = 1 + q_byte % 12;
    } else {
      q_len = q_byte % 4;
    }
    spec.sequences.push_back({q_len, q_len + kv_byte % 24});
  }
  rpa::attention::testutil::TestBatch batch =
      rpa::attention::testutil::BuildBatch(spec);

  std::vector<std::int32_t> kv_lens = batch.kv_lens;
  std::vector<std::int32_t> page_indices = batch.page_indices;
  std::vector<std::int32_t> cu_q_lens = batch.cu_q_lens;
  std::vector<std::int32_t> dist = batch.distribution;
  fz::Case input;
  input.cache = batch.cache();
  input.params = batch.params;
  input.options = options;
  input.metadata = batch.metadata();
  fz::Trace("S " + std::to_string(num_seqs) + " Hq " +
            std::to_string(spec.num_q_heads) + " Hkv " +
            std::to_string(spec.num_kv_heads) + " D " +
            std::to_string(spec.head_dim) + " ps " +
            std::to_string(spec.page_size_tokens) + " storage " +
            std::to_string(static_cast<int>(spec.storage)) + " kv_lens " +
            fz::Join(kv_lens) + " cu_q_lens " + fz::Join(cu_q_lens) +
            " distribution " + fz::Join(dist) + " pages " +
            fz::Join(page_indices));
  if (malformed) {
    for (int m = 0; m < 4 && !in.empty(); ++m) {
      fz::Mutate(&in, &batch, &input, &kv_lens, &page_indices, &cu_q_lens,
                 &dist);
    }
    input.metadata.kv_lens = kv_lens;
    input.metadata.page_indices = page_indices;
    input.metadata.cu_q_lens = cu_q_lens;
    input.metadata.distribution = dist;
    // Size out for the mutated batch when it names a plausible T_used, so a
    // mutation that keeps the batch valid can run.
    if (dist.size() == 3 && dist[2] >= 0 &&
        static_cast<std::size_t>(dist[2]) < cu_q_lens.size()) {
      const std::int64_t used = cu_q_lens[static_cast<std::size_t>(dist[2])];
      const std::int64_t floats = used * input.metadata.shape.num_q_heads *
                                  input.metadata.shape.head_dim;
      if (used >= 0 && floats <= (std::int64_t{1} << 20)) {
        batch.out.assign(static_cast<std::size_t>(floats),
                         std::numeric_limits<float>::quiet_NaN());
      }
    }
  }
  fz::CheckCall(&batch, input, use_executor ? fz::SharedExecutor() : nullptr,
                /*must_succeed=*/!malformed);
  return 0;
}
