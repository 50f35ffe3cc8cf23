// The request-stream generator (rpa/scheduler/workload.h): the strict trace
// CSV parser, the Azure 2023 distribution (CSV and embedded percentiles),
// sampling, replay, scaling, shared prefixes and percentiles.

#include "rpa/scheduler/workload.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace rpa::scheduler {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr char kHeader[] = "arrived_at,num_prefill_tokens,num_decode_tokens\n";

std::string Csv(const std::string& rows) { return kHeader + rows; }

// The message of a parse that must fail.
std::string ParseError(const std::string& text) {
  auto rows = ParseTraceCsv(text, "t.csv");
  EXPECT_FALSE(rows.ok()) << "accepted: " << text;
  if (rows.ok()) return "";
  EXPECT_EQ(rows.status().code(), StatusCode::kInvalidArgument);
  return rows.status().message();
}

// The shared data directory, or nullopt (the test then skips).
std::optional<std::filesystem::path> AzureFile(AzureTrace trace) {
  return FindAzureTraceFile(trace);
}

TEST(TraceCsvTest, ParsesRows) {
  auto rows = ParseTraceCsv(Csv("0.0,512,64\n4.25,300,100\n"), "t.csv");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0].arrived_at_s, 0.0);
  EXPECT_EQ((*rows)[0].num_prefill_tokens, 512u);
  EXPECT_EQ((*rows)[0].num_decode_tokens, 64u);
  EXPECT_DOUBLE_EQ((*rows)[1].arrived_at_s, 4.25);
  EXPECT_EQ((*rows)[1].num_prefill_tokens, 300u);
  EXPECT_EQ((*rows)[1].num_decode_tokens, 100u);
}

TEST(TraceCsvTest, AcceptsCrlfAndAMissingFinalNewline) {
  auto crlf = ParseTraceCsv(
      "arrived_at,num_prefill_tokens,num_decode_tokens\r\n1,2,3\r\n", "t.csv");
  ASSERT_TRUE(crlf.ok()) << crlf.status();
  EXPECT_EQ(crlf->size(), 1u);
  auto bare = ParseTraceCsv(Csv("1,2,3\n1.5,4,5"), "t.csv");
  ASSERT_TRUE(bare.ok()) << bare.status();
  ASSERT_EQ(bare->size(), 2u);
  EXPECT_EQ((*bare)[1].num_decode_tokens, 5u);
}

TEST(TraceCsvTest, MaxRowsStopsEarlyAndIgnoresTheRest) {
  // The third row is malformed, but only two are asked for.
  auto rows =
      ParseTraceCsv(Csv("0,1,1\n1,2,2\nbroken\n"), "t.csv", /*max_rows=*/2);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 2u);
  EXPECT_FALSE(ParseTraceCsv(Csv("0,1,1\n1,2,2\nbroken\n"), "t.csv", 3).ok());
}

TEST(TraceCsvTest, RejectsABadHeader) {
  EXPECT_THAT(ParseError("arrived_at,prompt,output\n0,1,1\n"),
              AllOf(HasSubstr("t.csv:1"), HasSubstr("header")));
  EXPECT_THAT(ParseError("0,1,1\n"), HasSubstr("t.csv:1"));
  EXPECT_THAT(ParseError(""), HasSubstr("empty"));
  EXPECT_THAT(ParseError(kHeader), HasSubstr("no rows"));
}

