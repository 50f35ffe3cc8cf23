// `rpa bench attention` end to end: the --json contract (one JSON array of
// rows and nothing else on stdout) and its usage errors. The smallest named
// workload (the mixed batch's two prefill chunks) keeps it short; the
// figures themselves are not checked, only that they are there and positive.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "scheduler/cli_runner.h"
#include <nlohmann/json.hpp>

namespace rpa::scheduler {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;
using Result = testing_util::CliResult;

class CliBenchTest : public testing_util::CliTest {
 protected:
  // One repetition of one run per row, a small probe buffer.
  static std::string Quick() {
    return "bench attention --repetitions 1 --min-time-ms 0 --buffer-mib 8 ";
  }
};

TEST_F(CliBenchTest, JsonIsOneArrayOfRowsAndNothingElse) {
  Result r = Rpa(Quick() +
                 "--filter '^mixed_azure_f16_prefill$' --threads 2,1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json rows = Json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(rows.is_discarded()) << "stdout is not one JSON value:\n"
                                    << r.out;
  ASSERT_TRUE(rows.is_array()) << r.out;
  ASSERT_EQ(rows.size(), 2U) << r.out;
  const std::set<std::string> keys = {"name", "threads", "time_ms",
                                      "gbps", "gflops",  "roofline_pct"};
  int threads = 1;  // thread counts come out sorted
  for (const Json& row : rows) {
    ASSERT_TRUE(row.is_object()) << row;
    std::set<std::string> have;
    for (const auto& item : row.items()) have.insert(item.key());
    ASSERT_EQ(have, keys) << row;
    EXPECT_EQ(row.at("name"), Json("mixed_azure_f16_prefill"));
    EXPECT_EQ(row.at("threads"), Json(threads++));
    for (const char* figure : {"time_ms", "gbps", "gflops", "roofline_pct"}) {
      ASSERT_TRUE(row.at(figure).is_number()) << figure << " in " << row;
      EXPECT_GT(row.at(figure).get<double>(), 0.0) << figure << " in " << row;
    }
  }
  // The progress report goes to stderr.
  EXPECT_THAT(r.err, HasSubstr("mixed_azure_f16_prefill: building"));
}

TEST_F(CliBenchTest, BadArgumentsExitNonZeroWithTheReasonAndPrintNoRows) {
  Result bad_regex = Rpa(Quick() + "--filter '(' --json");
  EXPECT_NE(bad_regex.exit_code, 0);
  EXPECT_THAT(bad_regex.err, HasSubstr("not a valid regex"));
  EXPECT_EQ(bad_regex.out, "");

  Result no_match = Rpa(Quick() + "--filter no_such_workload --json");
  EXPECT_NE(no_match.exit_code, 0);
  EXPECT_THAT(no_match.err, HasSubstr("matches no workload"));
  EXPECT_EQ(no_match.out, "");

  EXPECT_NE(Rpa(Quick() + "--threads 0").exit_code, 0);
  EXPECT_NE(Rpa(Quick() + "--repetitions 0").exit_code, 0);
}

}  // namespace
}  // namespace rpa::scheduler
