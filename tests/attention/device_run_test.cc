// RunOnDevice: the RPA schedule on the simulated TPU against the host Run
// and the double-precision oracle (outputs within SPEC section 4, caches bit
// for bit), both schedules, the deliberately broken schedule, VMEM that is
// too small, determinism, and the tensor checks shared with Run.

#include "rpa/attention/device_run.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "attention/batch_builder.h"
#include "attention/oracle.h"
#include "building_blocks.h"
#include "device_blocks.h"
#include "plan_data.h"

#include "rpa/attention/plan.h"
#include "rpa/device/device_spec.h"

namespace rpa::attention {
namespace {

using memory::StorageType;
using testutil::BatchSpec;
using testutil::BuildBatch;
using testutil::TestBatch;

device::DeviceSpec Tpu7x() {
  StatusOr<device::DeviceSpec> spec = device::DevicePreset("tpu7x");
  RPA_CHECK(spec.ok());
  return *spec;
}

// A device whose DMA issue latency is 1 ns: its bandwidth-delay product is
// 3.7 KB, so the small test batches get the tapered ends (row pieces) that
// tpu7x gives only to large Q blocks (device_blocks.h).
device::DeviceSpec FastDma() {
  StatusOr<device::DeviceSpec> spec = device::ParseDeviceSpec(
      R"({"base": "tpu7x", "name": "tpu7x_fast_dma",
          "dma_issue_latency_ns": 1})");
  RPA_CHECK(spec.ok());
  return *spec;
}

StatusOr<AttentionPlan> PlanFor(const TestBatch& batch,
                                const PlanOptions& options = {}) {
  return AttentionPlan::Create(batch.metadata(), batch.cache(), batch.params,
                               options);
}

bool SameFloats(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<std::byte> CacheCopy(const TestBatch& batch) {
  return {batch.cache_bytes().begin(), batch.cache_bytes().end()};
}

// Small blocks, so that a small batch still has several Q blocks per
// sequence, several KV blocks per segment and several sub-tiles per block.
DeviceRunOptions TinyBlocks(DeviceSchedule schedule) {
  DeviceRunOptions options;
  options.schedule = schedule;
  options.decode_blocks = {
      .q_tokens_per_block = 2, .kv_pages_per_block = 2, .compute_kv_tokens = 5};
  options.prefill_blocks = {
      .q_tokens_per_block = 5, .kv_pages_per_block = 1, .compute_kv_tokens = 3};
  options.mixed_blocks = {
      .q_tokens_per_block = 3, .kv_pages_per_block = 3, .compute_kv_tokens = 7};
  return options;
}

struct SweepCase {
  std::string name;
  BatchSpec spec;
  PlanOptions plan_options{};
};

BatchSpec Base(std::uint32_t q_heads, std::uint32_t kv_heads,
               std::uint32_t head_dim, std::uint32_t page_size,
               StorageType storage) {
  BatchSpec spec;
  spec.num_q_heads = q_heads;
  spec.num_kv_heads = kv_heads;
  spec.head_dim = head_dim;
  spec.page_size_tokens = page_size;
  spec.storage = storage;
  return spec;
}

std::vector<SweepCase> SweepCases() {
  std::vector<SweepCase> cases;
  {
    // Decode only: kv_len 1, page - 1, page, page + 1, many pages.
    BatchSpec spec = Base(8, 2, 64, 16, StorageType::kF32);
    spec.sequences = {{1, 1}, {1, 15}, {1, 16}, {1, 17}, {1, 300}, {1, 77}};
    spec.distribution = std::array<std::int32_t, 3>{6, 6, 6};
    cases.push_back({"decode_ps16_d64_gqa4_f32", spec});
  }
  {
    BatchSpec spec = Base(5, 1, 80, 1, StorageType::kBf16);
    spec.sequences = {{1, 1}, {1, 9}, {1, 40}, {1, 2}};
    spec.distribution = std::array<std::int32_t, 3>{4, 4, 4};
    spec.params.sliding_window = 7;
    cases.push_back({"decode_ps1_d80_gqa5_bf16_window", spec});
  }
  {
    // Prefill only, MHA (group 1), chunks with and without cached keys.
    BatchSpec spec = Base(3, 3, 128, 8, StorageType::kF16);
    spec.sequences = {{12, 12}, {12, 70}, {12, 33}};
    spec.distribution = std::array<std::int32_t, 3>{0, 3, 3};
    spec.params.chunk_prefill_size = 12;
    cases.push_back({"prefill_ps8_d128_mha_f16", spec});
  }
  {
    // All three ranges, one sequence past d2, soft cap, window.
    BatchSpec spec = Base(8, 2, 64, 16, StorageType::kBf16);
    spec.sequences = {{1, 300}, {1, 7},   {1, 1},  {1, 129}, {12, 12}, {12, 70},
                      {12, 33}, {5, 100}, {1, 40}, {20, 20}, {3, 9}};
    spec.distribution = std::array<std::int32_t, 3>{4, 7, 10};
    spec.params.chunk_prefill_size = 12;
    spec.params.soft_cap = 6.0F;
    spec.params.sm_scale = 0.3F;
    spec.params.sliding_window = 24;
    spec.values = testutil::ValueDistribution::kNormal;
    cases.push_back({"mixed_ps16_d64_bf16_softcap_window", spec});
  }
  {
    BatchSpec spec = Base(8, 2, 80, 8, StorageType::kF32);
    spec.sequences = {{1, 30}, {7, 7}, {7, 40}, {9, 12}, {2, 50}};
    spec.distribution = std::array<std::int32_t, 3>{1, 3, 5};
    spec.params.chunk_prefill_size = 7;
    spec.params.causal = false;
    spec.params.sliding_window = 10;
    spec.params.k_scale = 1.5F;
    spec.params.v_scale = 0.5F;
    cases.push_back({"mixed_ps8_d80_f32_bidirectional_window", spec});
  }
  {
    BatchSpec spec = Base(3, 3, 64, 1, StorageType::kF16);
    spec.sequences = {{4, 4}, {1, 6}, {6, 19}};
    spec.distribution = std::array<std::int32_t, 3>{0, 0, 3};
    spec.params.causal = false;
    cases.push_back({"mixed_only_ps1_f16_bidirectional", spec});
  }
  {
    // Empty prefill range between decode and mixed, a sequence past d2.
    BatchSpec spec = Base(8, 2, 128, 16, StorageType::kBf16);
    spec.sequences = {{1, 33}, {1, 64}, {17, 40}, {3, 3}};
    spec.distribution = std::array<std::int32_t, 3>{2, 2, 3};
    cases.push_back({"decode_and_mixed_empty_prefill_bf16", spec});
  }
  {
    // The decode range served by the flash kernel, the mixed range by the
    // decode kernel (all its q_len are 1).
    BatchSpec spec = Base(4, 2, 64, 8, StorageType::kF32);
    spec.sequences = {{1, 20}, {1, 9}, {1, 17}, {1, 8}};
    spec.distribution = std::array<std::int32_t, 3>{2, 2, 4};
    SweepCase routed{"routed_decode_via_mixed", spec};
    routed.plan_options.decode_range_kernel = KernelKind::kMixed;
    routed.plan_options.mixed_range_kernel = KernelKind::kDecode;
    cases.push_back(routed);
  }
  return cases;
}

void PrintTo(const SweepCase& sweep_case, std::ostream* os) {
  *os << sweep_case.name;
}

class DeviceRunSweepTest : public ::testing::TestWithParam<SweepCase> {};

// Runs the host Run and the device (default blocks, tiny blocks pipelined
// and serial) on the same batch.
TEST_P(DeviceRunSweepTest, MatchesHostAndOracle) {
  const SweepCase& param = GetParam();
  TestBatch batch = BuildBatch(param.spec);
  auto plan = PlanFor(batch, param.plan_options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch.original_oracle_input());
  ASSERT_TRUE(attention::Run(*plan, batch.tensors()).ok());
  ASSERT_EQ(testutil::CompareWithOracle(batch, expected), "");
  const std::vector<float> host_out = batch.out;
  const std::vector<std::byte> host_cache = CacheCopy(batch);

  struct DeviceCase {
    std::string name;
    DeviceRunOptions options;
    device::DeviceSpec spec;
  };
  // The fast-DMA runs cut their first and last steps into row pieces.
  const std::vector<DeviceCase> runs = {
      {"default_pipelined", DeviceRunOptions{}, Tpu7x()},
      {"tiny_pipelined", TinyBlocks(DeviceSchedule::kPipelined), Tpu7x()},
      {"tiny_serial", TinyBlocks(DeviceSchedule::kSerial), Tpu7x()},
      {"default_fast_dma", DeviceRunOptions{}, FastDma()},
      {"tiny_pipelined_fast_dma", TinyBlocks(DeviceSchedule::kPipelined),
       FastDma()},
      {"tiny_serial_fast_dma", TinyBlocks(DeviceSchedule::kSerial), FastDma()}};
  std::vector<float> tiny_pipelined_out;
  for (const auto& [name, options, spec] : runs) {
    SCOPED_TRACE(name);
    batch.Reset();
    StatusOr<DeviceRunReport> report =
        RunOnDevice(*plan, batch.tensors(), spec, options);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->num_races, 0U)
        << (report->races.empty() ? "" : report->races[0].what);
    EXPECT_EQ(testutil::CompareWithOracle(batch, expected), "");
    const std::vector<double> host(host_out.begin(), host_out.end());
    const testutil::Comparison against_host = testutil::CompareOutputs(
        batch.out, host, batch.shape.num_q_heads, batch.shape.head_dim);
    EXPECT_TRUE(against_host.ok) << against_host.first_bad;
    EXPECT_EQ(testutil::DescribeCacheDifference(
                  batch.cache(), batch.cache_bytes(), host_cache),
              "");
    EXPECT_GT(report->simulated_us, 0.0);
    EXPECT_LE(report->overlap_efficiency, 1.0 + 1e-9);
    if (name.starts_with("tiny_pipelined")) tiny_pipelined_out = batch.out;
    // The same blocks (and pieces) give the same arithmetic in either
    // schedule.
    if (name.starts_with("tiny_serial")) {
      EXPECT_TRUE(SameFloats(batch.out, tiny_pipelined_out));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, DeviceRunSweepTest,
                         ::testing::ValuesIn(SweepCases()),
                         [](const auto& param_info) {
                           return param_info.param.name;
                         });

// SPEC section 2's example of the public kernel's defect: q_len 393,
// kv_len 393, window 128, kv blocks of 256 tokens, page 16. Every new token
// must reach the cache (the oracle's cache holds all of them).
TEST(DeviceRunTest, WindowHiddenTokensAreWrittenBack) {
  BatchSpec spec = Base(2, 1, 16, 16, StorageType::kBf16);
  spec.sequences = {{393, 393}};
  spec.distribution = std::array<std::int32_t, 3>{0, 1, 1};
  spec.params.chunk_prefill_size = 393;
  spec.params.sliding_window = 128;
  TestBatch batch = BuildBatch(spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch.original_oracle_input());
  // The fast-DMA device cuts the ends into row pieces, whose key ranges the
  // window shifts.
  for (const device::DeviceSpec& device_spec : {Tpu7x(), FastDma()}) {
    for (const std::uint32_t q_tokens : {393U, 64U}) {
      for (const DeviceSchedule schedule :
           {DeviceSchedule::kPipelined, DeviceSchedule::kSerial}) {
        SCOPED_TRACE(std::string(DeviceScheduleName(schedule)) + " q block " +
                     std::to_string(q_tokens) + " on " + device_spec.name);
        batch.Reset();
        DeviceRunOptions options;
        options.schedule = schedule;
        options.prefill_blocks = {.q_tokens_per_block = q_tokens,
                                  .kv_pages_per_block = 16,
                                  .compute_kv_tokens = 128};
        StatusOr<DeviceRunReport> report =
            RunOnDevice(*plan, batch.tensors(), device_spec, options);
        ASSERT_TRUE(report.ok()) << report.status();
        EXPECT_EQ(testutil::CompareWithOracle(batch, expected), "");
        EXPECT_EQ(report->num_races, 0U);
        EXPECT_EQ(report->blocks_used[1].kv_pages_per_block, 16U);
      }
    }
  }
}

// The walk's invariants, on the shapes the sweep runs and on one causal
// prefill chunk large enough for tpu7x to taper: every query row is in
// exactly one Q block; a step's pieces partition its rows in order, each
// computes exactly the keys its rows see in the step, and their new keys
// partition the step's compute range in order (so a piece's keys have been
// fetched by the time it computes); pieces fetch Q only for the first two Q
// blocks (whose slots are free) and write output only at a Q block's end.
void ExpectWalkInvariants(const TestBatch& batch,
                          const DeviceRunOptions& options,
                          const device::DeviceSpec& spec,
                          internal::DeviceWalk* walk_out = nullptr) {
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const internal::ValidatedBatch& validated = plan->data().batch;
  StatusOr<internal::DeviceBlockChoice> choice =
      internal::ChooseDeviceBlocks(*plan, options, spec);
  ASSERT_TRUE(choice.ok()) << choice.status();
  const internal::DeviceWalk walk =
      internal::BuildDeviceWalk(validated, *choice, spec);
  std::vector<int> row_blocks(
      batch.q.size() / (batch.shape.num_q_heads * batch.shape.head_dim), 0);
  for (const internal::DeviceQBlock& block : walk.q_blocks) {
    for (std::int32_t row = block.row_begin; row < block.row_end; ++row) {
      ++row_blocks[static_cast<std::size_t>(row)];
    }
  }
  for (const internal::SequenceSpan& span : validated.sequences) {
    for (std::int32_t row = 0; row < span.q_len; ++row) {
      ASSERT_EQ(row_blocks[static_cast<std::size_t>(span.q_begin + row)], 1)
          << "query row " << span.q_begin + row;
    }
  }
  for (std::size_t k = 0; k < walk.steps.size(); ++k) {
    SCOPED_TRACE("step " + std::to_string(k));
    const internal::DeviceStep& step = walk.steps[k];
    const internal::DeviceQBlock& block = walk.q_blocks[step.q_block];
    const internal::SequenceSpan& span = validated.sequences[step.sequence];
    ASSERT_GE(step.num_pieces, 1U);
    std::int32_t row = 0;
    std::int32_t needed = step.compute_begin;
    for (std::uint32_t p = 0; p < step.num_pieces; ++p) {
      const internal::DevicePiece& piece = walk.pieces[step.first_piece + p];
      EXPECT_EQ(piece.row_begin, row);
      EXPECT_LT(piece.row_begin, piece.row_end);
      row = piece.row_end;
      EXPECT_EQ(piece.new_begin, needed);
      needed = piece.new_end;
      std::int32_t seen_begin = step.compute_end;
      std::int32_t seen_end = step.compute_begin;
      for (std::int32_t r = piece.row_begin; r < piece.row_end; ++r) {
        const internal::KeyRange keys = internal::VisibleKeys(
            span.kv_len - span.q_len + step.first_query + r, span.kv_len,
            validated.params);
        const std::int32_t begin = std::max(keys.begin, step.compute_begin);
        const std::int32_t end = std::min(keys.end, step.compute_end);
        if (begin >= end) continue;
        seen_begin = std::min(seen_begin, begin);
        seen_end = std::max(seen_end, end);
      }
      if (seen_begin < seen_end) {
        EXPECT_EQ(piece.compute_begin, seen_begin);
        EXPECT_EQ(piece.compute_end, seen_end);
        EXPECT_LE(piece.compute_end, piece.new_end);
      } else {
        EXPECT_EQ(piece.compute_begin, piece.compute_end);
      }
    }
    EXPECT_EQ(row, step.num_rows);
    EXPECT_EQ(needed, step.compute_end);
    EXPECT_FALSE(step.num_pieces == 1 &&
                 (step.fetch_by_piece || step.q_by_piece || step.out_by_piece));
    if (step.q_by_piece) {
      EXPECT_TRUE(step.fetch_by_piece);
      EXPECT_LT(step.q_block, 2U);
      EXPECT_EQ(block.first_step, k);
    }
    if (step.out_by_piece) {
      EXPECT_EQ(block.last_step, k);
      EXPECT_EQ(block.row_end - block.row_begin, step.num_rows);
    }
  }
  if (walk_out != nullptr) *walk_out = walk;
}

TEST(DeviceWalkTest, TaperedEndsCoverEveryRowAndKeyOnce) {
  for (const SweepCase& sweep_case : SweepCases()) {
    SCOPED_TRACE(sweep_case.name);
    const TestBatch batch = BuildBatch(sweep_case.spec);
    for (const device::DeviceSpec& spec : {Tpu7x(), FastDma()}) {
      ExpectWalkInvariants(batch, DeviceRunOptions{}, spec);
      ExpectWalkInvariants(batch, TinyBlocks(DeviceSchedule::kPipelined), spec);
    }
  }
  // Llama-3-8B heads, one causal 2048-token chunk: 256-token Q blocks of
  // 4 MiB of queries, more than tpu7x's bandwidth-delay product (3.7 MB).
  BatchSpec spec = Base(32, 8, 128, 128, StorageType::kBf16);
  spec.sequences = {{2048, 2048}};
  spec.distribution = std::array<std::int32_t, 3>{0, 1, 1};
  spec.params.chunk_prefill_size = 2048;
  spec.extra_pages = 0;
  spec.padding_tokens = 0;
  internal::DeviceWalk walk;
  ExpectWalkInvariants(BuildBatch(spec), DeviceRunOptions{}, Tpu7x(), &walk);
  ASSERT_EQ(walk.q_blocks.size(), 8U);
  // The second Q block first, the first (the cheapest) last.
  EXPECT_EQ(walk.q_blocks.front().row_begin, 256);
  EXPECT_EQ(walk.q_blocks.back().row_begin, 0);
  // The first two steps fetch by piece, the last two Q blocks write back by
  // piece; the last piece is 1/8 of the rows.
  EXPECT_TRUE(walk.steps[0].q_by_piece && walk.steps[1].q_by_piece);
  EXPECT_TRUE(walk.steps[walk.q_blocks[6].last_step].out_by_piece);
  EXPECT_TRUE(walk.steps.back().out_by_piece);
  EXPECT_EQ(walk.pieces.back().row_end - walk.pieces.back().row_begin, 32);
  EXPECT_EQ(std::count_if(walk.steps.begin(), walk.steps.end(),
                          [](const internal::DeviceStep& step) {
                            return step.num_pieces > 1;
                          }),
            4);
}

BatchSpec DecodeHeavySpec() {
  // Long decode sequences in several KV blocks, so that the pipeline has
  // something to overlap and a skipped wait reads a block still in flight.
  BatchSpec spec = Base(8, 2, 64, 16, StorageType::kBf16);
  spec.sequences = {{1, 200}, {1, 260}, {1, 190}, {1, 300}, {1, 170}};
  spec.distribution = std::array<std::int32_t, 3>{5, 5, 5};
  return spec;
}

DeviceRunOptions DecodeHeavyOptions(DeviceSchedule schedule) {
  DeviceRunOptions options;
  options.schedule = schedule;
  options.decode_blocks = {.q_tokens_per_block = 2,
                           .kv_pages_per_block = 4,
                           .compute_kv_tokens = 32};
  return options;
}

TEST(DeviceRunTest, PipelinedIsFasterThanSerialWithTheSameResult) {
  TestBatch batch = BuildBatch(DecodeHeavySpec());
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch.original_oracle_input());
  StatusOr<DeviceRunReport> serial =
      RunOnDevice(*plan, batch.tensors(), Tpu7x(),
                  DecodeHeavyOptions(DeviceSchedule::kSerial));
  ASSERT_TRUE(serial.ok()) << serial.status();
  EXPECT_EQ(testutil::CompareWithOracle(batch, expected), "");
  const std::vector<float> serial_out = batch.out;
  batch.Reset();
  StatusOr<DeviceRunReport> pipelined =
      RunOnDevice(*plan, batch.tensors(), Tpu7x(),
                  DecodeHeavyOptions(DeviceSchedule::kPipelined));
  ASSERT_TRUE(pipelined.ok()) << pipelined.status();
  EXPECT_EQ(testutil::CompareWithOracle(batch, expected), "");
  EXPECT_TRUE(SameFloats(batch.out, serial_out));
  EXPECT_EQ(serial->num_races, 0U);
  EXPECT_EQ(pipelined->num_races, 0U);
  // The serial schedule pays every DMA latency in full; the pipeline hides
  // them behind the streaming of the block before.
  EXPECT_LT(pipelined->simulated_us, 0.75 * serial->simulated_us)
      << "pipelined " << pipelined->simulated_us << " us, serial "
      << serial->simulated_us << " us";
  EXPECT_GT(pipelined->overlap_efficiency, serial->overlap_efficiency);
  EXPECT_EQ(pipelined->dma_transfers, serial->dma_transfers);
}

TEST(DeviceRunTest, SkippingTheKvWaitGivesAWrongResultAndRaces) {
  TestBatch batch = BuildBatch(DecodeHeavySpec());
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const testutil::OracleOutput expected =
      testutil::RunOracle(batch.original_oracle_input());
  DeviceRunOptions options = DecodeHeavyOptions(DeviceSchedule::kPipelined);
  options.skip_kv_wait_for_testing = true;
  StatusOr<DeviceRunReport> report =
      RunOnDevice(*plan, batch.tensors(), Tpu7x(), options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_GT(report->num_races, 0U);
  ASSERT_FALSE(report->races.empty());
  EXPECT_NE(report->races[0].what.find("not landed"), std::string::npos)
      << report->races[0].what;
  EXPECT_NE(report->races[0].buffer.find("kv"), std::string::npos)
      << report->races[0].buffer;
  const std::vector<double> want(expected.out.begin(), expected.out.end());
  const testutil::Comparison comparison = testutil::CompareOutputs(
      batch.out, want, batch.shape.num_q_heads, batch.shape.head_dim);
  EXPECT_FALSE(comparison.ok)
      << "the broken schedule computed the right output";
  // The cache update does not depend on the skipped wait.
  EXPECT_EQ(testutil::DescribeCacheDifference(
                batch.cache(), batch.cache_bytes(), expected.cache),
            "");
}

void ExpectNothingWritten(const TestBatch& batch,
                          const std::vector<std::byte>& cache_before) {
  EXPECT_EQ(std::memcmp(batch.cache_bytes().data(), cache_before.data(),
                        cache_before.size()),
            0)
      << "the cache changed";
  for (const float value : batch.out) {
    ASSERT_TRUE(std::isnan(value)) << "out was written";
  }
}

TEST(DeviceRunTest, TooLittleVmemIsAnInvalidArgumentAndWritesNothing) {
  TestBatch batch = BuildBatch(DecodeHeavySpec());
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const std::vector<std::byte> cache_before = CacheCopy(batch);
  StatusOr<device::DeviceSpec> tiny =
      device::ParseDeviceSpec(R"({"base": "tpu7x", "vmem_bytes": 4096})");
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  StatusOr<DeviceRunReport> report = RunOnDevice(*plan, batch.tensors(), *tiny);
  ASSERT_EQ(report.status().code(), StatusCode::kInvalidArgument);
  const std::string& message = report.status().message();
  EXPECT_NE(message.find("VMEM"), std::string::npos) << message;
  EXPECT_NE(message.find("decode kernel"), std::string::npos) << message;
  EXPECT_NE(message.find("kv_pages_per_block"), std::string::npos) << message;
  EXPECT_NE(message.find("vmem_bytes = 4096"), std::string::npos) << message;
  ExpectNothingWritten(batch, cache_before);

  // Block sizes the caller fixed are never shrunk: too large for the real
  // VMEM is the same error, naming them.
  DeviceRunOptions options;
  options.decode_blocks.kv_pages_per_block = 1U << 20;
  report = RunOnDevice(*plan, batch.tensors(), Tpu7x(), options);
  ASSERT_EQ(report.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(report.status().message().find("kv_pages_per_block 1048576"),
            std::string::npos)
      << report.status().message();
  ExpectNothingWritten(batch, cache_before);

  // Defaults shrink to fit a small VMEM that can hold some blocks.
  StatusOr<device::DeviceSpec> small =
      device::ParseDeviceSpec(R"({"base": "tpu7x", "vmem_bytes": 200000})");
  ASSERT_TRUE(small.ok()) << small.status();
  report = RunOnDevice(*plan, batch.tensors(), *small);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_LE(report->vmem_high_water_bytes, 200000U);
  EXPECT_EQ(testutil::CompareWithOracle(
                batch, testutil::RunOracle(batch.original_oracle_input())),
            "");
}

TEST(DeviceRunTest, TwoRunsAreIdenticalReportsIncluded) {
  BatchSpec spec = SweepCases()[3].spec;  // all three ranges
  TestBatch batch = BuildBatch(spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  DeviceRunOptions options = TinyBlocks(DeviceSchedule::kPipelined);
  options.record_trace = true;
  StatusOr<DeviceRunReport> first =
      RunOnDevice(*plan, batch.tensors(), Tpu7x(), options);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::vector<float> first_out = batch.out;
  const std::vector<std::byte> first_cache = CacheCopy(batch);
  batch.Reset();
  StatusOr<DeviceRunReport> second =
      RunOnDevice(*plan, batch.tensors(), Tpu7x(), options);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(SameFloats(batch.out, first_out));
  EXPECT_EQ(CacheCopy(batch), first_cache);
  EXPECT_EQ(first->simulated_us, second->simulated_us);
  EXPECT_EQ(first->hbm_busy_us, second->hbm_busy_us);
  EXPECT_EQ(first->dma_engine_busy_us, second->dma_engine_busy_us);
  EXPECT_EQ(first->matrix_busy_us, second->matrix_busy_us);
  EXPECT_EQ(first->vector_busy_us, second->vector_busy_us);
  EXPECT_EQ(first->overlap_efficiency, second->overlap_efficiency);
  EXPECT_EQ(first->dma_transfers, second->dma_transfers);
  EXPECT_EQ(first->vmem_high_water_bytes, second->vmem_high_water_bytes);
  EXPECT_EQ(first->num_races, second->num_races);
  EXPECT_FALSE(first->trace_json.empty());
  EXPECT_EQ(first->trace_json, second->trace_json);
}

TEST(DeviceRunTest, ReportAddsUp) {
  BatchSpec spec = SweepCases()[3].spec;
  TestBatch batch = BuildBatch(spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const device::DeviceSpec tpu = Tpu7x();
  StatusOr<DeviceRunReport> report = RunOnDevice(*plan, batch.tensors(), tpu);
  ASSERT_TRUE(report.ok()) << report.status();
  const double seconds = report->simulated_us * 1e-6;
  EXPECT_EQ(report->bytes_moved, static_cast<double>(plan->cost().bytes()));
  EXPECT_EQ(report->flops, plan->cost().flops);
  EXPECT_NEAR(report->mbu, report->bytes_moved / seconds / tpu.hbm_bytes_per_s,
              1e-9);
  EXPECT_NEAR(report->mfu, report->flops / seconds / tpu.matrix_peak_flops,
              1e-9);
  EXPECT_NEAR(report->overlap_efficiency,
              std::max({report->hbm_busy_us, report->matrix_busy_us,
                        report->vector_busy_us}) /
                  report->simulated_us,
              1e-9);
  EXPECT_EQ(report->dma_engine_busy_us.size(), tpu.num_dma_engines);
  EXPECT_GT(report->dma_transfers, 0U);
  EXPECT_GT(report->vmem_high_water_bytes, 0U);
  EXPECT_LE(report->vmem_high_water_bytes, tpu.vmem_bytes);
  EXPECT_TRUE(report->trace_json.empty());
  for (int r = 0; r < 3; ++r) {
    const DeviceBlockSizes& blocks = report->blocks_used[r];
    EXPECT_GT(blocks.q_tokens_per_block, 0U) << r;
    EXPECT_GT(blocks.kv_pages_per_block, 0U) << r;
    EXPECT_GT(blocks.compute_kv_tokens, 0U) << r;
  }
  EXPECT_EQ(DeviceScheduleName(DeviceSchedule::kSerial), "serial");
  EXPECT_EQ(DeviceScheduleName(DeviceSchedule::kPipelined), "pipelined");
}

TEST(DeviceRunTest, EmptyRangesReportNoBlocksAndAnEmptyBatchRunsNothing) {
  BatchSpec spec = Base(4, 2, 32, 8, StorageType::kF32);
  spec.sequences = {{3, 10}, {1, 5}};
  spec.distribution = std::array<std::int32_t, 3>{0, 0, 1};
  TestBatch batch = BuildBatch(spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  StatusOr<DeviceRunReport> report =
      RunOnDevice(*plan, batch.tensors(), Tpu7x());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->blocks_used[0].kv_pages_per_block, 0U);
  EXPECT_EQ(report->blocks_used[1].q_tokens_per_block, 0U);
  EXPECT_GT(report->blocks_used[2].q_tokens_per_block, 0U);
  EXPECT_EQ(testutil::CompareWithOracle(
                batch, testutil::RunOracle(batch.original_oracle_input())),
            "");

  spec.distribution = std::array<std::int32_t, 3>{0, 0, 0};
  TestBatch empty = BuildBatch(spec);
  auto empty_plan = PlanFor(empty);
  ASSERT_TRUE(empty_plan.ok()) << empty_plan.status();
  const std::vector<std::byte> cache_before = CacheCopy(empty);
  report = RunOnDevice(*empty_plan, empty.tensors(), Tpu7x());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->simulated_us, 0.0);
  EXPECT_EQ(report->dma_transfers, 0U);
  EXPECT_EQ(CacheCopy(empty), cache_before);
}

TEST(DeviceRunTest, TensorChecksAreTheHostRunsChecks) {
  TestBatch batch = BuildBatch(SweepCases()[3].spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const std::vector<std::function<void(BatchTensors*)>> mutations = {
      [](BatchTensors* t) { t->q = t->q.first(t->q.size() - 1); },
      [](BatchTensors* t) { t->k = t->k.first(t->k.size() - 16); },
      [](BatchTensors* t) { t->v = t->v.subspan(1); },
      [](BatchTensors* t) { t->out = t->out.first(t->out.size() - 1); },
      [](BatchTensors* t) { t->cache.data = nullptr; },
      [](BatchTensors* t) { t->cache.num_pages -= 1; },
      [](BatchTensors* t) { t->cache.page_size_tokens *= 2; },
      [](BatchTensors* t) { t->cache.num_combined_heads += 2; },
      [](BatchTensors* t) { t->cache.head_dim /= 2; },
      [](BatchTensors* t) { t->cache.storage = StorageType::kF16; },
      [](BatchTensors* t) { t->cache.token_bytes += 4; },
      [](BatchTensors* t) { t->cache.page_bytes -= 4; },
  };
  const std::vector<std::byte> cache_before = CacheCopy(batch);
  for (std::size_t i = 0; i < mutations.size(); ++i) {
    BatchTensors tensors = batch.tensors();
    mutations[i](&tensors);
    const Status host = attention::Run(*plan, tensors);
    ASSERT_EQ(host.code(), StatusCode::kInvalidArgument) << i;
    StatusOr<DeviceRunReport> device = RunOnDevice(*plan, tensors, Tpu7x());
    EXPECT_EQ(device.status(), host) << i;
    ExpectNothingWritten(batch, cache_before);
  }
}

TEST(DeviceRunTest, AnInvalidDeviceSpecIsRejected) {
  TestBatch batch = BuildBatch(DecodeHeavySpec());
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const std::vector<std::byte> cache_before = CacheCopy(batch);
  device::DeviceSpec spec = Tpu7x();
  spec.hbm_bytes_per_s = 0;
  StatusOr<DeviceRunReport> report = RunOnDevice(*plan, batch.tensors(), spec);
  EXPECT_EQ(report.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(report.status().message().find("hbm_bytes_per_s"),
            std::string::npos)
      << report.status().message();
  ExpectNothingWritten(batch, cache_before);
}

// ---------------------------------------------------------------------------
// Figures (not a test: run with --gtest_also_run_disabled_tests
// --gtest_filter='*DISABLED_Llama3*'): Llama-3-8B attention (Hq 32, Hkv 8,
// D 128, bf16 cache) on tpu7x, decode 64 x kv 2048 and one causal 2048-token
// prefill chunk, both schedules, page sizes 128 and 16.

void PrintFigures(const std::string& name, const BatchSpec& spec) {
  const auto build_start = std::chrono::steady_clock::now();
  TestBatch batch = BuildBatch(spec);
  auto plan = PlanFor(batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const double build_s = std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - build_start)
                             .count();
  double serial_us = 0;
  for (const DeviceSchedule schedule :
       {DeviceSchedule::kSerial, DeviceSchedule::kPipelined}) {
    batch.Reset();
    DeviceRunOptions options;
    options.schedule = schedule;
    // RPA_DEVICE_TRACE_DIR=<dir> writes each run's Chrome trace there.
    const char* trace_dir =
        std::getenv("RPA_DEVICE_TRACE_DIR");  // NOLINT(concurrency-mt-unsafe)
    options.record_trace = trace_dir != nullptr;
    const auto start = std::chrono::steady_clock::now();
    StatusOr<DeviceRunReport> report =
        RunOnDevice(*plan, batch.tensors(), Tpu7x(), options);
    const double wall_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    ASSERT_TRUE(report.ok()) << report.status();
    if (schedule == DeviceSchedule::kSerial) serial_us = report->simulated_us;
    if (trace_dir != nullptr) {
      std::string file_name = std::string(trace_dir) + "/" + name + "_" +
                              std::string(DeviceScheduleName(schedule)) +
                              ".json";
      std::replace(file_name.begin() +
                       static_cast<std::ptrdiff_t>(std::strlen(trace_dir) + 1),
                   file_name.end(), ' ', '_');
      std::ofstream(file_name) << report->trace_json;
    }
    const int range =
        spec.distribution.has_value() && (*spec.distribution)[0] == 0 ? 1 : 0;
    const DeviceBlockSizes& blocks = report->blocks_used[range];
    std::printf(
        "%s %s: makespan %.2f us, MBU %.3f, MFU %.3f, overlap %.3f (hbm %.2f, "
        "matrix %.2f, vector %.2f us), serial/pipelined %.3f, %llu DMAs, "
        "VMEM high water %.1f MiB, blocks q %u kv_pages %u compute %u, "
        "races %llu, host wall %.2f s (batch build %.2f s)\n",
        name.c_str(), std::string(DeviceScheduleName(schedule)).c_str(),
        report->simulated_us, report->mbu, report->mfu,
        report->overlap_efficiency, report->hbm_busy_us, report->matrix_busy_us,
        report->vector_busy_us, serial_us / report->simulated_us,
        static_cast<unsigned long long>(report->dma_transfers),
        static_cast<double>(report->vmem_high_water_bytes) / (1 << 20),
        blocks.q_tokens_per_block, blocks.kv_pages_per_block,
        blocks.compute_kv_tokens,
        static_cast<unsigned long long>(report->num_races), wall_s, build_s);
  }
}

BatchSpec Llama3Spec(std::uint32_t page_size) {
  BatchSpec spec = Base(32, 8, 128, page_size, StorageType::kBf16);
  spec.params.sm_scale = 1.0F / std::sqrt(128.0F);
  spec.extra_pages = 0;
  spec.padding_tokens = 0;
  return spec;
}

TEST(DeviceRunFigures, DISABLED_Llama3Decode) {
  for (const std::uint32_t page_size : {128U, 16U}) {
    BatchSpec spec = Llama3Spec(page_size);
    spec.sequences.assign(64, {1, 2048});
    spec.distribution = std::array<std::int32_t, 3>{64, 64, 64};
    PrintFigures("decode 64 x 2048 page " + std::to_string(page_size), spec);
  }
}

TEST(DeviceRunFigures, DISABLED_Llama3Prefill) {
  for (const std::uint32_t page_size : {128U, 16U}) {
    BatchSpec spec = Llama3Spec(page_size);
    spec.sequences = {{2048, 2048}};
    spec.distribution = std::array<std::int32_t, 3>{0, 1, 1};
    spec.params.chunk_prefill_size = 2048;
    PrintFigures("prefill 2048 page " + std::to_string(page_size), spec);
  }
}

}  // namespace
}  // namespace rpa::attention
