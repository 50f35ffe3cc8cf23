// The serving loop of `rpa demo` (demo.h): one Engine, a SyntheticModel, a
// request stream, wall-clock arrivals with idle time skipped.

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "demo.h"
#include "demo_progress.h"
#include "mix64.h"

#include "rpa/runtime/executor.h"
#include "rpa/scheduler/synthetic_model.h"

namespace rpa::cli {
namespace {

using Clock = std::chrono::steady_clock;
using scheduler::BatchRange;
using scheduler::ScheduledRequest;
using scheduler::StepPlan;
using scheduler::WorkloadRequest;

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// A request the engine holds, as the service (this loop) sees it.
struct LiveRequest {
  const WorkloadRequest* request = nullptr;
  std::vector<std::int32_t> tokens;     // prompt + generated
  std::vector<std::uint64_t> contexts;  // SyntheticModel context per position
  double arrival_s = 0;
  double first_token_s = -1;
  double last_token_s = -1;
  std::uint32_t generated = 0;
};

// Rows of one step's q / k / v tensors, filled from the model on the
// executor's workers (the fill is a large share of a step on a small
// machine: Hq*D + 2*Hkv*D hashes per token and layer).
class StepTensors {
 public:
  StepTensors(const scheduler::SyntheticModel& model,
              runtime::Executor* executor)
      : model_(model), executor_(executor) {}

  void Resize(std::uint32_t num_tokens) {
    contexts_.resize(num_tokens);
    q_.resize(static_cast<std::size_t>(num_tokens) * model_.q_row_floats());
    k_.resize(static_cast<std::size_t>(num_tokens) * model_.kv_row_floats());
    v_.resize(k_.size());
    out_.resize(q_.size());
  }
  std::vector<std::uint64_t>& contexts() { return contexts_; }

  Status Fill(std::uint32_t layer) {
    const auto rows = static_cast<std::uint32_t>(contexts_.size());
    constexpr std::uint32_t kParts = 4;
    if (rows < 16 || executor_ == nullptr) {
      FillRows(layer, 0, rows);
      return OkStatus();
    }
    std::vector<decltype(executor_->Spawn([] {}))> handles;
    for (std::uint32_t part = 1; part < kParts; ++part) {
      const std::uint32_t begin = rows * part / kParts;
      const std::uint32_t end = rows * (part + 1) / kParts;
      handles.push_back(executor_->Spawn(
          [this, layer, begin, end] { FillRows(layer, begin, end); }));
    }
    FillRows(layer, 0, rows / kParts);
    Status status;
    for (auto& handle : handles) {
      Status joined = handle.Join();
      if (status.ok()) status = joined;
    }
    return status;
  }

  std::span<const float> q() const { return q_; }
  std::span<const float> k() const { return k_; }
  std::span<const float> v() const { return v_; }
  std::span<float> out() { return out_; }
  std::span<const float> out_row(std::uint32_t row) const {
    return std::span<const float>(out_).subspan(
        static_cast<std::size_t>(row) * model_.q_row_floats(),
        model_.q_row_floats());
  }

 private:
  void FillRows(std::uint32_t layer, std::uint32_t begin, std::uint32_t end) {
    const std::size_t qf = model_.q_row_floats();
    const std::size_t kf = model_.kv_row_floats();
    std::span<float> q(q_);
    std::span<float> k(k_);
    std::span<float> v(v_);
    for (std::uint32_t row = begin; row < end; ++row) {
      model_.FillToken(layer, contexts_[row], q.subspan(row * qf, qf),
                       k.subspan(row * kf, kf), v.subspan(row * kf, kf));
    }
  }

