// Engine::Attend, Commit and DiscardStep: the step that Plan
// (engine_plan.cc) made, run layer by layer and then committed or discarded.
// Split off engine.cc, which keeps creation, the request calls and the public
// calls that lead here.

#include <fmt/format.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>

#include "engine_impl.h"

#include "rpa/attention/batch.h"
#include "rpa/attention/device_run.h"
#include "rpa/attention/plan.h"

namespace rpa::scheduler {

using internal::NanosSince;

Status Engine::Impl::Attend(std::uint32_t layer, std::span<const float> q,
                            std::span<const float> k, std::span<const float> v,
                            std::span<float> out) {
  const auto start = std::chrono::steady_clock::now();
  const ModelShape& model = options_.model;
  if (!planned_) {
    return FailedPreconditionError("Attend: no step is planned (call Plan)");
  }
  if (layer >= model.num_layers) {
    return InvalidArgumentError(fmt::format("layer {} is out of range [0, {})",
                                            layer, model.num_layers));
  }
  if (attended_[layer] != 0) {
    return FailedPreconditionError(fmt::format(
        "layer {} was already attended in step {}", layer, plan_.step_index));
  }
  const std::size_t tokens = plan_.num_tokens;
  const std::size_t q_size = tokens * model.num_q_heads * model.head_dim;
  const std::size_t kv_size = tokens * model.num_kv_heads * model.head_dim;
  const auto check = [&](const char* name, std::size_t got,
                         std::size_t expected) {
    return got == expected
               ? OkStatus()
               : InvalidArgumentError(fmt::format(
                     "{} has {} floats; step {} needs T {} x {} x D {} = {}",
                     name, got, plan_.step_index, tokens,
                     name[0] == 'k' || name[0] == 'v' ? "Hkv" : "Hq",
                     model.head_dim, expected));
  };
  RPA_RETURN_IF_ERROR(check("q", q.size(), q_size));
  RPA_RETURN_IF_ERROR(check("k", k.size(), kv_size));
  RPA_RETURN_IF_ERROR(check("v", v.size(), kv_size));
  RPA_RETURN_IF_ERROR(check("out", out.size(), q_size));
  if (tokens > 0) {
    const attention::AttentionPlan& plan = *plans_[layer_param_set_[layer]];
    const attention::BatchTensors tensors{q, k, v, cache_->Layer(layer), out};
    const auto kernel_start = std::chrono::steady_clock::now();
    if (device_spec_.has_value()) {
      // The simulated TPU: same numerics, plus simulated time and traffic.
      RPA_ASSIGN_OR_RETURN(const attention::DeviceRunReport report,
                           attention::RunOnDevice(plan, tensors, *device_spec_,
                                                  device_run_options_));
      stats_.simulated_us += report.simulated_us;
      stats_.simulated_bytes += report.bytes_moved;
      stats_.simulated_flops += report.flops;
      step_simulated_us_ += report.simulated_us;
    } else {
      RPA_RETURN_IF_ERROR(attention::Run(plan, tensors, executor_));
    }
    stats_.kernel_ns += static_cast<std::uint64_t>(NanosSince(kernel_start));
    for (std::size_t range = 0; range < 3; ++range) {
      const std::int32_t begin = range == 0 ? 0 : plan_.distribution[range - 1];
      if (plan_.distribution[range] > begin) {
        ++stats_.kernel_calls[static_cast<std::size_t>(
            plan.kernel_for_range(static_cast<int>(range)))];
      }
    }
  }
  attended_[layer] = 1;
  ++num_attended_;
  stats_.attend_ns += static_cast<std::uint64_t>(NanosSince(start));
  return OkStatus();
}

Status Engine::Impl::Commit(std::span<const std::int32_t> sampled_tokens) {
  const auto start = std::chrono::steady_clock::now();
  if (!planned_) {
    return FailedPreconditionError("Commit: no step is planned (call Plan)");
  }
  if (!plan_.empty() && num_attended_ != options_.model.num_layers) {
    std::uint32_t missing = 0;
    while (attended_[missing] != 0) ++missing;
    return FailedPreconditionError(fmt::format(
        "Commit: step {} attended {} of {} layers (layer {} is missing)",
        plan_.step_index, num_attended_, options_.model.num_layers, missing));
  }
  if (sampled_tokens.size() != plan_.num_output_tokens) {
    return InvalidArgumentError(fmt::format(
        "sampled_tokens has {} entries; step {} produces {} tokens",
        sampled_tokens.size(), plan_.step_index, plan_.num_output_tokens));
  }
  for (std::size_t i = 0; i < sampled_tokens.size(); ++i) {
    if (sampled_tokens[i] < 0) {
      return InvalidArgumentError(fmt::format(
          "sampled_tokens[{}] = {} is negative", i, sampled_tokens[i]));
    }
  }
  std::size_t next_token = 0;
  for (std::size_t i = 0; i < batch_.size(); ++i) {
    Request* request = batch_[i].request;
    const ScheduledRequest& entry = scheduled_[i];
    request->computed += entry.num_tokens;
    if (entry.is_prefill) {
      stats_.prefill_tokens += entry.num_tokens;
    } else {
      stats_.decode_tokens += entry.num_tokens;
    }
    if (entry.produces_token) {
      request->tokens.push_back(sampled_tokens[next_token++]);
      ++request->generated;
      ++stats_.generated_tokens;
    }
    RegisterFullPages(request);
    request->in_step = false;
    const internal::PendingEnd pending = request->pending_end;
    if (pending != internal::PendingEnd::kNone) {
      Release(request, pending);
    } else if (request->generated == request->max_new) {
      Release(request, internal::PendingEnd::kFinish);
    }
  }
  if (!plan_.empty()) ++stats_.steps;
  if (device_spec_.has_value()) {
    stats_.last_step_simulated_us = step_simulated_us_;
  }
  step_simulated_us_ = 0;
  planned_ = false;
  stats_.commit_ns += static_cast<std::uint64_t>(NanosSince(start));
  return OkStatus();
}

Status Engine::Impl::DiscardStep() {
  if (!planned_) {
    return FailedPreconditionError(
        "DiscardStep: no step is planned (call Plan)");
  }
  // The tokens stay uncomputed; the pages reserved for them stay with their
  // requests and are reused when the tokens are scheduled again.
  for (const internal::Pick& pick : batch_) {
    Request* request = pick.request;
    request->in_step = false;
    if (request->pending_end != internal::PendingEnd::kNone) {
      Release(request, request->pending_end);
    }
  }
  step_simulated_us_ = 0;
  planned_ = false;
  return OkStatus();
}

}  // namespace rpa::scheduler
