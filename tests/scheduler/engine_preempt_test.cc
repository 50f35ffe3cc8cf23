// Preemption when pages run out: by swap (io_uring file I/O) and by
// recompute, both giving the same tokens, KV bits and outputs as a run with
// room to spare; swap I/O failures surface as errors and keep the request.

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "scheduler/engine_test_util.h"

#include "rpa/scheduler/engine.h"

namespace rpa::scheduler {
namespace {

using namespace ::rpa::scheduler::testing_util;  // NOLINT: test helpers

// Five requests whose KV (up to 8 pages each at the end) cannot all fit in
// 16 pages: decoding grows them until some must be preempted.
std::vector<TestRequest> PressureWorkload() {
  std::vector<TestRequest> requests;
  for (std::uint32_t i = 0; i < 5; ++i) {
    requests.push_back({.id = 50 + i,
                        .prompt = Prompt(10 + 3 * i, 40 + i),
                        .max_new = 16,
                        .priority = static_cast<std::int32_t>(i % 2),
                        .add_at_step = static_cast<int>(i / 2)});
  }
  return requests;
}

EngineOptions Tight(PreemptionMode mode, bool prefix_caching) {
  EngineOptions options = TinyOptions();
  options.num_pages = 16;
  options.preemption_mode = mode;
  options.enable_prefix_caching = prefix_caching;
  return options;
}

RunResult Baseline() {
  EngineOptions roomy = TinyOptions();
  roomy.num_pages = 256;
  roomy.enable_prefix_caching = false;
  return Driver::Run(roomy, PressureWorkload());
}

void ExpectSameAsBaseline(const RunResult& run) {
  static const RunResult* const baseline = new RunResult(Baseline());
  ASSERT_EQ(baseline->failure, "");
  EXPECT_EQ(
      baseline->stats.preemptions_swap + baseline->stats.preemptions_recompute,
      0u);
  EXPECT_EQ(CompareTokensAndKv(run, *baseline), "");
  EXPECT_EQ(CompareOutputs(run, *baseline), "");
}

TEST(EnginePreemptTest, SwapGivesTheSameResultsAsNoPreemption) {
  for (bool prefix : {false, true}) {
    SCOPED_TRACE(prefix ? "prefix caching" : "no prefix caching");
    const RunResult run =
        Driver::Run(Tight(PreemptionMode::kSwap, prefix), PressureWorkload());
    ASSERT_EQ(run.failure, "");
    EXPECT_GT(run.stats.preemptions_swap, 0u);
    EXPECT_GT(run.stats.swap_out_bytes, 0u);
    EXPECT_EQ(run.stats.swap_in_bytes, run.stats.swap_out_bytes);
    EXPECT_EQ(run.stats.swap_io_errors, 0u);
    EXPECT_TRUE(run.plan_errors.empty());
    ExpectSameAsBaseline(run);
  }
}

TEST(EnginePreemptTest, RecomputeGivesTheSameResultsAsNoPreemption) {
  for (bool prefix : {false, true}) {
    SCOPED_TRACE(prefix ? "prefix caching" : "no prefix caching");
    const RunResult run = Driver::Run(Tight(PreemptionMode::kRecompute, prefix),
                                      PressureWorkload());
    ASSERT_EQ(run.failure, "");
    EXPECT_GT(run.stats.preemptions_recompute, 0u);
    EXPECT_EQ(run.stats.preemptions_swap, 0u);
    EXPECT_EQ(run.stats.swap_out_bytes, 0u);
    ExpectSameAsBaseline(run);
  }
}

// The driver's KV check sees a swapped request's KV before and after: the
// bytes read back must equal the bytes written out. Here also directly.
TEST(EnginePreemptTest, SwappedKvComesBackBitIdentical) {
  auto engine = Engine::Create(Tight(PreemptionMode::kSwap, false));
  ASSERT_TRUE(engine.ok()) << engine.status();
  Driver driver(engine->get());
  RunResult result;
  for (const TestRequest& request : PressureWorkload()) {
    ASSERT_TRUE(driver.Add(request, &result).ok());
  }
  bool saw_swapped = false;
  bool saw_resumed = false;
  std::map<RequestId, RequestState> last_state;
  for (int step = 0; step < 500 && (*engine)->HasWork(); ++step) {
    ASSERT_TRUE(driver.Step(&result)) << result.failure;
    for (const auto& [id, tokens] : result.tokens) {
      auto info = (*engine)->GetRequest(id);
      if (!info.ok()) continue;
      if (info->state == RequestState::kSwappedOut) saw_swapped = true;
      if (info->state == RequestState::kRunning &&
          last_state[id] == RequestState::kSwappingIn) {
        saw_resumed = true;  // and SnapshotKv compared its bytes
      }
      last_state[id] = info->state;
    }
  }
  EXPECT_TRUE(saw_swapped);
  EXPECT_TRUE(saw_resumed);
  EXPECT_EQ(result.failure, "");
}

// Aborting a request whose swap-out is still in flight waits for the writes
// and gives its pages back at once (a fuzzer regression: they used to wait
// for the next Plan, which a drained engine never calls).
TEST(EnginePreemptTest, AbortDuringSwapOutReturnsThePagesAtOnce) {
  auto engine = Engine::Create(Tight(PreemptionMode::kSwap, false));
  ASSERT_TRUE(engine.ok()) << engine.status();
  Driver driver(engine->get());
  RunResult result;
  for (const TestRequest& request : PressureWorkload()) {
    ASSERT_TRUE(driver.Add(request, &result).ok());
  }
  bool aborted_in_flight = false;
  for (int step = 0; step < 500 && (*engine)->HasWork(); ++step) {
    ASSERT_TRUE(driver.Step(&result)) << result.failure;
    for (const TestRequest& request : PressureWorkload()) {
      auto info = (*engine)->GetRequest(request.id);
      if (info.ok() && info->state == RequestState::kSwappedOut &&
          !aborted_in_flight) {
        const std::uint32_t used = (*engine)->Stats().used_pages;
        ASSERT_TRUE((*engine)->Abort(request.id).ok());
        // Its pages (held until the writes land) are free now.
        EXPECT_LT((*engine)->Stats().used_pages, used);
        aborted_in_flight = true;
        ASSERT_TRUE((*engine)->CheckInvariants().ok());
      }
    }
  }
  EXPECT_TRUE(aborted_in_flight);
  EXPECT_FALSE((*engine)->HasWork());
  EXPECT_EQ((*engine)->Stats().used_pages, 0u);
  EXPECT_EQ((*engine)->Stats().aborted_requests, 1u);
}

// A fault injector failing one I/O of the given kind; counts what it saw.
struct Faults {
  bool fail_write = true;
  std::uint64_t fail_nth = 0;  // of that kind
  std::atomic<std::uint64_t> seen{0};
  std::atomic<std::uint64_t> failed{0};
};

SwapFaultInjector Inject(std::shared_ptr<Faults> faults) {
  return [faults](std::uint64_t, bool is_write) {
    if (is_write != faults->fail_write) return false;
    if (faults->seen.fetch_add(1) != faults->fail_nth) return false;
    faults->failed.fetch_add(1);
    return true;
  };
}

void CheckFaultKeepsRequest(bool fail_write) {
  auto faults = std::make_shared<Faults>();
  faults->fail_write = fail_write;
  EngineOptions options = Tight(PreemptionMode::kSwap, false);
  options.swap_fault_injector = Inject(faults);
  const RunResult run = Driver::Run(options, PressureWorkload());
  ASSERT_EQ(run.failure, "");
  EXPECT_EQ(faults->failed.load(), 1u);
  EXPECT_EQ(run.stats.swap_io_errors, 1u);
  ASSERT_EQ(run.plan_errors.size(), 1u);
  const Status& error = run.plan_errors[0];
  EXPECT_EQ(error.code(), StatusCode::kInternal);
  EXPECT_NE(error.message().find(fail_write ? "swap-out of request"
                                            : "swap-in of request"),
            std::string::npos)
      << error;
  EXPECT_NE(error.message().find("injected"), std::string::npos) << error;
  // The request was kept: every request finished with the same tokens,
  // KV and outputs as without preemption.
  EXPECT_EQ(run.stats.finished_requests, PressureWorkload().size());
  ExpectSameAsBaseline(run);
}

TEST(EnginePreemptTest, SwapWriteFailureIsReportedAndTheRequestKept) {
  CheckFaultKeepsRequest(/*fail_write=*/true);
}

TEST(EnginePreemptTest, SwapReadFailureIsReportedAndTheRequestKept) {
  CheckFaultKeepsRequest(/*fail_write=*/false);
}

TEST(EnginePreemptTest, EveryIoFailingStillFinishesEverything) {
  EngineOptions options = Tight(PreemptionMode::kSwap, true);
  options.swap_fault_injector = [](std::uint64_t, bool) { return true; };
  const RunResult run = Driver::Run(options, PressureWorkload());
  ASSERT_EQ(run.failure, "");
  EXPECT_GT(run.stats.swap_io_errors, 0u);
  EXPECT_FALSE(run.plan_errors.empty());
  // One Plan reports the first of the failures it reaped.
  EXPECT_LE(run.plan_errors.size(), run.stats.swap_io_errors);
  ExpectSameAsBaseline(run);
}

TEST(EnginePreemptTest, UnusableSwapDirectoryFallsBackToRecompute) {
  EngineOptions options = Tight(PreemptionMode::kSwap, false);
  options.swap_directory = "/nonexistent/rpa-engine-test";
  const RunResult run = Driver::Run(options, PressureWorkload());
  ASSERT_EQ(run.failure, "");
  EXPECT_EQ(run.stats.preemptions_swap, 0u);
  EXPECT_GT(run.stats.preemptions_recompute, 0u);
  ExpectSameAsBaseline(run);
}

TEST(EnginePreemptTest, SwapLimitFallsBackToRecompute) {
  EngineOptions options = Tight(PreemptionMode::kSwap, false);
  // One page of both layers: 4 tokens x 2 x 2 heads x 32 x 4 bytes x 2.
  options.max_swap_bytes = 4 * 2 * 2 * 32 * 4 * 2;
  const RunResult run = Driver::Run(options, PressureWorkload());
  ASSERT_EQ(run.failure, "");
  EXPECT_GT(run.stats.preemptions_recompute, 0u);
  ExpectSameAsBaseline(run);
}

// The swap file has no name: the directory stays empty while requests are
// swapped out.
TEST(EnginePreemptTest, SwapFileLeavesNoNameBehind) {
  char pattern[] = "/tmp/rpa-engine-swap-XXXXXX";
  ASSERT_NE(::mkdtemp(pattern), nullptr);
  const std::filesystem::path directory = pattern;
  EngineOptions options = Tight(PreemptionMode::kSwap, false);
  options.swap_directory = directory;
  const RunResult run = Driver::Run(options, PressureWorkload());
  ASSERT_EQ(run.failure, "");
  EXPECT_GT(run.stats.preemptions_swap, 0u);
  EXPECT_TRUE(std::filesystem::is_empty(directory));
  std::filesystem::remove(directory);
}

}  // namespace
}  // namespace rpa::scheduler
