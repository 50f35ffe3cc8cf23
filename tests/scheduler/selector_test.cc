#include "rpa/scheduler/selector.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "rpa/attention/device_run.h"
#include "rpa/attention/plan.h"
#include "rpa/device/device_spec.h"
#include "rpa/scheduler/attention_workloads.h"

namespace rpa::scheduler {
namespace {

using attention::KernelKind;

// Metadata for sequences given as (q_len, kv_len) with a distribution; Hq 32,
// Hkv 8, D 128; enough pages for everything (the selector reads shapes only).
struct Batch {
  std::vector<std::int32_t> kv_lens, page_indices, cu_q_lens, distribution;
  attention::BatchMetadata metadata;
  memory::KvLayerView cache;

  Batch(std::vector<std::pair<int, int>> seqs, std::vector<int> dist,
        std::uint32_t page_size = 16,
        memory::StorageType storage = memory::StorageType::kBf16) {
    cu_q_lens.push_back(0);
    std::uint32_t pps = 1;
    for (auto [q, kv] : seqs) {
      kv_lens.push_back(kv);
      cu_q_lens.push_back(cu_q_lens.back() + q);
      pps = std::max(
          pps, (static_cast<std::uint32_t>(kv) + page_size - 1) / page_size);
    }
    page_indices.assign(seqs.size() * pps, 0);
    std::int32_t next = 0;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      const auto pages = (seqs[i].second + static_cast<int>(page_size) - 1) /
                         static_cast<int>(page_size);
      for (int p = 0; p < pages; ++p) {
        page_indices[i * pps + static_cast<std::size_t>(p)] = next++;
      }
    }
    distribution.assign(dist.begin(), dist.end());
    metadata = {
        .shape = {.num_tokens = static_cast<std::uint32_t>(cu_q_lens.back()),
                  .num_q_heads = 32,
                  .num_kv_heads = 8,
                  .head_dim = 128},
        .kv_lens = kv_lens,
        .page_indices = page_indices,
        .cu_q_lens = cu_q_lens,
        .distribution = distribution};
    cache.num_pages = static_cast<std::uint32_t>(std::max(next, 1));
    cache.page_size_tokens = page_size;
    cache.num_combined_heads = 16;
    cache.head_dim = 128;
    cache.storage = storage;
    cache.token_bytes = 16 * 128 * memory::StorageBytes(storage);
    cache.page_bytes = cache.token_bytes * page_size;
    cache.data = nullptr;  // the selector and planning never read it
  }
};

TEST(SelectorTest, DecodeOnlyBatchUsesTheDecodeKernelOnly) {
  auto selector = KernelSelector::Create("tpu7x", TuningTable("tpu7x", {}));
  ASSERT_TRUE(selector.ok()) << selector.status().ToString();
  Batch batch({{1, 2048}, {1, 100}, {1, 700}}, {3, 3, 3});
  Selection s = selector->Select(batch.metadata, batch.cache);
  EXPECT_TRUE(s.ranges[0].used);
  EXPECT_EQ(s.ranges[0].kernel, KernelKind::kDecode);
  EXPECT_EQ(s.ranges[0].key.max_kv_len, 2048U);
  EXPECT_EQ(s.ranges[0].key.q_per_kv, 4U);
  EXPECT_FALSE(s.ranges[1].used);
  EXPECT_FALSE(s.ranges[2].used);
  // Fallback rule (empty table): decode q = the sequences 512 KiB of f32
  // queries hold (32 at Hq 32, D 128), at most the range's 3; kv 1024
  // tokens, sub-tile 512.
  EXPECT_FALSE(s.ranges[0].from_table);
  EXPECT_EQ(s.device_options.decode_blocks.q_tokens_per_block, 3U);
  EXPECT_EQ(s.device_options.decode_blocks.kv_pages_per_block, 64U);
  EXPECT_EQ(s.device_options.decode_blocks.compute_kv_tokens, 512U);
}

TEST(SelectorTest, PrefillOnlyAndMixedRanges) {
  auto selector = KernelSelector::Create("tpu7x", TuningTable("tpu7x", {}));
  ASSERT_TRUE(selector.ok());
  Batch prefill({{512, 512}}, {0, 1, 1});
  Selection s = selector->Select(prefill.metadata, prefill.cache);
  EXPECT_FALSE(s.ranges[0].used);
  EXPECT_TRUE(s.ranges[1].used);
  EXPECT_EQ(s.ranges[1].kernel, KernelKind::kPrefill);
  EXPECT_EQ(s.device_options.prefill_blocks.q_tokens_per_block, 256U);
  EXPECT_EQ(s.device_options.prefill_blocks.kv_pages_per_block, 32U);

  Batch mixed({{1, 300}, {64, 128}, {37, 900}, {1, 50}}, {1, 2, 4});
  s = selector->Select(mixed.metadata, mixed.cache);
  EXPECT_EQ(s.ranges[0].kernel, KernelKind::kDecode);
  EXPECT_EQ(s.ranges[1].kernel, KernelKind::kPrefill);
  EXPECT_EQ(s.ranges[2].kernel, KernelKind::kMixed);
  EXPECT_EQ(s.ranges[2].key.max_q_len, 37U);
  EXPECT_EQ(s.ranges[2].key.max_kv_len, 900U);
  EXPECT_EQ(s.plan_options.mixed_range_kernel, KernelKind::kMixed);
  // q block: the longest q_len rounded up to 8.
  EXPECT_EQ(s.device_options.mixed_blocks.q_tokens_per_block, 40U);

  // A mixed range of q_len-1 sequences runs the decode kernel.
  Batch decode_in_mixed({{1, 300}, {1, 30}}, {0, 0, 2});
  s = selector->Select(decode_in_mixed.metadata, decode_in_mixed.cache);
  EXPECT_TRUE(s.ranges[2].used);
  EXPECT_EQ(s.ranges[2].kernel, KernelKind::kDecode);
  EXPECT_EQ(s.plan_options.mixed_range_kernel, KernelKind::kDecode);
}

TEST(SelectorTest, EmptyBatchSelectsNothing) {
  auto selector = KernelSelector::Create("host");
  ASSERT_TRUE(selector.ok());
  Batch empty({{1, 10}}, {0, 0, 0});
  Selection s = selector->Select(empty.metadata, empty.cache);
  for (const KernelChoice& c : s.ranges) EXPECT_FALSE(c.used);
}

TEST(SelectorTest, TableEntriesWinOverTheFallback) {
  TuningEntry decode{.kernel = KernelKind::kDecode,
                     .key = {.storage = memory::StorageType::kBf16,
                             .head_dim = 128,
                             .q_per_kv = 4,
                             .page_size = 16,
                             .max_q_len = 1,
                             .max_kv_len = 4096},
                     .q_tokens_per_block = 1,
                     .kv_tokens_per_block = 256,
                     .compute_kv_tokens = 128};
  auto selector =
      KernelSelector::Create("tpu7x", TuningTable("tpu7x", {decode}));
  ASSERT_TRUE(selector.ok());
  Batch batch({{1, 2048}}, {1, 1, 1});
  Selection s = selector->Select(batch.metadata, batch.cache);
  EXPECT_TRUE(s.ranges[0].from_table);
  EXPECT_EQ(s.device_options.decode_blocks.kv_pages_per_block, 16U);
  EXPECT_EQ(s.device_options.decode_blocks.compute_kv_tokens, 128U);
  // Another page size is not covered: fallback.
  Batch other({{1, 2048}}, {1, 1, 1}, 32);
  s = selector->Select(other.metadata, other.cache);
  EXPECT_FALSE(s.ranges[0].from_table);

  EXPECT_EQ(
      KernelSelector::Create("v6e", TuningTable("tpu7x", {})).status().code(),
      StatusCode::kInvalidArgument);
}

// A device JSON file, removed when the test is done with it.
struct DeviceFile {
  explicit DeviceFile(std::string file) : path(std::move(file)) {}
  DeviceFile(const DeviceFile&) = delete;
  DeviceFile& operator=(const DeviceFile&) = delete;
  ~DeviceFile() { std::remove(path.c_str()); }
  std::string path;
};

// A tpu7x with `vmem_bytes` of VMEM, as a device JSON file the selector loads.
DeviceFile WriteTinyDevice(std::uint64_t vmem_bytes) {
  auto spec = device::ParseDeviceSpec(
      R"({"base": "tpu7x", "name": "tiny", "vmem_bytes": )" +
      std::to_string(vmem_bytes) + "}");
  EXPECT_TRUE(spec.ok()) << spec.status().ToString();
  // One file per process and size: ctest runs the tests of this binary as
  // concurrent processes, which would otherwise overwrite each other's file.
  const std::string path = ::testing::TempDir() + "/tiny_device_" +
                           std::to_string(::getpid()) + "_" +
                           std::to_string(vmem_bytes) + ".json";
  FILE* f = std::fopen(path.c_str(), "w");
  EXPECT_NE(f, nullptr);
  const std::string json = device::DeviceSpecToJson(*spec);
  std::fwrite(json.data(), 1, json.size(), f);
  std::fclose(f);
  return DeviceFile{path};
}

// The VMEM the used ranges of `s` share, by RunOnDevice's own model.
std::uint64_t SharedVmemBytes(const Selection& s, const Batch& batch) {
  std::vector<attention::DeviceRangeDemand> demands;
  const attention::DeviceBlockSizes* blocks[3] = {
      &s.device_options.decode_blocks, &s.device_options.prefill_blocks,
      &s.device_options.mixed_blocks};
  for (const KernelChoice& c : s.ranges) {
    if (!c.used) continue;
    demands.push_back({.kernel = c.kernel,
                       .max_q_len = static_cast<std::int32_t>(c.key.max_q_len),
                       .blocks = *blocks[static_cast<int>(c.kernel)]});
  }
  return attention::DeviceVmemBytes(batch.metadata.shape, batch.cache.storage,
                                    batch.cache.page_size_tokens, demands);
}

// RunOnDevice takes one set of decode blocks: when range 0 and a mixed range
// of q_len-1 sequences both run the decode kernel, the selection says so
// (both report range 0's blocks, which are what runs), also after shrinking
// to fit VMEM.
TEST(SelectorTest, DecodeRangeAndDecodeKernelMixedRangeShareBlocks) {
  // Range 0 holds 4 sequences, range 2 two: their own Q blocks differ.
  Batch batch({{1, 300}, {1, 4000}, {1, 700}, {1, 90}, {1, 30}, {1, 20}},
              {4, 4, 6});
  for (const std::uint64_t vmem :
       {std::uint64_t{64} << 20, std::uint64_t{256} << 10}) {
    const DeviceFile device = WriteTinyDevice(vmem);
    auto selector =
        KernelSelector::Create(device.path, TuningTable("tiny", {}));
    ASSERT_TRUE(selector.ok()) << selector.status().ToString();
    Selection s = selector->Select(batch.metadata, batch.cache);
    const KernelChoice& decode = s.ranges[0];
    const KernelChoice& mixed = s.ranges[2];
    ASSERT_EQ(mixed.kernel, KernelKind::kDecode);
    EXPECT_EQ(mixed.q_tokens_per_block, decode.q_tokens_per_block) << vmem;
    EXPECT_EQ(mixed.kv_tokens_per_block, decode.kv_tokens_per_block) << vmem;
    EXPECT_EQ(mixed.compute_kv_tokens, decode.compute_kv_tokens) << vmem;
    EXPECT_EQ(s.device_options.decode_blocks.q_tokens_per_block,
              decode.q_tokens_per_block);
    EXPECT_EQ(s.device_options.decode_blocks.kv_pages_per_block,
              decode.kv_tokens_per_block / 16);
    EXPECT_LE(SharedVmemBytes(s, batch), vmem);
  }
}

TEST(SelectorTest, BlocksAreShrunkToFitVmem) {
  const DeviceFile device = WriteTinyDevice(1048576);
  auto selector = KernelSelector::Create(device.path, TuningTable("tiny", {}));
  ASSERT_TRUE(selector.ok()) << selector.status().ToString();
  Batch batch({{1, 4096}, {256, 2048}}, {1, 2, 2});
  Selection s = selector->Select(batch.metadata, batch.cache);
  EXPECT_LE(SharedVmemBytes(s, batch), 1048576U);
  for (int r = 0; r < 2; ++r) {
    const KernelChoice& c = s.ranges[static_cast<std::size_t>(r)];
    ASSERT_TRUE(c.used);
    EXPECT_EQ(c.kv_tokens_per_block % 16, 0U);
    EXPECT_LE(c.compute_kv_tokens, c.kv_tokens_per_block);
  }
}

// Every range that can still shrink is shrunk before the selector gives up:
// a prefill range whose chunk alone needs more VMEM than the decode range
// must not stop the decode range from shrinking when it is at its minimum.
TEST(SelectorTest, ShrinksEveryRangeBeforeGivingUp) {
  Batch batch({{1, 8192}, {1, 6000}, {512, 1024}}, {2, 3, 3});
  for (std::uint64_t vmem = std::uint64_t{16} << 20; vmem >= 64 * 1024;
       vmem /= 2) {
    const DeviceFile device = WriteTinyDevice(vmem);
    auto selector =
        KernelSelector::Create(device.path, TuningTable("tiny", {}));
    ASSERT_TRUE(selector.ok()) << selector.status().ToString();
    Selection s = selector->Select(batch.metadata, batch.cache);
    if (SharedVmemBytes(s, batch) <= vmem) continue;
    for (const KernelChoice& c : s.ranges) {
      if (!c.used) continue;
      SCOPED_TRACE(::testing::Message() << "vmem " << vmem << " kernel "
                                        << static_cast<int>(c.kernel));
      EXPECT_EQ(c.kv_tokens_per_block, 16U);
      EXPECT_EQ(c.q_tokens_per_block, 1U);
      EXPECT_EQ(c.compute_kv_tokens, 1U);
    }
  }
}

// The selection must be accepted by RunOnDevice itself: a decode range with
// long sequences and a prefill range with a long chunk want different buffers
// at their largest, and the ranges share them.
TEST(SelectorTest, SelectionsRunOnADeviceWithTightVmem) {
  for (const std::uint64_t vmem :
       {std::uint64_t{2} << 20, std::uint64_t{8} << 20,
        std::uint64_t{64} << 20}) {
    const DeviceFile device = WriteTinyDevice(vmem);
    auto selector =
        KernelSelector::Create(device.path, TuningTable("tiny", {}));
    ASSERT_TRUE(selector.ok()) << selector.status().ToString();
    AttentionWorkloadSpec spec;
    spec.page_size_tokens = 16;
    spec.sequences = {{1, 3000}, {1, 700}, {512, 1024}, {40, 900}};
    spec.distribution = {2, 3, 4};
    spec.chunk_prefill_size = 512;
    auto workload = AttentionWorkload::Create("tight_vmem", spec);
    ASSERT_TRUE(workload.ok()) << workload.status().ToString();
    AttentionWorkload& w = **workload;
    Selection s = selector->Select(w.metadata(), w.cache());
    auto plan = attention::AttentionPlan::Create(w.metadata(), w.cache(),
                                                 w.params(), s.plan_options);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    auto report = attention::RunOnDevice(*plan, w.tensors(),
                                         *selector->device(), s.device_options);
    ASSERT_TRUE(report.ok()) << vmem << ": " << report.status().ToString();
    EXPECT_LE(report->vmem_high_water_bytes, vmem);
  }
}

TEST(SelectorTest, HostSelectionPlansOnTheRealPlanner) {
  auto selector = KernelSelector::Create("host");
  ASSERT_TRUE(selector.ok());
  EXPECT_TRUE(selector->is_host());
  Batch batch({{1, 300}, {64, 128}, {1, 40}}, {1, 2, 3});
  Selection s = selector->Select(batch.metadata, batch.cache, 2);
  EXPECT_EQ(s.plan_options.parallelism, 2);
  EXPECT_EQ(s.plan_options.mixed_range_kernel, KernelKind::kDecode);
  attention::AttentionParams params;
  params.sm_scale = 0.088F;
  params.chunk_prefill_size = 64;
  auto plan = attention::AttentionPlan::Create(batch.metadata, batch.cache,
                                               params, s.plan_options);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->kernel_for_range(2), KernelKind::kDecode);
}

TEST(SelectorTest, UnknownTargetIsNotFound) {
  EXPECT_FALSE(KernelSelector::Create("tpu99").ok());
}

}  // namespace
}  // namespace rpa::scheduler
