#include "rpa/scheduler/tuner.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "rpa/scheduler/pipeline_bench.h"
#include "rpa/scheduler/selector.h"

namespace rpa::scheduler {
namespace {

using attention::KernelKind;

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
  auto again = Tune({.target = "tpu7x", .quick = true});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->ToJson(), table->ToJson());
  // And the selector uses it.
  auto selector = KernelSelector::Create("tpu7x", *table);
  ASSERT_TRUE(selector.ok()) << selector.status().ToString();
}

TEST(TunerTest, QuickHostTuning) {
  auto table = Tune(
      {.target = "host", .host_threads = 1, .repetitions = 1, .quick = true});
  ASSERT_TRUE(table.ok()) << table.status().ToString();
  ExpectQuickTable(*table, "host", false);
}

TEST(TunerTest, BadTargetsAreErrors) {
  EXPECT_EQ(Tune({.target = "tpu99"}).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(Tune({.target = "host", .host_threads = 0}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(PipelineBenchTest, OptionsAreValidated) {
  EXPECT_EQ(RunPipelineBench({.page_size = 0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(RunPipelineBench({.host_repetitions = 0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_FALSE(RunPipelineBench({.device = "tpu99"}).ok());
  // A filter that matches nothing runs nothing.
  auto rows = RunPipelineBench({.device = "", .host = false, .filter = "zzz"});
  ASSERT_TRUE(rows.ok());
  EXPECT_TRUE(rows->empty());
}

}  // namespace
}  // namespace rpa::scheduler
