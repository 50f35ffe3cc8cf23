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

#include "attention_fuzz.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "attention/batch_builder.h"

#include "rpa/attention/plan.h"
#include "rpa/runtime/executor.h"

namespace rpa::attention::fuzz {
namespace {

bool TraceEnabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("RPA_FUZZ_TRACE");
    return value != nullptr && value[0] != '\0' && value[0] != '0';
  }();
  return enabled;
}

std::string g_context;  // the decoded case, printed on failure

runtime::Executor* SharedExecutor() {
  static runtime::Executor* executor = [] {
    auto created = runtime::Executor::Create({.num_workers = 2});
    if (!created.ok()) Fail("executor: " + created.status().ToString());
    return created->release();  // lives for the process
  }();
  return executor;
}

}  // namespace

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

std::string Join(const std::vector<std::int32_t>& values) {
  std::string text = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i != 0) text += ", ";
    text += std::to_string(values[i]);
  }
  return text + "}";
}

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
