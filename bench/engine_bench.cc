// Google Benchmark of the serving engine's step (rpa/scheduler/engine.h):
// BM_Engine_Step/<workload>. One iteration is one step: Plan, Attend for
// every layer, Commit; the service's own work (projections, sampling) is not
// part of it (q / k / v are filled once).
//
// Counters per step: step_p50_us / step_p99_us (wall time of the step),
// kernel_us (time inside attention::Run, EngineStats::kernel_ns), engine_us
// (the rest: scheduling, planning, bookkeeping) and engine_pct (engine_us
// over the mean step), tokens (T). items_processed counts tokens.
//
// Model: Llama-3-8B attention (Hq 32, Hkv 8, D 128, bf16 cache), 4 layers
// (the overhead is per step plus per layer; a 32-layer model has the same
// per-layer kernels eight times over), pages of 16 tokens, 2 executor
// workers. Workloads:
//   decode        16 requests decoding at kv_len ~1024 (prompts prefilled
//                 before the timed steps), one token each per step;
//   decode_short  8 requests decoding at kv_len ~256 (small steps, where the
//                 engine's share is largest);
//   mixed         14 live requests, 1536-token prompts prefilled in chunks
//                 of 256 under a 512-token budget, 64 new tokens each;
//                 finished requests are replaced, so the mix stays steady.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "rpa/scheduler/engine.h"

namespace {

using rpa::scheduler::Engine;
using rpa::scheduler::EngineOptions;
using rpa::scheduler::EngineStats;
using rpa::scheduler::RequestId;
using rpa::scheduler::StepPlan;

[[noreturn]] void Die(const rpa::Status& status) {
  std::fprintf(stderr, "rpa_engine_bench: %s\n", status.ToString().c_str());
  std::exit(1);
}

struct Workload {
  std::uint32_t num_requests;  // kept live
  std::uint32_t prompt_tokens;
  std::uint32_t max_new_tokens;
  std::uint32_t max_tokens_per_step;
  std::uint32_t chunk_prefill_tokens;
  bool prefill_before_timing;  // decode: time only steady decode steps
};

class Bench {
 public:
  explicit Bench(const Workload& workload) : workload_(workload) {
    EngineOptions options;
    options.model.num_layers = 4;
    options.model.num_q_heads = 32;
    options.model.num_kv_heads = 8;
    options.model.head_dim = 128;
    options.model.storage = rpa::memory::StorageType::kBf16;
    options.page_size_tokens = 16;
    options.num_pages = 4096;  // 4 layers x 64 KiB: 1 GiB
    options.max_tokens_per_step = workload.max_tokens_per_step;
    options.chunk_prefill_tokens = workload.chunk_prefill_tokens;
    options.max_requests_per_step = 64;
    options.num_workers = 2;
    auto engine = Engine::Create(options);
    if (!engine.ok()) Die(engine.status());
    engine_ = std::move(*engine);
    const std::size_t rows = workload.max_tokens_per_step;
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> uniform(-1.0F, 1.0F);
    q_.assign(rows * 32 * 128, 0.0F);
    k_.assign(rows * 8 * 128, 0.0F);
    v_.assign(k_.size(), 0.0F);
    out_.assign(q_.size(), 0.0F);
    for (float& x : q_) x = uniform(rng);
    for (float& x : k_) x = uniform(rng);
    for (float& x : v_) x = uniform(rng);
    sampled_.reserve(rows);
    for (std::uint32_t i = 0; i < workload.num_requests; ++i) AddOne();
    if (workload.prefill_before_timing) {
      while (engine_->Stats().prefill_tokens <
             std::uint64_t{workload.num_requests} * workload.prompt_tokens) {
        Step();
      }
    }
  }

  // One step; returns its wall time in ns. Finished requests are replaced
  // after the step (outside the timing).
  std::int64_t Step() {
    const auto start = std::chrono::steady_clock::now();
    auto plan = engine_->Plan();
    if (!plan.ok()) Die(plan.status());
    const StepPlan& step = **plan;
    const std::size_t t = step.num_tokens;
    for (std::uint32_t layer = 0; layer < 4; ++layer) {
      const rpa::Status attended = engine_->Attend(
          layer, std::span<const float>(q_.data(), t * 32 * 128),
          std::span<const float>(k_.data(), t * 8 * 128),
          std::span<const float>(v_.data(), t * 8 * 128),
          std::span<float>(out_.data(), t * 32 * 128));
      if (!attended.ok()) Die(attended);
    }
    sampled_.clear();
    std::uint32_t finishing = 0;
    for (const auto& entry : step.requests) {
      if (entry.produces_token)
        sampled_.push_back(static_cast<std::int32_t>(1 + entry.kv_len % 1000));
      finishing += entry.finishes_request ? 1 : 0;
    }
    last_tokens_ = step.num_tokens;
    const rpa::Status committed = engine_->Commit(sampled_);
    if (!committed.ok()) Die(committed);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    for (std::uint32_t i = 0; i < finishing; ++i) AddOne();
    return std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed)
        .count();
  }

