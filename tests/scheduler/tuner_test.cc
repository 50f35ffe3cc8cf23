#include "rpa/scheduler/tuner.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "rpa/scheduler/pipeline_bench.h"
#include "rpa/scheduler/selector.h"

namespace rpa::scheduler {
namespace {

using attention::KernelKind;

TuneOptions Quick(const char* target) {
  TuneOptions options;
  options.target = target;
  options.quick = true;
  return options;
}

PipelineBenchOptions Bench(const char* device, bool host, const char* filter) {
  PipelineBenchOptions options;
  options.device = device;
  options.host = host;
  options.filter = filter;
  return options;
}

void ExpectQuickTable(const TuningTable& table, const std::string& target,
                      bool device) {
  EXPECT_EQ(table.target(), target);
  ASSERT_EQ(table.entries().size(), 2U);
  EXPECT_EQ(table.entries()[0].kernel, KernelKind::kDecode);
  EXPECT_EQ(table.entries()[0].key.max_kv_len, 256U);
  EXPECT_EQ(table.entries()[1].kernel, KernelKind::kPrefill);
  for (const TuningEntry& e : table.entries()) {
    EXPECT_GT(e.time_us, 0);
    // On the host 0 (the cache-sized defaults) is a candidate and may win.
    if (device) {
      EXPECT_GT(e.kv_tokens_per_block, 0U);
      EXPECT_GT(e.compute_kv_tokens, 0U);
    }
  }
  // What tune writes, the library loads.
  auto parsed = TuningTable::Parse(table.ToJson());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->ToJson(), table.ToJson());
}

TEST(TunerTest, QuickDeviceTuningIsDeterministicAndLoadable) {
  std::vector<std::string> lines;
  auto table = Tune(
      {.target = "tpu7x", .quick = true, .progress = [&](std::string_view l) {
         lines.emplace_back(l);
       }});
  ASSERT_TRUE(table.ok()) << table.status().ToString();
  ExpectQuickTable(*table, "tpu7x", true);
  EXPECT_GE(lines.size(), 4U);
  // Simulated time: the same search gives the same table.
  auto again = Tune(Quick("tpu7x"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->ToJson(), table->ToJson());
  // And the selector uses it.
  auto selector = KernelSelector::Create("tpu7x", *table);
  ASSERT_TRUE(selector.ok()) << selector.status().ToString();
}

TEST(TunerTest, QuickHostTuning) {
  TuneOptions options = Quick("host");
  options.host_threads = 1;
  options.repetitions = 1;
  auto table = Tune(options);
  ASSERT_TRUE(table.ok()) << table.status().ToString();
  ExpectQuickTable(*table, "host", false);
}

TEST(TunerTest, BadTargetsAreErrors) {
  EXPECT_EQ(Tune(Quick("tpu99")).status().code(), StatusCode::kNotFound);
  TuneOptions no_threads = Quick("host");
  no_threads.host_threads = 0;
  EXPECT_EQ(Tune(no_threads).status().code(), StatusCode::kInvalidArgument);
}

TEST(PipelineBenchTest, OptionsAreValidated) {
  PipelineBenchOptions zero_page = Bench("tpu7x", true, "");
  zero_page.page_size = 0;
  EXPECT_EQ(RunPipelineBench(zero_page).status().code(),
            StatusCode::kInvalidArgument);
  PipelineBenchOptions zero_reps = Bench("tpu7x", true, "");
  zero_reps.host_repetitions = 0;
  EXPECT_EQ(RunPipelineBench(zero_reps).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_FALSE(RunPipelineBench(Bench("tpu99", false, "")).ok());
  // A filter that matches nothing runs nothing.
  auto rows = RunPipelineBench(Bench("", false, "zzz"));
  ASSERT_TRUE(rows.ok());
  EXPECT_TRUE(rows->empty());
}

}  // namespace
}  // namespace rpa::scheduler
