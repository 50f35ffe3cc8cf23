// `rpa demo` end to end: the built binary on tiny configurations (one or two
// layers, a handful of short requests), checking the summary's keys and that
// every request finished.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "scheduler/cli_runner.h"
#include <nlohmann/json.hpp>

namespace rpa::scheduler {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

using Result = testing_util::CliResult;
using testing_util::Slurp;

class CliDemoTest : public testing_util::CliTest {
 protected:
  // A tiny configuration: short requests, one layer, a few verified rows.
  static std::string Tiny() {
    return "demo --layers 1 --length-scale 0.05 --max-prompt-tokens 48 "
           "--max-output-tokens 6 --kv-budget-mib 16 --verify 4 --threads 2";
  }

  Json Summary(const std::string& dir) {
    const std::string text = Slurp(root_ / dir / "summary.json");
    Json summary = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    EXPECT_TRUE(summary.is_object()) << text;
    return summary;
  }

  static void ExpectEveryRequestFinished(const Json& s, int requests) {
    for (const char* key : {"requests", "output_tokens", "output_tokens_per_s",
                            "tpot_p50_ms", "tpot_p99_ms", "prefix_hit_rate",
                            "preemptions", "kernel_calls", "wall_s"}) {
      EXPECT_TRUE(s.contains(key)) << key;
    }
    EXPECT_EQ(s["requests"], requests);
    EXPECT_EQ(s["finished_requests"], requests);
    EXPECT_GE(s["output_tokens"].get<int>(), requests);
    EXPECT_GT(s["output_tokens_per_s"].get<double>(), 0.0);
    EXPECT_GT(s["wall_s"].get<double>(), 0.0);
    EXPECT_TRUE(s["kernel_calls"].contains("decode"));
    EXPECT_TRUE(s["kernel_calls"].contains("prefill"));
    EXPECT_TRUE(s["kernel_calls"].contains("mixed"));
    EXPECT_GT(s["kernel_calls"]["decode"].get<int>() +
                  s["kernel_calls"]["prefill"].get<int>() +
                  s["kernel_calls"]["mixed"].get<int>(),
              0);
    EXPECT_EQ(s["verification"]["passed"], true);
    EXPECT_GT(s["verification"]["rows"].get<int>(), 0);
  }
};

TEST_F(CliDemoTest, HostRunFinishesEveryRequestAndWritesBothFiles) {
  Result r = Rpa(Tiny() + " --requests 8 --out " + (root_ / "out").string());
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_THAT(r.out, HasSubstr("8 finished of 8"));
  EXPECT_THAT(r.out, HasSubstr("scaled down"));
  EXPECT_THAT(r.out, HasSubstr("1 of the model's 32 layers"));
  EXPECT_THAT(r.out, HasSubstr("time/output token"));
  EXPECT_THAT(r.out, HasSubstr("kernel choices"));
  EXPECT_THAT(r.out, HasSubstr("verification"));
  ExpectEveryRequestFinished(Summary("out"), 8);

  const Json trace = Json::parse(Slurp(root_ / "out" / "trace.json"), nullptr,
                                 /*allow_exceptions=*/false);
  ASSERT_TRUE(trace.is_object());
  ASSERT_TRUE(trace["traceEvents"].is_array());
  int attention = 0;
  int plans = 0;
  for (const Json& e : trace["traceEvents"]) {
    const std::string name = e.value("name", "");
    if (name == "attention layer 0") ++attention;
    if (name == "plan") ++plans;
  }
  EXPECT_GT(plans, 0);
  EXPECT_EQ(attention, plans);  // one layer: one attention span per step
}

TEST_F(CliDemoTest, JsonPrintsOnlyTheSummary) {
  Result r = Rpa(Tiny() + " --requests 4 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json s = Json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(s.is_object()) << r.out;
  ExpectEveryRequestFinished(s, 4);
  // Not a TTY: progress (if any) is plain lines on stderr, no carriage
  // returns.
  EXPECT_EQ(r.err.find('\r'), std::string::npos);
}

TEST_F(CliDemoTest, SharedPrefixesHitThePrefixCache) {
  Result r = Rpa(Tiny() +
                 " --requests 8 --shared-prefix-fraction 1 --shared-prefixes 1"
                 " --shared-prefix-tokens 64 --concurrency 2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json s = Json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(s.is_object()) << r.out;
  ExpectEveryRequestFinished(s, 8);
  // All but the first requests find the 64-token prefix (4 full pages).
  EXPECT_GT(s["prefix_hit_rate"].get<double>(), 0.3);
}

// 8 requests of up to 104 tokens in flight at once on 16 pages of 16 tokens:
// the engine must preempt, and the verified rows (of preempted requests
// first) must still match the reference, with swap and with recompute.
TEST_F(CliDemoTest, PreemptedRequestsStillFinishWithCorrectOutputs) {
  for (const char* mode : {"swap", "recompute"}) {
    Result r =
        Rpa("demo --layers 1 --length-scale 0.2 --max-prompt-tokens 64 "
            "--max-output-tokens 40 --kv-budget-mib 1 --verify 16 --requests 8 "
            "--concurrency 8 --json --preemption " +
            std::string(mode));
    ASSERT_EQ(r.exit_code, 0) << mode << ": " << r.err;
    const Json s = Json::parse(r.out, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(s.is_object()) << r.out;
    ExpectEveryRequestFinished(s, 8);
    EXPECT_GT(s["preemptions"].get<int>(), 0) << mode;
    EXPECT_EQ(s["preemptions_" + std::string(mode)], s["preemptions"]);
    EXPECT_GT(s["verification"]["rows_of_preempted_or_prefix_hit"].get<int>(),
              0)
        << mode;
  }
}

TEST_F(CliDemoTest, ReplaysATraceAndRejectsAMalformedOne) {
  {
    std::ofstream csv(root_ / "trace.csv");
    csv << "arrived_at,num_prefill_tokens,num_decode_tokens\n"
        << "0.0,300,40\n0.01,500,60\n0.02,200,20\n0.5,100,80\n9.0,50,5\n";
  }
  Result r = Rpa(Tiny() + " --requests 4 --json --trace " +
                 (root_ / "trace.csv").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json s = Json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(s.is_object()) << r.out;
  ExpectEveryRequestFinished(s, 4);  // the first 4 rows

  {
    std::ofstream csv(root_ / "bad.csv");
    csv << "arrived_at,num_prefill_tokens,num_decode_tokens\n"
        << "0.0,300,40\n0.01,5x0,60\n";
  }
  Result bad = Rpa(Tiny() + " --out " + (root_ / "bad_out").string() +
                   " --trace " + (root_ / "bad.csv").string());
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, HasSubstr("bad.csv:3: column 2 (num_prefill_tokens)"));
  EXPECT_FALSE(std::filesystem::exists(root_ / "bad_out" / "summary.json"));
}

TEST_F(CliDemoTest, SimulatedTargetReportsStepTimeMbuAndMfu) {
  Result r = Rpa(Tiny() + " --requests 3 --target tpu7x --out " +
                 (root_ / "dev").string());
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_THAT(r.out, HasSubstr("simulated tpu7x"));
  EXPECT_THAT(r.out, HasSubstr("MBU"));
  const Json s = Summary("dev");
  ExpectEveryRequestFinished(s, 3);
  ASSERT_TRUE(s.contains("simulated"));
  EXPECT_GT(s["simulated"]["total_us"].get<double>(), 0.0);
  EXPECT_GT(s["simulated"]["mbu"].get<double>(), 0.0);
}

TEST_F(CliDemoTest, BadOptionsFailWithAMessage) {
  Result r = Rpa("demo --preemption sometimes --requests 2 --layers 1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--preemption"));
  Result target = Rpa("demo --target tpu9 --requests 2 --layers 1");
  EXPECT_EQ(target.exit_code, 1);
  EXPECT_THAT(target.err, HasSubstr("tpu9"));
  Result azure = Rpa("demo --azure chat --requests 2 --layers 1");
  EXPECT_EQ(azure.exit_code, 1);
  EXPECT_THAT(azure.err, HasSubstr("chat"));
}

}  // namespace
}  // namespace rpa::scheduler