  Engine& engine() { return *engine_; }
  std::uint32_t last_tokens() const { return last_tokens_; }

 private:
  void AddOne() {
    std::vector<std::int32_t> prompt(workload_.prompt_tokens);
    for (std::size_t i = 0; i < prompt.size(); ++i) {
      prompt[i] = static_cast<std::int32_t>((next_id_ * 7919 + i * 31) % 32000);
    }
    const rpa::Status added =
        engine_->AddRequest(next_id_++, prompt, workload_.max_new_tokens);
    if (!added.ok()) Die(added);
  }

  Workload workload_;
  std::unique_ptr<Engine> engine_;
  std::vector<float> q_, k_, v_, out_;
  std::vector<std::int32_t> sampled_;
  RequestId next_id_ = 1;
  std::uint32_t last_tokens_ = 0;
};

void BM_Engine_Step(benchmark::State& state, Workload workload) {
  Bench bench(workload);
  std::vector<std::int64_t> step_ns;
  step_ns.reserve(4096);
  const EngineStats before = bench.engine().Stats();
  std::uint64_t tokens = 0;
  for (auto _ : state) {
    const std::int64_t ns = bench.Step();
    state.SetIterationTime(static_cast<double>(ns) * 1e-9);
    step_ns.push_back(ns);
    tokens += bench.last_tokens();
  }
  const EngineStats after = bench.engine().Stats();
  std::sort(step_ns.begin(), step_ns.end());
  const auto percentile = [&](double p) {
    const auto index = static_cast<std::size_t>(
        p * static_cast<double>(step_ns.size() - 1) + 0.5);
    return static_cast<double>(step_ns[index]) * 1e-3;
  };
  double total_ns = 0;
  for (std::int64_t ns : step_ns) total_ns += static_cast<double>(ns);
  const double steps = static_cast<double>(step_ns.size());
  const double kernel_us =
      static_cast<double>(after.kernel_ns - before.kernel_ns) * 1e-3 / steps;
  const double step_us = total_ns * 1e-3 / steps;
  state.counters["step_p50_us"] = percentile(0.50);
  state.counters["step_p99_us"] = percentile(0.99);
  state.counters["kernel_us"] = kernel_us;
  state.counters["engine_us"] = step_us - kernel_us;
  state.counters["engine_pct"] = 100.0 * (step_us - kernel_us) / step_us;
  state.counters["tokens"] = static_cast<double>(tokens) / steps;
  state.counters["preemptions"] = static_cast<double>(
      after.preemptions_swap + after.preemptions_recompute -
      before.preemptions_swap - before.preemptions_recompute);
  state.SetItemsProcessed(static_cast<std::int64_t>(tokens));
}

BENCHMARK_CAPTURE(BM_Engine_Step, decode,
                  Workload{.num_requests = 16,
                           .prompt_tokens = 1024,
                           .max_new_tokens = 4096,
                           .max_tokens_per_step = 512,
                           .chunk_prefill_tokens = 256,
                           .prefill_before_timing = true})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1.0);
BENCHMARK_CAPTURE(BM_Engine_Step, decode_short,
                  Workload{.num_requests = 8,
                           .prompt_tokens = 256,
                           .max_new_tokens = 4096,
                           .max_tokens_per_step = 512,
                           .chunk_prefill_tokens = 256,
                           .prefill_before_timing = true})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1.0);
BENCHMARK_CAPTURE(BM_Engine_Step, mixed,
                  Workload{.num_requests = 14,
                           .prompt_tokens = 1536,
                           .max_new_tokens = 64,
                           .max_tokens_per_step = 512,
                           .chunk_prefill_tokens = 256,
                           .prefill_before_timing = false})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1.0);

}  // namespace

BENCHMARK_MAIN();
