// Hand-built batches through the public API against the double-precision
// oracle, out within the SPEC section 4 bound and the whole cache byte for
// byte: the sliding-window write-back of SPEC section 2, table layouts, only
// one kind of sequence, unprocessed sequences and padding, random batches, and
// a NaN in a visible cached key, which must stay in its sequence.

#include <gtest/gtest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "attention/attention_sweep_fixture.h"
#include "attention/batch_builder.h"
#include "attention/oracle.h"

#include "rpa/attention/plan.h"
#include "rpa/attention/storage_convert.h"

namespace rpa::attention {
namespace {

using namespace ::rpa::attention::attention_sweep_fixture;  // NOLINT: test
                                                            // helpers

// --- sliding-window write-back (SPEC section 2) -----------------------------

TEST(AttentionSweepTest, WindowHiddenTokensAreStillWritten) {
  // The public TPU kernel leaves positions [0, 256) unwritten here.
  for (const StorageType storage : {StorageType::kF32, StorageType::kBf16}) {
    BatchSpec spec;
    spec.sequences = {{393, 393}};
    spec.params.sliding_window = 128;
    spec.num_q_heads = 2;
    spec.num_kv_heads = 1;
    spec.head_dim = 64;
    spec.page_size_tokens = 16;
    spec.storage = storage;
    TestBatch batch = BuildBatch(spec);
    ExpectMatchesOracle(&batch);
    // Spelled out: every position [0, 393) holds the stored new k and v.
    const memory::KvLayerView cache = batch.cache();
    const std::size_t element = memory::StorageBytes(storage);
    std::vector<std::byte> want(64 * element);
    for (std::int32_t pos = 0; pos < 393; ++pos) {
      const std::int32_t page =
          batch.page_indices[static_cast<std::size_t>(pos / 16)];
      const std::byte* slot = cache.SlotAddress(
          memory::MakePageId(static_cast<std::uint32_t>(page)),
          static_cast<std::uint32_t>(pos % 16));
      ConvertToStorage(std::span<const float>(
                           &batch.k[static_cast<std::size_t>(pos) * 64], 64),
                       storage, want.data());
      ASSERT_EQ(std::memcmp(slot, want.data(), want.size()), 0)
          << "K of position " << pos;
      ConvertToStorage(std::span<const float>(
                           &batch.v[static_cast<std::size_t>(pos) * 64], 64),
                       storage, want.data());
      ASSERT_EQ(std::memcmp(slot + 64 * element, want.data(), want.size()), 0)
          << "V of position " << pos;
    }
  }
}

TEST(AttentionSweepTest, WindowWithLongCachedPrefix) {
  BatchSpec spec;
  spec.sequences = {{1, 1000}, {1, 129}, {200, 1000}, {128, 128}, {5, 300}};
  spec.distribution = std::array<std::int32_t, 3>{2, 2, 5};
  spec.params.sliding_window = 128;
  spec.num_q_heads = 4;
  spec.num_kv_heads = 2;
  spec.head_dim = 32;
  spec.page_size_tokens = 16;
  spec.storage = StorageType::kF16;
  TestBatch batch = BuildBatch(spec);
  ExpectMatchesOracle(&batch);
}

// --- layouts -----------------------------------------------------------------

TEST(AttentionSweepTest, ExactTablesNoSlackNoPadding) {
  BatchSpec spec;
  spec.sequences = {{1, 32}, {4, 32}, {32, 32}};
  spec.num_q_heads = 4;
  spec.num_kv_heads = 4;
  spec.head_dim = 16;
  spec.page_size_tokens = 8;
  spec.extra_pages = 0;
  spec.extra_table_entries = 0;
  spec.padding_tokens = 0;
  spec.shuffle_pages = false;
  TestBatch batch = BuildBatch(spec);
  ExpectMatchesOracle(&batch);
}

TEST(AttentionSweepTest, OnlyDecodeSequences) {
  BatchSpec spec;
  std::mt19937 rng(5);
  for (int i = 0; i < 24; ++i) {
    spec.sequences.push_back({1, static_cast<std::int32_t>(1 + rng() % 300)});
  }
  spec.distribution = std::array<std::int32_t, 3>{24, 24, 24};
  spec.num_q_heads = 16;
  spec.num_kv_heads = 4;
  spec.head_dim = 64;
  spec.page_size_tokens = 16;
  spec.storage = StorageType::kBf16;
  TestBatch batch = BuildBatch(spec);
  ExpectMatchesOracle(&batch);
}

TEST(AttentionSweepTest, OnlyPrefillChunks) {
  BatchSpec spec;
  spec.sequences = {{32, 32}, {32, 64}, {32, 200}, {32, 33}};
  spec.distribution = std::array<std::int32_t, 3>{0, 4, 4};
  spec.params.chunk_prefill_size = 32;
  spec.num_q_heads = 8;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.page_size_tokens = 16;
  TestBatch batch = BuildBatch(spec);
  ExpectMatchesOracle(&batch);
}

TEST(AttentionSweepTest, UnprocessedSequencesAndPaddingAreLeftAlone) {
  BatchSpec spec;
  spec.sequences = {{1, 10}, {3, 3}, {4, 20}, {1, 5}, {6, 6}};
  spec.distribution = std::array<std::int32_t, 3>{1, 1, 2};
  spec.num_q_heads = 2;
  spec.num_kv_heads = 1;
  spec.head_dim = 8;
  spec.page_size_tokens = 4;
  spec.padding_tokens = 5;
  TestBatch batch = BuildBatch(spec);
  ExpectMatchesOracle(&batch);
  EXPECT_EQ(batch.out.size(), 4U * 2 * 8);
}

TEST(AttentionSweepTest, RandomBatches) {
  std::mt19937 rng(2024);
  const StorageType storages[] = {StorageType::kF32, StorageType::kF16,
                                  StorageType::kBf16};
  for (int trial = 0; trial < 25; ++trial) {
    BatchSpec spec;
    const std::int32_t chunk = 1 + static_cast<std::int32_t>(rng() % 12);
    const int num_decode = static_cast<int>(rng() % 4);
    const int num_prefill = static_cast<int>(rng() % 3);
    const int num_mixed = static_cast<int>(rng() % 4);
    const int num_idle = static_cast<int>(rng() % 2);
    const auto kv_after = [&](std::int32_t q_len) {
      return q_len + static_cast<std::int32_t>(rng() % 50);
    };
    for (int i = 0; i < num_decode; ++i)
      spec.sequences.push_back({1, kv_after(1)});
    for (int i = 0; i < num_prefill; ++i) {
      spec.sequences.push_back({chunk, kv_after(chunk)});
    }
    for (int i = 0; i < num_mixed + num_idle; ++i) {
      const auto q = 1 + static_cast<std::int32_t>(rng() % 20);
      spec.sequences.push_back({q, kv_after(q)});
    }
    if (spec.sequences.empty()) spec.sequences.push_back({1, 1});
    const int processed = static_cast<int>(spec.sequences.size()) - num_idle;
    spec.distribution = std::array<std::int32_t, 3>{
        num_decode, num_decode + num_prefill, std::max(processed, 0)};
    spec.params.chunk_prefill_size = chunk;
    spec.num_kv_heads = 1 + static_cast<std::uint32_t>(rng() % 3);
    spec.num_q_heads =
        spec.num_kv_heads * (1 + static_cast<std::uint32_t>(rng() % 4));
    spec.head_dim = 4U << (rng() % 5);
    spec.page_size_tokens = 1 + static_cast<std::uint32_t>(rng() % 16);
    spec.storage = storages[rng() % 3];
    spec.params.causal = rng() % 4 != 0;
    if (rng() % 3 == 0) {
      spec.params.sliding_window = 1 + static_cast<std::int32_t>(rng() % 30);
    }
    if (rng() % 3 == 0)
      spec.params.soft_cap = 1.0F + static_cast<float>(rng() % 10);
    spec.params.sm_scale = 0.1F + 0.1F * static_cast<float>(rng() % 10);
    spec.values = rng() % 2 == 0 ? testutil::ValueDistribution::kUniform
                                 : testutil::ValueDistribution::kNormal;
    spec.seed = rng();
    TestBatch batch = BuildBatch(spec);
    SCOPED_TRACE("trial " + std::to_string(trial));
    ExpectMatchesOracle(&batch);
  }
}

TEST(AttentionSweepTest, NanInAVisibleCachedKeyStaysInItsSequence) {
  // A NaN inside kv_len is the caller's data (unlike slots past kv_len): the
  // sequence that sees it may get NaN rows, but the call must not crash (no
  // data-dependent check) and no other sequence may be affected. Sequence 1
  // (decode, token 1) and sequence 3 (mixed, tokens 4-6) see NaN keys and
  // values at every cached position.
  BatchSpec spec;
  spec.sequences = {{1, 6}, {1, 9}, {2, 2}, {3, 8}};
  spec.distribution = std::array<std::int32_t, 3>{2, 2, 4};
  spec.num_q_heads = 4;
  spec.num_kv_heads = 2;
  spec.head_dim = 8;
  spec.page_size_tokens = 4;
  TestBatch batch = BuildBatch(spec);
  const std::array<std::byte, 4> nan = testutil::NanBytes(StorageType::kF32);
  for (const std::size_t seq : {1U, 3U}) {
    // Every cached position (< gap), whole tokens: K and V of both kv heads.
    const std::int32_t gap =
        batch.kv_lens[seq] - (batch.cu_q_lens[seq + 1] - batch.cu_q_lens[seq]);
    for (std::int32_t pos = 0; pos < gap; ++pos) {
      const std::int32_t page =
          batch.page_indices[seq * batch.pages_per_sequence +
                             static_cast<std::size_t>(pos / 4)];
      std::byte* slot = batch.cache().SlotAddress(
          memory::MakePageId(static_cast<std::uint32_t>(page)),
          static_cast<std::uint32_t>(pos % 4));
      for (std::size_t offset = 0; offset < batch.cache().token_bytes;
           offset += 4) {
        std::memcpy(slot + offset, nan.data(), 4);
      }
    }
  }
  std::memcpy(batch.original_cache.data(), batch.cache_bytes().data(),
              batch.original_cache.size());
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch.original_oracle_input());
  const KernelKind kinds[] = {KernelKind::kDecode, KernelKind::kPrefill,
                              KernelKind::kMixed};
  for (const KernelKind decode : kinds) {
    for (const KernelKind mixed : {KernelKind::kPrefill, KernelKind::kMixed}) {
      SCOPED_TRACE(std::string(KernelKindName(decode)) + " / " +
                   std::string(KernelKindName(mixed)));
      batch.Reset();
      const PlanOptions options{.decode_range_kernel = decode,
                                .mixed_range_kernel = mixed};
      const Status status =
          Attend(batch.metadata(), batch.tensors(), batch.params, options);
      ASSERT_TRUE(status.ok()) << status;
      EXPECT_EQ(testutil::DescribeCacheDifference(
                    batch.cache(), batch.cache_bytes(), expected.cache),
                "");
      // Tokens 0 (sequence 0) and 2-3 (sequence 2) match the oracle.
      const std::size_t row_floats = 4 * 8;
      for (const auto& [first, last] :
           {std::pair<std::size_t, std::size_t>{0, 1},
            std::pair<std::size_t, std::size_t>{2, 4}}) {
        const std::size_t count = (last - first) * row_floats;
        const testutil::Comparison comparison =
            testutil::CompareOutputs(std::span<const float>(batch.out).subspan(
                                         first * row_floats, count),
                                     std::span<const double>(expected.out)
                                         .subspan(first * row_floats, count),
                                     4, 8);
        EXPECT_TRUE(comparison.ok) << comparison.first_bad;
      }
    }
  }
}

}  // namespace
}  // namespace rpa::attention