TEST(TraceCsvTest, RejectionsNameTheLineAndTheColumn) {
  EXPECT_THAT(ParseError(Csv("0,1,1\n1,12x,3\n")),
              AllOf(HasSubstr("t.csv:3"), HasSubstr("column 2"),
                    HasSubstr("num_prefill_tokens"), HasSubstr("\"12x\"")));
  EXPECT_THAT(ParseError(Csv("0,1,0\n")),
              AllOf(HasSubstr("t.csv:2"), HasSubstr("column 3"),
                    HasSubstr("num_decode_tokens")));
  EXPECT_THAT(ParseError(Csv("abc,1,1\n")),
              AllOf(HasSubstr("t.csv:2"), HasSubstr("column 1"),
                    HasSubstr("arrived_at")));
  EXPECT_THAT(ParseError(Csv("-1,1,1\n")), HasSubstr("negative"));
  EXPECT_THAT(ParseError(Csv("2,1,1\n1,1,1\n")),
              AllOf(HasSubstr("t.csv:3"), HasSubstr("before")));
  EXPECT_THAT(ParseError(Csv("inf,1,1\n")), HasSubstr("finite"));
  EXPECT_THAT(ParseError(Csv("nan,1,1\n")), HasSubstr("finite"));
  EXPECT_THAT(
      ParseError(Csv("0,1\n")),
      AllOf(HasSubstr("t.csv:2"), HasSubstr("column 3"), HasSubstr("missing")));
  EXPECT_THAT(ParseError(Csv("0\n")),
              AllOf(HasSubstr("column 2"), HasSubstr("missing")));
  EXPECT_THAT(ParseError(Csv("0,1,1,4\n")), HasSubstr("more than 3 fields"));
  EXPECT_THAT(ParseError(Csv("0,1,1\n\n1,1,1\n")),
              AllOf(HasSubstr("t.csv:3"), HasSubstr("empty line")));
  EXPECT_THAT(ParseError(Csv("0,1,1\n\n")), HasSubstr("t.csv:3"));
  EXPECT_THAT(ParseError(Csv("0, 1,1\n")), HasSubstr("column 2"));
  EXPECT_THAT(ParseError(Csv("0,+1,1\n")), HasSubstr("column 2"));
  EXPECT_THAT(ParseError(Csv("0,1.5,1\n")), HasSubstr("column 2"));
  EXPECT_THAT(ParseError(Csv("0,,1\n")), HasSubstr("column 2"));
  EXPECT_THAT(ParseError(Csv("0,99999999999999999999999,1\n")),
              HasSubstr("outside"));
  EXPECT_THAT(ParseError(Csv("0,16777217,1\n")), HasSubstr("outside"));
}

TEST(TraceCsvTest, BinaryGarbageIsQuotedNotPrinted) {
  std::string text = Csv(std::string("0,\x01\xff", 4) + ",1\n");
  EXPECT_THAT(ParseError(text), HasSubstr("\\x01\\xff"));
}

