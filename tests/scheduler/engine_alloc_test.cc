// Once warmed up, a steady-state step (Plan, Attend for every layer, Commit)
// makes no heap allocation of the engine's own. This binary replaces the
// global operator new / delete with counting versions.
//
// The first test replays the engine's exact batch through the attention
// library in isolation (AttentionPlan::Update into a reused plan, Run per
// layer) and requires the engine's step to allocate exactly what that does
// and nothing more; the second requires zero in total (scheduler/README.md,
// "The engine").

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <optional>
#include <vector>

#include "scheduler/engine_test_util.h"

#include "rpa/attention/plan.h"
#include "rpa/runtime/executor.h"
#include "rpa/scheduler/engine.h"

namespace {

// Counted only while armed, and only on the arming thread (the engine's own
// code runs on the caller's thread; the executor's workers run kernels).
std::atomic<bool> g_armed{false};
std::atomic<std::uint64_t> g_all_threads{0};
thread_local bool t_counting = false;
thread_local std::uint64_t t_count = 0;

void Count() {
  if (!g_armed.load(std::memory_order_relaxed)) return;
  g_all_threads.fetch_add(1, std::memory_order_relaxed);
  if (t_counting) ++t_count;
}

void* Allocate(std::size_t bytes) {
  Count();
  void* p = std::malloc(bytes == 0 ? 1 : bytes);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void* AllocateAligned(std::size_t bytes, std::align_val_t align) {
  Count();
  const auto alignment = static_cast<std::size_t>(align);
  const std::size_t rounded = (bytes + alignment - 1) / alignment * alignment;
  void* p = std::aligned_alloc(alignment, rounded == 0 ? alignment : rounded);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

void* operator new(std::size_t bytes) { return Allocate(bytes); }
void* operator new[](std::size_t bytes) { return Allocate(bytes); }
void* operator new(std::size_t bytes, const std::nothrow_t&) noexcept {
  Count();
  return std::malloc(bytes == 0 ? 1 : bytes);
}
void* operator new[](std::size_t bytes, const std::nothrow_t&) noexcept {
  Count();
  return std::malloc(bytes == 0 ? 1 : bytes);
}
void* operator new(std::size_t bytes, std::align_val_t align) {
  return AllocateAligned(bytes, align);
}
void* operator new[](std::size_t bytes, std::align_val_t align) {
  return AllocateAligned(bytes, align);
}
// Every block above comes from malloc / aligned_alloc, so free is the match.
// GCC (12, at -O1) inlines these into callers that got the block from
// `operator new` and warns that free does not match it
// (-Wmismatched-new-delete): it does not look through the replacement.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace rpa::scheduler {
namespace {

using namespace ::rpa::scheduler::testing_util;  // NOLINT: test helpers

struct Counter {
  Counter() {
    t_count = 0;
    t_counting = true;
    g_all_threads.store(0);
    g_armed.store(true);
  }
  ~Counter() { Stop(); }
  std::uint64_t Stop() {
    g_armed.store(false);
    t_counting = false;
    return t_count;
  }
};

// A decode-only steady state: 6 requests, prompts prefilled, long
// generations; the KV grows across page boundaries (page 4) every few steps
// and full pages enter the prefix cache.
class SteadyState {
 public:
  explicit SteadyState(runtime::Executor* executor) {
    options_ = TinyOptions();
    options_.num_pages = 256;
    options_.executor = executor;
    auto engine = Engine::Create(options_);
    RPA_CHECK(engine.ok());
    engine_ = std::move(*engine);
    for (RequestId id = 0; id < 6; ++id) {
      RPA_CHECK(engine_->AddRequest(id, Prompt(6, id), 200).ok());
    }
    const ModelShape& model = options_.model;
    const std::size_t rows = 64;
    q_.assign(rows * model.num_q_heads * model.head_dim, 0.0F);
    out_.assign(q_.size(), 0.0F);
    k_.assign(rows * model.num_kv_heads * model.head_dim, 0.0F);
    v_.assign(k_.size(), 0.0F);
    sampled_.reserve(64);
    kv_lens_.reserve(64);
    page_indices_.reserve(4096);
    cu_q_lens_.reserve(65);
  }

  Engine& engine() { return *engine_; }

  // One step; with `replay`, also counts what attention alone allocates for
  // the same batch (after the engine's step, outside its count).
  bool Step(std::uint64_t* engine_count, std::uint64_t* attention_count) {
    Counter counter;
    auto plan = engine_->Plan();
    if (!plan.ok()) return false;
    const StepPlan& step = **plan;
    const ModelShape& model = options_.model;
    const std::size_t t = step.num_tokens;
    const std::span<float> q(q_.data(), t * model.num_q_heads * model.head_dim);
    const std::span<float> out(out_.data(), q.size());
    const std::span<float> k(k_.data(),
                             t * model.num_kv_heads * model.head_dim);
    const std::span<float> v(v_.data(), k.size());
    for (std::uint32_t layer = 0; layer < model.num_layers; ++layer) {
      for (std::size_t i = 0; i < k.size(); ++i) {
        k[i] = static_cast<float>(i % 7) * 0.125F;
        v[i] = static_cast<float>(i % 5) * 0.25F;
      }
      if (!engine_->Attend(layer, q, k, v, out).ok()) return false;
    }
    sampled_.clear();
    for (const ScheduledRequest& entry : step.requests) {
      if (entry.produces_token) sampled_.push_back(entry.tokens[0] % 1000 + 1);
    }
    kv_lens_.assign(step.kv_lens.begin(), step.kv_lens.end());
    page_indices_.assign(step.page_indices.begin(), step.page_indices.end());
    cu_q_lens_.assign(step.cu_q_lens.begin(), step.cu_q_lens.end());
    distribution_ = step.distribution;
    const std::uint32_t tokens = step.num_tokens;
    if (!engine_->Commit(sampled_).ok()) return false;
    *engine_count = counter.Stop();
    if (attention_count != nullptr) {
      *attention_count = ReplayAttention(tokens);
    }
    return true;
  }

 private:
  // AttentionPlan::Update (Create the first time), Reserve and Run per layer
  // on the same batch, the way the engine does, into a scratch cache of the
  // same geometry.
  std::uint64_t ReplayAttention(std::uint32_t tokens) {
    const ModelShape& model = options_.model;
    if (scratch_.empty()) {
      scratch_.assign(std::size_t{options_.num_pages} *
                          options_.page_size_tokens * 2 * model.num_kv_heads *
                          model.head_dim * 4,
                      std::byte{0});
    }
    const std::size_t token_bytes = 2 * model.num_kv_heads * model.head_dim * 4;
    const memory::KvLayerView view{
        .data = scratch_.data(),
        .num_pages = options_.num_pages,
        .page_size_tokens = options_.page_size_tokens,
        .num_combined_heads = 2 * model.num_kv_heads,
        .head_dim = model.head_dim,
        .storage = memory::StorageType::kF32,
        .token_bytes = token_bytes,
        .page_bytes = token_bytes * options_.page_size_tokens};
    attention::AttentionParams params;
    params.sm_scale = 1.0F / std::sqrt(static_cast<float>(model.head_dim));
    params.chunk_prefill_size =
        static_cast<std::int32_t>(options_.chunk_prefill_tokens);
    attention::PlanOptions plan_options;
    plan_options.parallelism = options_.executor->num_workers();
    const attention::BatchMetadata metadata{
        .shape = {tokens, model.num_q_heads, model.num_kv_heads,
                  model.head_dim},
        .kv_lens = kv_lens_,
        .page_indices = page_indices_,
        .cu_q_lens = cu_q_lens_,
        .distribution = distribution_};
    const std::size_t q_size = tokens * model.num_q_heads * model.head_dim;
    const std::size_t kv_size = tokens * model.num_kv_heads * model.head_dim;
    Counter counter;
    // Re-planned in place step after step, as the engine does.
    if (replay_plan_.has_value()) {
      RPA_CHECK(
          replay_plan_->Update(metadata, view, params, plan_options).ok());
    } else {
      auto plan = attention::AttentionPlan::Create(metadata, view, params,
                                                   plan_options);
      RPA_CHECK(plan.ok());
      replay_plan_ = std::move(*plan);
    }
    replay_plan_->Reserve(kv_lens_.capacity(), page_indices_.capacity());
    for (std::uint32_t layer = 0; layer < model.num_layers; ++layer) {
      RPA_CHECK(attention::Run(*replay_plan_,
                               {std::span<const float>(q_.data(), q_size),
                                std::span<const float>(k_.data(), kv_size),
                                std::span<const float>(v_.data(), kv_size),
                                view, std::span<float>(out_.data(), q_size)},
                               options_.executor)
                    .ok());
    }
    return counter.Stop();
  }

  EngineOptions options_;
  std::unique_ptr<Engine> engine_;
  std::vector<float> q_, k_, v_, out_;
  std::vector<std::int32_t> sampled_;
  std::vector<std::int32_t> kv_lens_, page_indices_, cu_q_lens_;
  std::array<std::int32_t, 3> distribution_{};
  std::vector<std::byte> scratch_;
  std::optional<attention::AttentionPlan> replay_plan_;
};

bool SanitizerBuild() {
#if defined(RPA_SANITIZE_BUILD_DEFINE)
  return true;
#else
  return false;
#endif
}

TEST(EngineAllocationTest, SteadyStateStepAllocatesOnlyWhatAttentionDoes) {
  if (SanitizerBuild()) {
    GTEST_SKIP() << "sanitizer builds route the KV cache's metadata through "
                    "operator new (memory/README.md)";
  }
  auto executor = runtime::Executor::Create({.num_workers = 2});
  ASSERT_TRUE(executor.ok());
  SteadyState state(executor->get());
  std::uint64_t engine_count = 0;
  std::uint64_t attention_count = 0;
  // Warm-up: prefill, first decode steps, vectors at their sizes.
  for (int step = 0; step < 12; ++step) {
    ASSERT_TRUE(state.Step(&engine_count, &attention_count));
  }
  std::uint64_t total_engine = 0;
  std::uint64_t total_attention = 0;
  for (int step = 0; step < 40; ++step) {
    ASSERT_TRUE(state.Step(&engine_count, &attention_count));
    EXPECT_EQ(engine_count, attention_count)
        << "step " << step << ": the engine allocated "
        << static_cast<std::int64_t>(engine_count) -
               static_cast<std::int64_t>(attention_count)
        << " times beyond the attention library";
    total_engine += engine_count;
    total_attention += attention_count;
  }
  EXPECT_EQ(total_engine, total_attention);
  std::printf(
      "steady-state step: %.1f allocations per step, all inside "
      "attention::AttentionPlan::Update / Run\n",
      static_cast<double>(total_engine) / 40.0);
  EXPECT_EQ(state.engine().Stats().preemptions_swap +
                state.engine().Stats().preemptions_recompute,
            0u);
  EXPECT_GT(state.engine().Stats().cached_pages, 6u);  // pages were registered
}

// Warmed up, a step allocates nothing at all (see scheduler/README.md, "The
// engine").
TEST(EngineAllocationTest, SteadyStateStepAllocatesNothing) {
  if (SanitizerBuild()) {
    GTEST_SKIP() << "sanitizer builds route the KV cache's metadata through "
                    "operator new (memory/README.md)";
  }
  auto executor = runtime::Executor::Create({.num_workers = 2});
  ASSERT_TRUE(executor.ok());
  SteadyState state(executor->get());
  std::uint64_t count = 0;
  for (int step = 0; step < 12; ++step)
    ASSERT_TRUE(state.Step(&count, nullptr));
  for (int step = 0; step < 40; ++step) {
    ASSERT_TRUE(state.Step(&count, nullptr));
    EXPECT_EQ(count, 0u) << "step " << step;
  }
}

}  // namespace
}  // namespace rpa::scheduler
