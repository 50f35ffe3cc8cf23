#pragma once

// A tiny synthetic model that drives a real Engine step by step, for the
// engine tests, the engine fuzzer and the allocation test.
//
// q / k / v rows are pure functions of (token id, position, layer), so the
// KV of a prefix depends only on its tokens (what prefix caching assumes) and
// every schedule (chunked or not, reused or not, preempted or not) feeds the
// kernels the same numbers. Sampled tokens are a function of (request id,
// position), independent of the outputs, so the token sequences of two runs
// must be identical and their outputs comparable row by row.

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "mix64.h"

#include "rpa/memory/storage_type.h"
#include "rpa/scheduler/engine.h"

namespace rpa::scheduler::testing_util {

// SplitMix64's finalizer (scheduler/src/mix64.h).
inline std::uint64_t Mix64(std::uint64_t x) {
  return internal::Mix64Finalize(x);
}

// Uniform in [-1, 1).
inline float SynthValue(std::uint64_t salt, std::int32_t token,
                        std::uint32_t position, std::uint32_t layer,
                        std::uint32_t index) {
  std::uint64_t h =
      Mix64(salt * 0x9e3779b97f4a7c15ULL ^ static_cast<std::uint32_t>(token));
  h = Mix64(h ^ (std::uint64_t{position} << 20) ^ (std::uint64_t{layer} << 52));
  h = Mix64(h ^ index);
  return static_cast<float>(
      static_cast<double>(h >> 40) / static_cast<double>(1ULL << 23) - 1.0);
}

inline std::int32_t SampleToken(RequestId id, std::uint32_t position) {
  return static_cast<std::int32_t>(Mix64(id * 1000003ULL + position) % 50000);
}

// 2 layers, Hq 4, Hkv 2, D 32, pages of 4 tokens, f32.
inline EngineOptions TinyOptions() {
  EngineOptions options;
  options.model.num_layers = 2;
  options.model.num_q_heads = 4;
  options.model.num_kv_heads = 2;
  options.model.head_dim = 32;
  options.model.storage = memory::StorageType::kF32;
  options.num_pages = 64;
  options.page_size_tokens = 4;
  options.max_tokens_per_step = 32;
  options.max_requests_per_step = 16;
  options.chunk_prefill_tokens = 8;
  options.max_requests = 64;
  options.num_workers = 2;
  return options;
}

struct TestRequest {
  RequestId id = 0;
  std::vector<std::int32_t> prompt;
  std::uint32_t max_new = 1;
  std::int32_t priority = 0;
  int add_at_step = 0;  // added before the Plan of this step
};

inline std::vector<std::int32_t> Prompt(std::uint32_t length,
                                        std::uint64_t seed) {
  std::vector<std::int32_t> prompt(length);
  for (std::uint32_t i = 0; i < length; ++i) {
    prompt[i] = static_cast<std::int32_t>(Mix64(seed * 131 + i) % 32000);
  }
  return prompt;
}

// (request, position, layer) -> the output row [Hq * D] last computed there.
using OutKey = std::tuple<RequestId, std::uint32_t, std::uint32_t>;

struct RunResult {
  std::map<RequestId, std::vector<std::int32_t>> tokens;  // at the end
  std::map<OutKey, std::vector<float>> out;
  std::map<OutKey, std::vector<float>> produced;  // rows that yield a token
  // Per request and layer: the longest KV read back while it ran.
  std::map<std::pair<RequestId, std::uint32_t>, std::vector<std::byte>> kv;
  std::vector<Status> plan_errors;
  EngineStats stats;
  int steps = 0;
  std::string failure;  // first broken check, empty if none
};

class Driver {
 public:
  explicit Driver(Engine* engine) : engine_(engine) {}

  // One step: Plan (errors from swap I/O are recorded and Plan retried once),
  // the layers, Commit; checks the plan's shape, the engine's invariants and
  // that no computed token's KV ever changes.
  bool Step(RunResult* result, bool check_kv = true);

  // Adds `request` to the engine and records its prompt in result->tokens.
  Status Add(const TestRequest& request, RunResult* result);

  // Adds `requests` at their steps and steps until no work is left (or
  // max_steps). Returns the run's record.
  static RunResult Run(const EngineOptions& options,
                       const std::vector<TestRequest>& requests,
                       int max_steps = 2000, bool check_kv = true);

  std::vector<float>& q() { return q_; }

 private:
  bool Fail(RunResult* result, std::string message);
  void FillRows(const StepPlan& plan, std::uint32_t layer);
  bool CheckPlan(const StepPlan& plan, RunResult* result);
  bool SnapshotKv(RunResult* result);

  Engine* engine_;
  std::vector<float> q_, k_, v_, out_;
  std::vector<std::int32_t> sampled_;
  std::vector<std::byte> kv_scratch_;
};

// Max |a - b| <= tolerance * (1 + |b|) over every row both runs computed;
// with same_keys the produced rows (those yielding tokens) must be the same
// set. Returns an empty string or the first difference.
std::string CompareOutputs(const RunResult& a, const RunResult& b,
                           float tolerance = 2e-4F);
// Token sequences equal and KV bytes equal where both runs read them.
std::string CompareTokensAndKv(const RunResult& a, const RunResult& b);

}  // namespace rpa::scheduler::testing_util
