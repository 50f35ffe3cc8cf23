// The engine's API contract: option validation, misuse rejected with a
// Status (never a crash) and changing nothing, empty steps, several engines
// in one process.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <thread>
#include <vector>

#include "scheduler/engine_test_util.h"

#include "rpa/runtime/executor.h"
#include "rpa/scheduler/engine.h"

namespace rpa::scheduler {
namespace {

using namespace ::rpa::scheduler::testing_util;  // NOLINT: test helpers
using ::testing::HasSubstr;

void ExpectInvalid(const EngineOptions& options, const char* text,
                   StatusCode code = StatusCode::kInvalidArgument) {
  auto engine = Engine::Create(options);
  ASSERT_FALSE(engine.ok()) << text;
  EXPECT_EQ(engine.status().code(), code) << engine.status();
  EXPECT_THAT(engine.status().message(), HasSubstr(text));
}

TEST(EngineApiTest, CreateRejectsBadOptionsNamingTheField) {
  EngineOptions o = TinyOptions();
  o.model.num_layers = 0;
  ExpectInvalid(o, "model.num_layers");
  o = TinyOptions();
  o.model.num_q_heads = 3;
  ExpectInvalid(o, "not a multiple of model.num_kv_heads 2");
  o = TinyOptions();
  o.model.head_dim = 0;
  ExpectInvalid(o, "model.head_dim");
  o = TinyOptions();
  o.model.sliding_window_tokens = {4};
  ExpectInvalid(o, "model.sliding_window_tokens has 1 entries");
  o = TinyOptions();
  o.model.sliding_window_tokens = {4, 0};
  ExpectInvalid(o, "model.sliding_window_tokens[1] = 0");
  o = TinyOptions();
  o.model.soft_cap = 0.0F;
  ExpectInvalid(o, "soft_cap must not be 0");
  o = TinyOptions();
  o.model.storage = static_cast<memory::StorageType>(9);
  ExpectInvalid(o, "model.storage = 9");
  o = TinyOptions();
  o.kv_budget_bytes = 1 << 20;
  ExpectInvalid(o, "exactly one of num_pages (64) and kv_budget_bytes");
  o = TinyOptions();
  o.num_pages = 0;
  ExpectInvalid(o, "exactly one of num_pages (0)");
  o.kv_budget_bytes = 100;
  ExpectInvalid(o, "kv_budget_bytes 100 is less than one page");
  o = TinyOptions();
  o.page_size_tokens = 0;
  ExpectInvalid(o, "page_size_tokens must be positive");
  o = TinyOptions();
  o.max_tokens_per_step = 0;
  ExpectInvalid(o, "max_tokens_per_step must be positive");
  o = TinyOptions();
  o.chunk_prefill_tokens = 33;
  ExpectInvalid(o, "chunk_prefill_tokens 33 is above max_tokens_per_step 32");
  o = TinyOptions();
  o.num_workers = 0;
  ExpectInvalid(o, "num_workers must be at least 1");
  o = TinyOptions();
  o.target = "no-such-target";
  auto engine = Engine::Create(o);
  EXPECT_FALSE(engine.ok());
  EXPECT_THAT(engine.status().message(), HasSubstr("no-such-target"));
}

TEST(EngineApiTest, KvBudgetInBytesGivesPages) {
  EngineOptions o = TinyOptions();
  o.num_pages = 0;
  // A page of both layers: 4 tokens x 2 x 2 kv heads x 32 x 4 bytes x 2.
  o.kv_budget_bytes = 10 * 4096 + 100;
  auto engine = Engine::Create(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->num_pages(), 10u);
  EXPECT_EQ((*engine)->Stats().free_pages, 10u);
}

TEST(EngineApiTest, AddRequestValidates) {
  auto engine = Engine::Create(TinyOptions());
  ASSERT_TRUE(engine.ok());
  Engine& e = **engine;
  const std::vector<std::int32_t> prompt = {1, 2, 3};
  ASSERT_TRUE(e.AddRequest(7, prompt, 4).ok());
  const auto code = [](const Status& s) { return s.code(); };
  EXPECT_EQ(code(e.AddRequest(7, prompt, 4)), StatusCode::kInvalidArgument);
  EXPECT_THAT(e.AddRequest(7, prompt, 4).message(), HasSubstr("already live"));
  EXPECT_EQ(code(e.AddRequest(8, {}, 4)), StatusCode::kInvalidArgument);
  const std::vector<std::int32_t> negative = {1, -5};
  EXPECT_THAT(e.AddRequest(8, negative, 4).message(),
              HasSubstr("prompt_tokens[1] = -5"));
  EXPECT_THAT(e.AddRequest(8, prompt, 0).message(),
              HasSubstr("max_new_tokens must be positive"));
  // 64 pages of 4 tokens hold 256 tokens.
  EXPECT_THAT(e.AddRequest(8, prompt, 255).message(),
              HasSubstr("needs up to 65 pages; the KV budget has 64"));
  EXPECT_TRUE(e.AddRequest(8, prompt, 254).ok());
  EXPECT_EQ(e.Stats().waiting_requests, 2u);
}

TEST(EngineApiTest, MaxRequestsIsResourceExhausted) {
  EngineOptions o = TinyOptions();
  o.max_requests = 2;
  auto engine = Engine::Create(o);
  ASSERT_TRUE(engine.ok());
  const std::vector<std::int32_t> prompt = {1};
  ASSERT_TRUE((*engine)->AddRequest(1, prompt, 1).ok());
  ASSERT_TRUE((*engine)->AddRequest(2, prompt, 1).ok());
  EXPECT_EQ((*engine)->AddRequest(3, prompt, 1).code(),
            StatusCode::kResourceExhausted);
  ASSERT_TRUE((*engine)->Abort(1).ok());
  EXPECT_TRUE((*engine)->AddRequest(3, prompt, 1).ok());
}

TEST(EngineApiTest, CallsOutOfOrderAreFailedPrecondition) {
  auto engine = Engine::Create(TinyOptions());
  ASSERT_TRUE(engine.ok());
  Engine& e = **engine;
  std::vector<float> none;
  EXPECT_EQ(e.Attend(0, none, none, none, none).code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(e.Commit({}).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(e.DiscardStep().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(e.AddRequest(1, Prompt(6, 1), 3).ok());
  auto plan = e.Plan();
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(e.Plan().status().code(), StatusCode::kFailedPrecondition);
  const std::uint32_t t = (*plan)->num_tokens;
  ASSERT_EQ(t, 6u);
  std::vector<float> q(t * 4 * 32, 0.25F), kv(t * 2 * 32, 0.5F), out(q.size());
  // Commit before the layers: nothing attended.
  const std::vector<std::int32_t> one = {5};
  EXPECT_THAT(e.Commit(one).message(), HasSubstr("attended 0 of 2 layers"));
  // Tensor shapes.
  std::vector<float> short_q(q.size() - 1);
  EXPECT_THAT(e.Attend(0, short_q, kv, kv, out).message(),
              HasSubstr("q has 767 floats"));
  EXPECT_THAT(e.Attend(0, q, q, kv, out).message(), HasSubstr("k has 768"));
  EXPECT_THAT(e.Attend(0, q, kv, kv, kv).message(), HasSubstr("out has 384"));
  EXPECT_THAT(e.Attend(2, q, kv, kv, out).message(),
              HasSubstr("layer 2 is out of range"));
  ASSERT_TRUE(e.Attend(1, q, kv, kv, out).ok());
  EXPECT_THAT(e.Attend(1, q, kv, kv, out).message(),
              HasSubstr("layer 1 was already attended"));
  EXPECT_THAT(e.Commit(one).message(), HasSubstr("layer 0 is missing"));
  ASSERT_TRUE(e.Attend(0, q, kv, kv, out).ok());
  // Commit's tokens.
  EXPECT_THAT(e.Commit({}).message(),
              HasSubstr("sampled_tokens has 0 entries; step 0 produces 1"));
  const std::vector<std::int32_t> negative = {-1};
  EXPECT_THAT(e.Commit(negative).message(),
              HasSubstr("sampled_tokens[0] = -1"));
  ASSERT_TRUE(e.CheckInvariants().ok());
  EXPECT_EQ(e.GetRequest(1)->computed_tokens, 0u);  // nothing changed
  ASSERT_TRUE(e.Commit(one).ok());
  EXPECT_EQ(e.GetRequest(1)->computed_tokens, 6u);
  EXPECT_EQ(e.GetRequest(1)->generated_tokens, 1u);
  EXPECT_EQ((*e.RequestTokens(1)).back(), 5);
}

TEST(EngineApiTest, BadIdsAreNotFound) {
  auto engine = Engine::Create(TinyOptions());
  ASSERT_TRUE(engine.ok());
  Engine& e = **engine;
  EXPECT_EQ(e.Finish(3).code(), StatusCode::kNotFound);
  EXPECT_EQ(e.Abort(3).code(), StatusCode::kNotFound);
  EXPECT_EQ(e.GetRequest(3).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(e.RequestTokens(3).status().code(), StatusCode::kNotFound);
  std::vector<std::byte> bytes;
  EXPECT_EQ(e.ReadRequestKv(3, 0, bytes).code(), StatusCode::kNotFound);
  ASSERT_TRUE(e.AddRequest(3, Prompt(2, 1), 1).ok());
  EXPECT_EQ(e.ReadRequestKv(3, 0, bytes).code(),
            StatusCode::kFailedPrecondition);  // waiting: no KV yet
  ASSERT_TRUE(e.Finish(3).ok());
  EXPECT_EQ(e.Finish(3).code(), StatusCode::kNotFound);
  EXPECT_FALSE(e.HasWork());
}

TEST(EngineApiTest, EmptyStepIsAStep) {
  auto engine = Engine::Create(TinyOptions());
  ASSERT_TRUE(engine.ok());
  auto plan = (*engine)->Plan();
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE((*plan)->empty());
  EXPECT_EQ((*plan)->num_tokens, 0u);
  EXPECT_EQ((*plan)->cu_q_lens.size(), 1u);
  std::vector<float> none;
  EXPECT_TRUE((*engine)->Attend(0, none, none, none, none).ok());
  EXPECT_TRUE((*engine)->Commit({}).ok());
  EXPECT_EQ((*engine)->Stats().steps, 0u);
}

TEST(EngineApiTest, RequestFinishesAtMaxNewTokens) {
  auto engine = Engine::Create(TinyOptions());
  ASSERT_TRUE(engine.ok());
  ASSERT_TRUE((*engine)->AddRequest(1, Prompt(5, 1), 2).ok());
  Driver driver(engine->get());
  RunResult result;
  result.tokens[1] = Prompt(5, 1);
  ASSERT_TRUE(driver.Step(&result));
  EXPECT_TRUE((*engine)->HasWork());
  auto plan = (*engine)->Plan();
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ((*plan)->requests.size(), 1u);
  EXPECT_TRUE((*plan)->requests[0].finishes_request);
  EXPECT_FALSE((*plan)->requests[0].is_prefill);
  ASSERT_TRUE((*engine)->DiscardStep().ok());
  ASSERT_TRUE(driver.Step(&result)) << result.failure;
  EXPECT_FALSE((*engine)->HasWork());
  EXPECT_EQ(result.tokens[1].size(), 7u);
  EXPECT_EQ((*engine)->Stats().finished_requests, 1u);
}

// Several engines in one process, stepped from different threads at once,
// one of them on a borrowed executor: each gives what it gives alone.
TEST(EngineApiTest, SeveralEnginesInOneProcess) {
  std::vector<TestRequest> requests;
  for (std::uint32_t i = 0; i < 4; ++i) {
    requests.push_back({.id = i, .prompt = Prompt(5 + 4 * i, i), .max_new = 5});
  }
  const RunResult alone = Driver::Run(TinyOptions(), requests);
  ASSERT_EQ(alone.failure, "");

  auto shared = runtime::Executor::Create({.num_workers = 2});
  ASSERT_TRUE(shared.ok());
  std::vector<RunResult> results(3);
  std::vector<std::thread> threads;
  for (int e = 0; e < 3; ++e) {
    threads.emplace_back([&, e] {
      EngineOptions options = TinyOptions();
      if (e == 2) options.executor = shared->get();
      if (e == 1) {
        options.num_pages = 12;  // this one also swaps
        options.num_workers = 1;
      }
      results[static_cast<std::size_t>(e)] = Driver::Run(options, requests);
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const RunResult& run : results) {
    ASSERT_EQ(run.failure, "");
    EXPECT_EQ(CompareTokensAndKv(run, alone), "");
    EXPECT_EQ(CompareOutputs(run, alone), "");
  }
}

}  // namespace
}  // namespace rpa::scheduler
