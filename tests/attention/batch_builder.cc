#include "attention/batch_builder.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>

#include "rpa/attention/storage_convert.h"
#include "rpa/runtime/check.h"
#include "rpa/runtime/int_math.h"

namespace rpa::attention::testutil {
namespace {

using memory::StorageBytes;
using memory::StorageType;

class ValueSource {
 public:
  ValueSource(std::uint64_t seed, ValueDistribution distribution)
      : engine_(seed), distribution_(distribution) {}
  float Next() {
    return distribution_ == ValueDistribution::kUniform ? uniform_(engine_)
                                                        : normal_(engine_);
  }
  std::mt19937_64& engine() { return engine_; }

 private:
  std::mt19937_64 engine_;
  ValueDistribution distribution_;
  std::uniform_real_distribution<float> uniform_{0.0F, 1.0F};
  std::normal_distribution<float> normal_{0.0F, 1.0F};
};

}  // namespace

std::array<std::byte, 4> NanBytes(StorageType type) {
  std::array<std::byte, 4> bytes{};
  switch (type) {
    case StorageType::kF32: {
      const std::uint32_t bits = 0x7FC0'1234U;
      std::memcpy(bytes.data(), &bits, 4);
      break;
    }
    case StorageType::kF16: {
      const std::uint16_t bits = 0x7E12U;
      std::memcpy(bytes.data(), &bits, 2);
      break;
    }
    case StorageType::kBf16: {
      const std::uint16_t bits = 0x7FC1U;
      std::memcpy(bytes.data(), &bits, 2);
      break;
    }
  }
  return bytes;
}

BatchMetadata TestBatch::metadata() const {
  return BatchMetadata{.shape = shape,
                       .kv_lens = kv_lens,
                       .page_indices = page_indices,
                       .cu_q_lens = cu_q_lens,
                       .distribution = distribution};
}

memory::KvLayerView TestBatch::cache() const {
  memory::KvLayerView view;
  // The view is the caller's handle on a buffer this batch owns; kernels
  // write through it.
  view.data =
      reinterpret_cast<std::byte*>(const_cast<float*>(cache_storage.data()));
  view.num_pages = num_pages;
  view.page_size_tokens = page_size_tokens;
  view.num_combined_heads = 2 * shape.num_kv_heads;
  view.head_dim = shape.head_dim;
  view.storage = storage;
  view.token_bytes = static_cast<std::size_t>(view.num_combined_heads) *
                     view.head_dim * StorageBytes(storage);
  view.page_bytes = view.token_bytes * page_size_tokens;
  return view;
}

BatchTensors TestBatch::tensors() {
  return BatchTensors{.q = q, .k = k, .v = v, .cache = cache(), .out = out};
}

std::span<const std::byte> TestBatch::cache_bytes() const {
  return {reinterpret_cast<const std::byte*>(cache_storage.data()),
          original_cache.size()};
}

std::int32_t TestBatch::num_used_tokens() const {
  return cu_q_lens[static_cast<std::size_t>(distribution[2])];
}

OracleInput TestBatch::original_oracle_input() const {
  memory::KvLayerView view = cache();
  view.data = const_cast<std::byte*>(original_cache.data());
  return OracleInput{.metadata = metadata(),
                     .params = params,
                     .cache = view,
                     .q = q,
                     .k = k,
                     .v = v};
}

void TestBatch::Reset() {
  std::memcpy(cache_storage.data(), original_cache.data(),
              original_cache.size());
  std::fill(out.begin(), out.end(), std::numeric_limits<float>::quiet_NaN());
}

std::string CompareWithOracle(const TestBatch& batch,
                              const OracleOutput& expected, double tolerance) {
  std::string problems;
  const Comparison out =
      CompareOutputs(batch.out, expected.out, batch.shape.num_q_heads,
                     batch.shape.head_dim, tolerance);
  if (!out.ok) {
    problems += std::to_string(out.num_bad) + " bad outputs, first " +
                out.first_bad + "; max scaled error " +
                std::to_string(out.max_scaled_error) + "\n";
  }
  const std::string cache = DescribeCacheDifference(
      batch.cache(), batch.cache_bytes(), expected.cache);
  if (!cache.empty()) problems += cache + "\n";
  return problems;
}

TestBatch BuildBatch(const BatchSpec& spec) {
  RPA_CHECK(!spec.sequences.empty());
  RPA_CHECK(spec.page_size_tokens > 0 && spec.num_kv_heads > 0 &&
            spec.head_dim > 0);
  RPA_CHECK(spec.num_q_heads % spec.num_kv_heads == 0);
  TestBatch batch;
  ValueSource values(spec.seed, spec.values);
  const auto num_seqs = static_cast<std::int32_t>(spec.sequences.size());
  const auto ps = static_cast<std::int32_t>(spec.page_size_tokens);
  batch.params = spec.params;
  batch.page_size_tokens = spec.page_size_tokens;
  batch.storage = spec.storage;
  batch.distribution.assign(3, 0);
  if (spec.distribution.has_value()) {
    std::copy(spec.distribution->begin(), spec.distribution->end(),
              batch.distribution.begin());
  } else {
    batch.distribution = {0, 0, num_seqs};
  }

  // Lengths and page counts.
  std::int32_t max_pages = 0;
  std::int64_t total_pages = 0;
  batch.cu_q_lens.push_back(0);
  for (const SequenceSpec& seq : spec.sequences) {
    RPA_CHECK(seq.q_len >= 0 && seq.q_len <= seq.kv_len);
    batch.kv_lens.push_back(seq.kv_len);
    batch.cu_q_lens.push_back(batch.cu_q_lens.back() + seq.q_len);
    const std::int32_t pages = DivideRoundUp(seq.kv_len, ps);
    max_pages = std::max(max_pages, pages);
    total_pages += pages;
  }
  batch.pages_per_sequence =
      static_cast<std::uint32_t>(max_pages) + spec.extra_table_entries;
  if (batch.pages_per_sequence == 0) batch.pages_per_sequence = 1;
  batch.num_pages = static_cast<std::uint32_t>(total_pages) + spec.extra_pages;
  if (batch.num_pages == 0) batch.num_pages = 1;
  const auto num_tokens = static_cast<std::uint32_t>(
      batch.cu_q_lens.back() + static_cast<std::int32_t>(spec.padding_tokens));
  batch.shape = BatchShape{.num_tokens = num_tokens,
                           .num_q_heads = spec.num_q_heads,
                           .num_kv_heads = spec.num_kv_heads,
                           .head_dim = spec.head_dim};

  // Page tables: a shuffled permutation of the pages, garbage in the unused
  // entries (never dereferenced by a correct kernel; ASan catches one that
  // does).
  std::vector<std::int32_t> order(batch.num_pages);
  std::iota(order.begin(), order.end(), 0);
  if (spec.shuffle_pages) {
    std::shuffle(order.begin(), order.end(), values.engine());
  }
  const std::int32_t garbage[] = {
      -7,
      std::numeric_limits<std::int32_t>::min(),
      std::numeric_limits<std::int32_t>::max(),
      static_cast<std::int32_t>(batch.num_pages),
      1 << 30,
      -1,
      static_cast<std::int32_t>(batch.num_pages) + 1000};
  std::size_t next_page = 0;
  std::size_t next_garbage = 0;
  batch.page_indices.resize(static_cast<std::size_t>(num_seqs) *
                            batch.pages_per_sequence);
  for (std::int32_t i = 0; i < num_seqs; ++i) {
    const std::int32_t pages =
        DivideRoundUp(spec.sequences[static_cast<std::size_t>(i)].kv_len, ps);
    for (std::uint32_t p = 0; p < batch.pages_per_sequence; ++p) {
      const std::size_t entry =
          static_cast<std::size_t>(i) * batch.pages_per_sequence + p;
      if (static_cast<std::int32_t>(p) < pages) {
        batch.page_indices[entry] = order[next_page++];
      } else {
        batch.page_indices[entry] =
            garbage[next_garbage++ % std::size(garbage)];
      }
    }
  }

  // The cache: NaN everywhere, then values at every sequence's cached
  // positions (< gap). Positions [gap, kv_len) stay NaN until written.
  const std::size_t cache_bytes = CacheBytes(batch.cache());
  const std::size_t element_bytes = StorageBytes(spec.storage);
  batch.cache_storage.assign((cache_bytes + 3) / 4, 0.0F);
  auto* bytes = reinterpret_cast<std::byte*>(batch.cache_storage.data());
  const std::array<std::byte, 4> nan = NanBytes(spec.storage);
  for (std::size_t offset = 0; offset + element_bytes <= cache_bytes;
       offset += element_bytes) {
    std::memcpy(bytes + offset, nan.data(), element_bytes);
  }
  const memory::KvLayerView view = batch.cache();
  const std::size_t token_floats =
      static_cast<std::size_t>(view.num_combined_heads) * spec.head_dim;
  std::vector<float> token_values(token_floats);
  for (std::int32_t i = 0; i < num_seqs; ++i) {
    const SequenceSpec& seq = spec.sequences[static_cast<std::size_t>(i)];
    const std::int32_t gap = seq.kv_len - seq.q_len;
    for (std::int32_t pos = 0; pos < gap; ++pos) {
      const std::int32_t page =
          batch.page_indices[static_cast<std::size_t>(i) *
                                 batch.pages_per_sequence +
                             static_cast<std::size_t>(pos / ps)];
      for (float& value : token_values) value = values.Next();
      ConvertToStorage(
          token_values, spec.storage,
          view.SlotAddress(memory::MakePageId(static_cast<std::uint32_t>(page)),
                           static_cast<std::uint32_t>(pos % ps)));
    }
  }
  batch.original_cache.assign(bytes, bytes + cache_bytes);

  // q / k / v: random rows for every sequence's tokens, NaN padding rows.
  const float kNan = std::numeric_limits<float>::quiet_NaN();
  const auto fill = [&](std::vector<float>* tensor, std::uint32_t heads) {
    const std::size_t row = static_cast<std::size_t>(heads) * spec.head_dim;
    tensor->resize(row * num_tokens);
    const std::size_t real =
        row * static_cast<std::size_t>(batch.cu_q_lens.back());
    for (std::size_t e = 0; e < tensor->size(); ++e) {
      (*tensor)[e] = e < real ? values.Next() : kNan;
    }
  };
  fill(&batch.q, spec.num_q_heads);
  fill(&batch.k, spec.num_kv_heads);
  fill(&batch.v, spec.num_kv_heads);
  const std::int32_t d2 = batch.distribution[2];
  RPA_CHECK(d2 >= 0 && d2 <= num_seqs);
  batch.out.assign(static_cast<std::size_t>(batch.num_used_tokens()) *
                       spec.num_q_heads * spec.head_dim,
                   kNan);
  return batch;
}

}  // namespace rpa::attention::testutil