  const scheduler::SyntheticModel& model_;
  runtime::Executor* executor_;
  std::vector<std::uint64_t> contexts_;
  std::vector<float> q_, k_, v_, out_;
};

using scheduler::internal::Mix64;

std::string RangeArgs(const StepPlan& plan) {
  return fmt::format(
      R"({{"step":{},"tokens":{},"decode_seqs":{},"prefill_seqs":{},"mixed_seqs":{},"prefill_tokens":{},"decode_tokens":{}}})",
      plan.step_index, plan.num_tokens, plan.distribution[0],
      plan.distribution[1] - plan.distribution[0],
      plan.distribution[2] - plan.distribution[1], plan.num_prefill_tokens,
      plan.num_decode_tokens);
}

// Which kernels a layer's Attend ran: the difference of kernel_calls.
std::string KernelArgs(const std::array<std::uint64_t, 3>& before,
                       const std::array<std::uint64_t, 3>& after,
                       const StepPlan& plan) {
  std::string kernels;
  const char* names[3] = {"decode", "prefill", "mixed"};
  for (std::size_t i = 0; i < 3; ++i) {
    if (after[i] > before[i]) {
      kernels += fmt::format("{}{}", kernels.empty() ? "" : "+", names[i]);
    }
  }
  return fmt::format(
      R"({{"kernels":"{}","decode_seqs":{},"prefill_seqs":{},"mixed_seqs":{},"tokens":{}}})",
      kernels, plan.distribution[0],
      plan.distribution[1] - plan.distribution[0],
      plan.distribution[2] - plan.distribution[1], plan.num_tokens);
}

}  // namespace

StatusOr<DemoResult> RunDemoLoop(const DemoConfig& config) {
  const scheduler::ModelShape& shape = config.engine.model;
  RPA_ASSIGN_OR_RETURN(
      scheduler::SyntheticModel model,
      scheduler::SyntheticModel::Create({.seed = config.seed,
                                         .num_layers = shape.num_layers,
                                         .num_q_heads = shape.num_q_heads,
                                         .num_kv_heads = shape.num_kv_heads,
                                         .head_dim = shape.head_dim}));
  // One executor for the engine's kernels and swap I/O and for the q / k / v
  // fill, so the two never compete for the cores with separate pools.
  std::unique_ptr<runtime::Executor> executor;
  scheduler::EngineOptions engine_options = config.engine;
  if (engine_options.executor == nullptr) {
    RPA_ASSIGN_OR_RETURN(
        executor,
        runtime::Executor::Create({.num_workers = config.engine.num_workers}));
    engine_options.executor = executor.get();
  }
  RPA_ASSIGN_OR_RETURN(std::unique_ptr<scheduler::Engine> engine,
                       scheduler::Engine::Create(engine_options));

  DemoResult result;
  result.requests = config.requests.size();
  for (const WorkloadRequest& r : config.requests) {
    result.prompt_tokens += r.prompt.size();
  }
  StepTensors tensors(model, engine_options.executor);
  std::unordered_map<scheduler::RequestId, LiveRequest> live;
  Progress progress(config.progress, result.requests);

  const Clock::time_point start = Clock::now();
  double skipped_s = 0;
  auto now_s = [&] { return Seconds(Clock::now() - start) + skipped_s; };
  // Trace timestamps: the loop's clock (wall time plus skipped idle time).
  auto ts_us = [&](Clock::time_point t) {
    return (Seconds(t - start) + skipped_s) * 1e6;
  };
  std::size_t next = 0;
  std::uint64_t empty_plans_in_a_row = 0;
  double used_pages_sum = 0;
  double request_pages_sum = 0;
  std::uint64_t used_pages_samples = 0;
  std::vector<TraceEvent> first_steps;  // fallback trace: the first steps
  std::vector<std::uint64_t> first_step_ids;
  std::optional<StepShape> first_shape;
  const std::uint32_t verify_stride = 8;
  std::vector<std::int32_t> sampled;

  while (result.finished < result.requests) {
    // Admit what has arrived (or, closed loop, what fits).
    while (next < config.requests.size()) {
      const WorkloadRequest& r = config.requests[next];
      if (config.concurrency > 0 ? live.size() >= config.concurrency
                                 : r.arrival_s > now_s()) {
        break;
      }
      Status added = engine->AddRequest(r.id, r.prompt, r.output_tokens);
      if (added.code() == StatusCode::kResourceExhausted) break;  // full
      if (!added.ok()) {
        return Status(added.code(),
                      fmt::format("AddRequest({}): {}", r.id, added.message()));
      }
      LiveRequest& l = live[r.id];
      l.request = &r;
      l.tokens = r.prompt;
      l.contexts.reserve(r.prompt.size() + r.output_tokens);
      std::uint64_t context = scheduler::SyntheticModel::kEmptyContext;
      for (std::int32_t token : r.prompt) {
        context = scheduler::SyntheticModel::Extend(context, token);
        l.contexts.push_back(context);
      }
      l.arrival_s =
          config.concurrency > 0 ? now_s() : std::max(r.arrival_s, 0.0);
      ++next;
    }
    if (!engine->HasWork()) {
      if (next >= config.requests.size()) break;  // nothing left (rejected)
      const double wait_s = config.requests[next].arrival_s - now_s();
      if (wait_s > 0) skipped_s += wait_s;  // idle: jump to the arrival
      continue;
    }

    // One step.
    const Clock::time_point step_start = Clock::now();
    const double step_ts_us = ts_us(step_start);
    auto planned = engine->Plan();
    if (!planned.ok()) {
      // Swap I/O failures are reported here and the request falls back to
      // recompute; anything else repeating is a bug.
      if (++result.plan_errors > 1000) {
        return Status(planned.status().code(),
                      fmt::format("Plan: {}", planned.status().message()));
      }
      std::fprintf(stderr, "rpa demo: Plan: %s (continuing)\n",
                   planned.status().ToString().c_str());
      continue;
    }
    const StepPlan& plan = **planned;
    const Clock::time_point planned_at = Clock::now();
    result.engine_s += Seconds(planned_at - step_start);
    if (plan.empty()) {
      RPA_RETURN_IF_ERROR(engine->Commit({}));
      if (++empty_plans_in_a_row > 2000000) {
        return InternalError("the engine made no progress in 2000000 steps");
      }
      // Typically a swap-in in flight: let the I/O complete.
      std::this_thread::sleep_for(std::chrono::microseconds(20));
      continue;
    }
    empty_plans_in_a_row = 0;
    // The trace keeps consecutive steps from the first one that mixes
    // decode and prompt tokens (the steady state of continuous batching).
    const bool keep_mixed =
        result.traced_steps.size() < config.trace_steps &&
        (!result.traced_steps.empty() ||
         (plan.num_decode_tokens > 0 && plan.num_prefill_tokens > 0));
    const bool keep_first = first_step_ids.size() < config.trace_steps;
    std::vector<TraceEvent> events;
    const bool tracing = keep_mixed || keep_first;
    if ((keep_mixed && !result.traced_shape.has_value()) ||
        (keep_first && !first_shape.has_value())) {
      StepShape step;
      step.step_index = plan.step_index;
      step.distribution = plan.distribution;
      for (const ScheduledRequest& sr : plan.requests) {
        step.q_lens.push_back(static_cast<std::int32_t>(sr.num_tokens));
        step.kv_lens.push_back(static_cast<std::int32_t>(sr.kv_len));
      }
      (keep_mixed ? result.traced_shape : first_shape) = std::move(step);
    }
    if (tracing) {
      events.push_back({"plan", 'X', step_ts_us,
                        Seconds(planned_at - step_start) * 1e6, 0,
                        RangeArgs(plan)});
    }

    // The contexts of the step's rows; the plan's token ids must be the ones
    // this loop submitted and committed.
    tensors.Resize(plan.num_tokens);
    for (const ScheduledRequest& sr : plan.requests) {
      LiveRequest& l = live.at(sr.id);
      for (std::uint32_t j = 0; j < sr.num_tokens; ++j) {
        const std::uint32_t position = sr.start_position + j;
        if (position >= l.tokens.size() || sr.tokens[j] != l.tokens[position]) {
          ++result.token_mismatches;
        }
        tensors.contexts()[sr.row_offset + j] =
            l.contexts[std::min<std::size_t>(position, l.contexts.size() - 1)];
      }
    }
    // The row this step verifies (one layer, one request), if any: prefer a
    // request that was preempted or reused cached pages.
    std::optional<std::size_t> verify_index;
    const std::uint32_t verify_layer =
        static_cast<std::uint32_t>(plan.step_index % shape.num_layers);
    if (result.verified_rows < config.verify_rows &&
        plan.step_index % verify_stride == 0) {
      // Scan from a pseudo-random start so the choice moves around.
      const std::size_t n = plan.requests.size();
      const std::size_t first = Mix64(config.seed ^ plan.step_index) % n;
      verify_index = first;
      for (std::size_t k = 0; k < n; ++k) {
        const std::size_t i = (first + k) % n;
        auto info = engine->GetRequest(plan.requests[i].id);
        if (info.ok() &&
            (info->num_preemptions > 0 || info->prefix_hit_tokens > 0)) {
          verify_index = i;
          ++result.verified_reused_rows;
          break;
        }
      }
    }

    for (std::uint32_t layer = 0; layer < shape.num_layers; ++layer) {
      const Clock::time_point fill_start = Clock::now();
      RPA_RETURN_IF_ERROR(tensors.Fill(layer));
      const Clock::time_point fill_end = Clock::now();
      const auto before = tracing ? engine->Stats().kernel_calls
                                  : std::array<std::uint64_t, 3>{};
      Status attended = engine->Attend(layer, tensors.q(), tensors.k(),
                                       tensors.v(), tensors.out());
      const Clock::time_point attend_end = Clock::now();
      if (!attended.ok()) {
        return Status(attended.code(), fmt::format("Attend(layer {}): {}",
                                                   layer, attended.message()));
      }
      result.model_s += Seconds(fill_end - fill_start);
      result.attend_s += Seconds(attend_end - fill_end);
      if (tracing) {
        events.push_back({fmt::format("q/k/v layer {}", layer), 'X',
                          ts_us(fill_start),
                          Seconds(fill_end - fill_start) * 1e6, 1, "{}"});
        events.push_back(
            {fmt::format("attention layer {}", layer), 'X', ts_us(fill_end),
             Seconds(attend_end - fill_end) * 1e6, 2,
             KernelArgs(before, engine->Stats().kernel_calls, plan)});
      }
      if (verify_index.has_value() && layer == verify_layer) {
        const Clock::time_point verify_start = Clock::now();
        const ScheduledRequest& sr = plan.requests[*verify_index];
        const LiveRequest& l = live.at(sr.id);
        const std::uint32_t row = sr.row_offset + sr.num_tokens - 1;
        const auto check = model.Reference(
            layer, std::span<const std::uint64_t>(l.contexts).first(sr.kv_len),
            shape.storage, tensors.out_row(row), shape.sm_scale,
            shape.sliding_window_tokens.empty()
                ? std::nullopt
                : shape.sliding_window_tokens[layer]);
        result.max_scaled_error =
            std::max(result.max_scaled_error, check.max_scaled_error);
        ++result.verified_rows;
        result.verify_s += Seconds(Clock::now() - verify_start);
      }
    }

    // Greedy sampling: the model's next token after each producing request's
    // last known token.
    const Clock::time_point sample_start = Clock::now();
    sampled.clear();
    for (const ScheduledRequest& sr : plan.requests) {
      if (!sr.produces_token) continue;
      const LiveRequest& l = live.at(sr.id);
      sampled.push_back(model.NextToken(l.contexts[sr.kv_len - 1]));
    }
    const Clock::time_point commit_start = Clock::now();
    result.model_s += Seconds(commit_start - sample_start);
    const std::uint64_t step_index = plan.step_index;
    const std::uint32_t step_tokens = plan.num_tokens;
    const auto step_requests = static_cast<std::uint32_t>(plan.requests.size());
    // Copy what the bookkeeping below needs: the plan dies at Commit.
    std::vector<ScheduledRequest> scheduled(plan.requests.begin(),
                                            plan.requests.end());
    Status committed = engine->Commit(sampled);
    if (!committed.ok()) {
      return Status(committed.code(),
                    fmt::format("Commit: {}", committed.message()));
    }
    const Clock::time_point step_end = Clock::now();
    result.engine_s += Seconds(step_end - commit_start);
    const double token_s = now_s();
    std::size_t s = 0;
    for (const ScheduledRequest& sr : scheduled) {
      if (!sr.produces_token) continue;
      LiveRequest& l = live.at(sr.id);
      const std::int32_t token = sampled[s++];
      l.tokens.push_back(token);
      l.contexts.push_back(
          scheduler::SyntheticModel::Extend(l.contexts.back(), token));
      ++l.generated;
      ++result.output_tokens;
      if (l.first_token_s < 0) {
        l.first_token_s = token_s;
        result.ttft_ms.push_back((token_s - l.arrival_s) * 1e3);
      }
      l.last_token_s = token_s;
      if (sr.finishes_request) {
        if (l.generated >= 2) {
          result.tpot_ms.push_back((l.last_token_s - l.first_token_s) * 1e3 /
                                   static_cast<double>(l.generated - 1));
        }
        if (l.generated != l.request->output_tokens) ++result.token_mismatches;
        live.erase(sr.id);
        ++result.finished;
      }
    }
    ++result.steps;
    result.step_ms.push_back(Seconds(step_end - step_start) * 1e3);
    result.max_batch_tokens =
        std::max<std::uint64_t>(result.max_batch_tokens, step_tokens);
    result.max_batch_requests =
        std::max<std::uint64_t>(result.max_batch_requests, step_requests);
    const scheduler::EngineStats stats = engine->Stats();
    const std::uint32_t request_pages =
        stats.used_pages - std::min(stats.used_pages, stats.evictable_pages);
    used_pages_sum += stats.used_pages;
    request_pages_sum += request_pages;
    ++used_pages_samples;
    result.peak_used_pages = std::max(result.peak_used_pages, stats.used_pages);
    result.peak_request_pages =
        std::max(result.peak_request_pages, request_pages);
    if (tracing) {
      events.push_back({"commit", 'X', ts_us(commit_start),
                        Seconds(step_end - commit_start) * 1e6, 0,
                        fmt::format(R"({{"sampled":{}}})", sampled.size())});
      events.push_back(
          {"batch", 'C', step_ts_us, 0, 0,
           fmt::format(R"({{"tokens":{},"requests":{},"used_pages":{}}})",
                       step_tokens, step_requests, stats.used_pages)});
      std::vector<TraceEvent>& sink = keep_mixed ? result.trace : first_steps;
      sink.insert(sink.end(), events.begin(), events.end());
      (keep_mixed ? result.traced_steps : first_step_ids).push_back(step_index);
    }
    result.timeline.push_back({ts_us(step_start), step_tokens, step_requests,
                               stats.used_pages, request_pages});
    progress.Update(result.finished, result.output_tokens, result.steps,
                    stats.running_requests, stats.waiting_requests,
                    Seconds(Clock::now() - start));
  }
  progress.Finish(result.finished, result.output_tokens, result.steps,
                  Seconds(Clock::now() - start));

  result.wall_s = Seconds(Clock::now() - start);
  result.skipped_idle_s = skipped_s;
  result.mean_used_pages =
      used_pages_samples == 0
          ? 0
          : used_pages_sum / static_cast<double>(used_pages_samples);
  result.mean_request_pages =
      used_pages_samples == 0
          ? 0
          : request_pages_sum / static_cast<double>(used_pages_samples);
  if (result.trace.empty()) {
    result.trace = std::move(first_steps);
    result.traced_steps = std::move(first_step_ids);
    result.traced_shape = std::move(first_shape);
  }
  result.stats = engine->Stats();
  if (result.token_mismatches > 0) {
    return InternalError(fmt::format(
        "{} scheduled token ids or output counts differ from what this loop "
        "submitted and committed",
        result.token_mismatches));
  }
  return result;
}

}  // namespace rpa::cli