TEST(TraceCsvTest, ReadTraceCsvReportsAMissingFile) {
  auto rows = ReadTraceCsv("/nonexistent/trace.csv");
  ASSERT_FALSE(rows.ok());
  EXPECT_EQ(rows.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(rows.status().message(), HasSubstr("/nonexistent/trace.csv"));
}

TEST(TraceCsvTest, ReadsTheAzureTraces) {
  const std::map<AzureTrace, std::size_t> expected_rows = {
      {AzureTrace::kConversation, 19366}, {AzureTrace::kCode, 8819}};
  for (const auto& [trace, count] : expected_rows) {
    auto file = AzureFile(trace);
    if (!file.has_value()) GTEST_SKIP() << "shared/data not present";
    auto rows = ReadTraceCsv(*file);
    ASSERT_TRUE(rows.ok()) << rows.status();
    EXPECT_EQ(rows->size(), count);
    auto first = ReadTraceCsv(*file, 2000);
    ASSERT_TRUE(first.ok());
    EXPECT_EQ(first->size(), 2000u);
  }
  auto conv = ReadTraceCsv(*AzureFile(AzureTrace::kConversation), 1);
  ASSERT_TRUE(conv.ok());
  EXPECT_EQ((*conv)[0].num_prefill_tokens, 374u);
  EXPECT_EQ((*conv)[0].num_decode_tokens, 44u);
}

// The embedded table is what the CSV gives by nearest rank.
TEST(AzureDistributionTest, PercentilesMatchTheCsv) {
  for (AzureTrace trace : {AzureTrace::kConversation, AzureTrace::kCode}) {
    auto file = AzureFile(trace);
    if (!file.has_value()) GTEST_SKIP() << "shared/data not present";
    auto rows = ReadTraceCsv(*file);
    ASSERT_TRUE(rows.ok()) << rows.status();
    std::vector<std::uint32_t> prompts;
    std::vector<std::uint32_t> outputs;
    for (const TraceRow& r : *rows) {
      prompts.push_back(r.num_prefill_tokens);
      outputs.push_back(r.num_decode_tokens);
    }
    std::sort(prompts.begin(), prompts.end());
    std::sort(outputs.begin(), outputs.end());
    const std::size_t n = prompts.size();
    const auto grid = AzurePercentileGridTenths();
    ASSERT_EQ(grid.front(), 0u);
    ASSERT_EQ(grid.back(), 1000u);
    ASSERT_EQ(AzurePromptPercentiles(trace).size(), grid.size());
    ASSERT_EQ(AzureOutputPercentiles(trace).size(), grid.size());
    for (std::size_t i = 0; i < grid.size(); ++i) {
      if (i > 0) {
        ASSERT_GT(grid[i], grid[i - 1]);
      }
      const std::size_t index = (grid[i] * (n - 1) + 500) / 1000;
      EXPECT_EQ(AzurePromptPercentiles(trace)[i], prompts[index]) << grid[i];
      EXPECT_EQ(AzureOutputPercentiles(trace)[i], outputs[index]) << grid[i];
    }
  }
}

// Mean of many samples against the published means (README: conv prompt 1155,
// output 211; code prompt 2048, output 28), for both representations.
TEST(AzureDistributionTest, SampledMeansMatchThePublishedOnes) {
  struct Expect {
    AzureTrace trace;
    double prompt_mean;
    double output_mean;
  };
  for (const Expect& e : {Expect{AzureTrace::kConversation, 1155, 211},
                          Expect{AzureTrace::kCode, 2048, 28}}) {
    std::vector<LengthDistribution> dists = {
        LengthDistribution::AzurePercentiles(e.trace)};
    if (AzureFile(e.trace).has_value()) {
      auto csv = LengthDistribution::Azure(e.trace);
      ASSERT_TRUE(csv.ok()) << csv.status();
      EXPECT_TRUE(csv->empirical());
      dists.push_back(*csv);
    }
    for (const LengthDistribution& dist : dists) {
      auto requests = SampleWorkload(dist, {.num_requests = 20000});
      ASSERT_TRUE(requests.ok()) << requests.status();
      const WorkloadTotals totals = SumWorkload(*requests);
      const double prompt_mean =
          static_cast<double>(totals.prompt_tokens) / 20000.0;
      const double output_mean =
          static_cast<double>(totals.output_tokens) / 20000.0;
      // 5 % (the percentile table's interpolation loses some of the tail).
      EXPECT_NEAR(prompt_mean, e.prompt_mean, 0.05 * e.prompt_mean)
          << dist.description();
      EXPECT_NEAR(output_mean, e.output_mean, 0.05 * e.output_mean)
          << dist.description();
    }
  }
}

TEST(AzureDistributionTest, ExplicitDirectoryWithoutTheFileIsNotFound) {
  auto dist = LengthDistribution::Azure(AzureTrace::kConversation,
                                        std::filesystem::path("/nonexistent"));
  ASSERT_FALSE(dist.ok());
  EXPECT_EQ(dist.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(dist.status().message(), HasSubstr("/nonexistent"));
}

TEST(AzureDistributionTest, TraceNames) {
  EXPECT_EQ(*ParseAzureTraceName("conv"), AzureTrace::kConversation);
  EXPECT_EQ(*ParseAzureTraceName("conversation"), AzureTrace::kConversation);
  EXPECT_EQ(*ParseAzureTraceName("code"), AzureTrace::kCode);
  EXPECT_THAT(ParseAzureTraceName("chat").status().message(),
              HasSubstr("\"chat\""));
  EXPECT_NEAR(AzureMeanArrivalRatePerS(AzureTrace::kConversation), 5.53, 0.01);
  EXPECT_NEAR(AzureMeanArrivalRatePerS(AzureTrace::kCode), 2.57, 0.01);
}

LengthDistribution Percentiles() {
  return LengthDistribution::AzurePercentiles(AzureTrace::kConversation);
}

TEST(SampleWorkloadTest, SameSeedSameRequestsOtherSeedOthers) {
  WorkloadOptions options{.seed = 7, .num_requests = 50};
  auto a = SampleWorkload(Percentiles(), options);
  auto b = SampleWorkload(Percentiles(), options);
  options.seed = 8;
  auto c = SampleWorkload(Percentiles(), options);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  int differing = 0;
  for (std::size_t i = 0; i < 50; ++i) {
    EXPECT_EQ((*a)[i].id, i);
    EXPECT_EQ((*a)[i].prompt, (*b)[i].prompt);
    EXPECT_EQ((*a)[i].output_tokens, (*b)[i].output_tokens);
    EXPECT_EQ((*a)[i].arrival_s, (*b)[i].arrival_s);
    if ((*a)[i].prompt != (*c)[i].prompt) ++differing;
  }
  EXPECT_GT(differing, 45);
}

TEST(SampleWorkloadTest, PoissonArrivalsHaveTheConfiguredRate) {
  auto requests = SampleWorkload(
      Percentiles(), {.num_requests = 4000, .arrival_rate_per_s = 8.0});
  ASSERT_TRUE(requests.ok());
  EXPECT_EQ(requests->front().arrival_s, 0.0);
  for (std::size_t i = 1; i < requests->size(); ++i) {
    ASSERT_GE((*requests)[i].arrival_s, (*requests)[i - 1].arrival_s);
  }
  const double rate = 3999.0 / requests->back().arrival_s;
  EXPECT_NEAR(rate, 8.0, 0.4);
}

TEST(SampleWorkloadTest, ClosedLoopArrivesAtZero) {
  auto requests = SampleWorkload(
      Percentiles(),
      {.num_requests = 10, .arrivals = ArrivalProcess::kClosedLoop});
  ASSERT_TRUE(requests.ok());
  for (const WorkloadRequest& r : *requests) EXPECT_EQ(r.arrival_s, 0.0);
}

TEST(SampleWorkloadTest, ScalingAndCaps) {
  WorkloadOptions options{.num_requests = 500};
  auto plain = SampleWorkload(Percentiles(), options);
  options.scaling = {
      .length_scale = 0.25, .max_prompt_tokens = 300, .max_output_tokens = 40};
  auto scaled = SampleWorkload(Percentiles(), options);
  ASSERT_TRUE(plain.ok() && scaled.ok());
  for (std::size_t i = 0; i < 500; ++i) {
    const WorkloadRequest& p = (*plain)[i];
    const WorkloadRequest& s = (*scaled)[i];
    EXPECT_EQ(p.source.num_prefill_tokens, s.source.num_prefill_tokens);
    EXPECT_EQ(p.prompt.size(), p.source.num_prefill_tokens);
    const auto want_prompt = std::clamp<double>(
        std::round(0.25 * p.source.num_prefill_tokens), 1, 300);
    const auto want_output = std::clamp<double>(
        std::round(0.25 * p.source.num_decode_tokens), 1, 40);
    EXPECT_EQ(static_cast<double>(s.prompt.size()), want_prompt);
    EXPECT_EQ(static_cast<double>(s.output_tokens), want_output);
    EXPECT_GE(s.output_tokens, 1u);
  }
}

TEST(SampleWorkloadTest, TokenIdsAreInTheVocabulary) {
  auto requests =
      SampleWorkload(Percentiles(), {.num_requests = 20, .vocab_size = 1000});
  ASSERT_TRUE(requests.ok());
  std::map<std::int32_t, int> seen;
  for (const WorkloadRequest& r : *requests) {
    for (std::int32_t t : r.prompt) {
      ASSERT_GE(t, 0);
      ASSERT_LT(t, 1000);
      ++seen[t];
    }
  }
  EXPECT_GT(seen.size(), 900u);  // spread over the vocabulary
}

TEST(SampleWorkloadTest, SharedPrefixes) {
  WorkloadOptions options{
      .num_requests = 2000,
      .shared_prefix = {
          .fraction = 0.6, .num_prefixes = 4, .prefix_tokens = 100}};
  auto requests = SampleWorkload(Percentiles(), options);
  ASSERT_TRUE(requests.ok());
  std::map<std::int32_t, std::vector<std::int32_t>> prefixes;
  int with_prefix = 0;
  for (const WorkloadRequest& r : *requests) {
    if (r.shared_prefix < 0) {
      EXPECT_EQ(r.shared_prefix_tokens, 0u);
      EXPECT_EQ(r.prompt.size(), r.source.num_prefill_tokens);
      continue;
    }
    ++with_prefix;
    ASSERT_LT(r.shared_prefix, 4);
    EXPECT_EQ(r.shared_prefix_tokens, 100u);
    EXPECT_EQ(r.prompt.size(), 100u + r.source.num_prefill_tokens);
    std::vector<std::int32_t> head(r.prompt.begin(), r.prompt.begin() + 100);
    auto [it, inserted] = prefixes.emplace(r.shared_prefix, head);
    if (!inserted) {
      EXPECT_EQ(it->second, head);
    }
  }
  EXPECT_NEAR(with_prefix / 2000.0, 0.6, 0.04);
  ASSERT_EQ(prefixes.size(), 4u);
  EXPECT_NE(prefixes[0], prefixes[1]);
  EXPECT_EQ(SumWorkload(*requests).shared_prefix_requests,
            static_cast<std::uint64_t>(with_prefix));
}

TEST(SampleWorkloadTest, InvalidOptionsNameTheField) {
  auto error = [](const WorkloadOptions& o) {
    auto r = SampleWorkload(Percentiles(), o);
    EXPECT_FALSE(r.ok());
    return r.ok() ? std::string() : r.status().message();
  };
  EXPECT_THAT(error({.num_requests = 0}), HasSubstr("num_requests"));
  EXPECT_THAT(error({.arrival_rate_per_s = 0}),
              HasSubstr("arrival_rate_per_s"));
  EXPECT_THAT(error({.arrival_rate_per_s = kNaN}),
              HasSubstr("arrival_rate_per_s"));
  EXPECT_THAT(error({.scaling = {.length_scale = -1}}),
              HasSubstr("length_scale"));
  EXPECT_THAT(error({.shared_prefix = {.fraction = 1.5}}),
              HasSubstr("fraction"));
  EXPECT_THAT(error({.shared_prefix = {.fraction = 0.5, .prefix_tokens = 8}}),
              HasSubstr("num_prefixes"));
  EXPECT_THAT(error({.shared_prefix = {.fraction = 0.5, .num_prefixes = 2}}),
              HasSubstr("prefix_tokens"));
  EXPECT_THAT(error({.vocab_size = 1}), HasSubstr("vocab_size"));
  EXPECT_THAT(error({.time_scale = 0}), HasSubstr("time_scale"));
}

TEST(ReplayTraceTest, KeepsOrderArrivalsAndLengths) {
  auto rows = ParseTraceCsv(Csv("10,100,20\n10.5,300,7\n12,50,1\n"), "t.csv");
  ASSERT_TRUE(rows.ok());
  auto requests = ReplayTrace(*rows, {.time_scale = 2.0});
  ASSERT_TRUE(requests.ok()) << requests.status();
  ASSERT_EQ(requests->size(), 3u);
  EXPECT_EQ((*requests)[0].arrival_s, 0.0);
  EXPECT_DOUBLE_EQ((*requests)[1].arrival_s, 1.0);
  EXPECT_DOUBLE_EQ((*requests)[2].arrival_s, 4.0);
  EXPECT_EQ((*requests)[1].prompt.size(), 300u);
  EXPECT_EQ((*requests)[1].output_tokens, 7u);
  EXPECT_EQ((*requests)[2].id, 2u);

  auto closed = ReplayTrace(*rows, {.arrivals = ArrivalProcess::kClosedLoop,
                                    .scaling = {.length_scale = 0.1}});
  ASSERT_TRUE(closed.ok());
  EXPECT_EQ((*closed)[2].arrival_s, 0.0);
  EXPECT_EQ((*closed)[0].prompt.size(), 10u);
  EXPECT_EQ((*closed)[2].output_tokens, 1u);  // round(0.1) clamped to 1
  EXPECT_EQ((*closed)[0].source.num_prefill_tokens, 100u);

  EXPECT_FALSE(ReplayTrace({}, {}).ok());
  EXPECT_FALSE(ReplayTrace(*rows, {.time_scale = -1}).ok());
}

TEST(PercentileTest, LinearBetweenClosestRanks) {
  const std::vector<double> values = {5, 1, 4, 2, 3};
  EXPECT_DOUBLE_EQ(Percentile(values, 0), 1);
  EXPECT_DOUBLE_EQ(Percentile(values, 50), 3);
  EXPECT_DOUBLE_EQ(Percentile(values, 100), 5);
  EXPECT_DOUBLE_EQ(Percentile(values, 25), 2);
  EXPECT_DOUBLE_EQ(Percentile(values, 99), 4.96);
  EXPECT_DOUBLE_EQ(Percentile(std::vector<double>{7}, 99), 7);
  EXPECT_TRUE(std::isnan(Percentile({}, 50)));
  EXPECT_TRUE(std::isnan(Percentile(values, kNaN)));
}

}  // namespace
}  // namespace rpa::scheduler
