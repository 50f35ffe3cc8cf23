// Engine option validation (Engine::Create calls it before building
// anything): every field of EngineOptions and its ModelShape, each error an
// InvalidArgument naming the field and the value.

#include <fmt/format.h>

#include <cmath>
#include <cstdint>

#include "engine_impl.h"

namespace rpa::scheduler::internal {
namespace {

Status Positive(const char* field, std::uint64_t value) {
  if (value > 0) return OkStatus();
  return InvalidArgumentError(
      fmt::format("{} must be positive, got {}", field, value));
}

Status ValidateModel(const ModelShape& model) {
  RPA_RETURN_IF_ERROR(Positive("model.num_layers", model.num_layers));
  RPA_RETURN_IF_ERROR(Positive("model.num_q_heads", model.num_q_heads));
  RPA_RETURN_IF_ERROR(Positive("model.num_kv_heads", model.num_kv_heads));
  RPA_RETURN_IF_ERROR(Positive("model.head_dim", model.head_dim));
  if (model.num_q_heads % model.num_kv_heads != 0) {
    return InvalidArgumentError(fmt::format(
        "model.num_q_heads {} is not a multiple of model.num_kv_heads {}",
        model.num_q_heads, model.num_kv_heads));
  }
  if (!model.sliding_window_tokens.empty() &&
      model.sliding_window_tokens.size() != model.num_layers) {
    return InvalidArgumentError(fmt::format(
        "model.sliding_window_tokens has {} entries; it must be empty or have "
        "model.num_layers = {}",
        model.sliding_window_tokens.size(), model.num_layers));
  }
  for (std::size_t l = 0; l < model.sliding_window_tokens.size(); ++l) {
    const auto& window = model.sliding_window_tokens[l];
    if (window.has_value() && *window <= 0) {
      return InvalidArgumentError(
          fmt::format("model.sliding_window_tokens[{}] = {}: sliding_window "
                      "must be positive",
                      l, *window));
    }
  }
  if (model.soft_cap.has_value() &&
      (*model.soft_cap == 0.0F || !std::isfinite(*model.soft_cap))) {
    return InvalidArgumentError(fmt::format(
        "model.soft_cap = {}: soft_cap must not be 0 and must be finite",
        *model.soft_cap));
  }
  if (model.sm_scale.has_value() && !std::isfinite(*model.sm_scale)) {
    return InvalidArgumentError(
        fmt::format("model.sm_scale = {} is not finite", *model.sm_scale));
  }
  const auto storage = static_cast<int>(model.storage);
  if (storage < 0 || storage > static_cast<int>(memory::StorageType::kBf16)) {
    return InvalidArgumentError(
        fmt::format("model.storage = {} is not f32, f16 or bf16", storage));
  }
  return OkStatus();
}

}  // namespace

StatusOr<std::uint32_t> ValidateOptions(const EngineOptions& options) {
  RPA_RETURN_IF_ERROR(ValidateModel(options.model));
  RPA_RETURN_IF_ERROR(Positive("page_size_tokens", options.page_size_tokens));
  RPA_RETURN_IF_ERROR(
      Positive("max_tokens_per_step", options.max_tokens_per_step));
  RPA_RETURN_IF_ERROR(
      Positive("max_requests_per_step", options.max_requests_per_step));
  RPA_RETURN_IF_ERROR(Positive("max_requests", options.max_requests));
  if (options.max_tokens_per_step > kMaxTokens) {
    return InvalidArgumentError(
        fmt::format("max_tokens_per_step {} is above 2^31 - 1",
                    options.max_tokens_per_step));
  }
  if (options.max_requests > (1U << 24)) {
    return InvalidArgumentError(
        fmt::format("max_requests {} is above 2^24", options.max_requests));
  }
  if (options.chunk_prefill_tokens > options.max_tokens_per_step) {
    return InvalidArgumentError(
        fmt::format("chunk_prefill_tokens {} is above max_tokens_per_step {}",
                    options.chunk_prefill_tokens, options.max_tokens_per_step));
  }
  if (options.executor == nullptr && options.num_workers < 1) {
    return InvalidArgumentError(fmt::format(
        "num_workers must be at least 1, got {}", options.num_workers));
  }
  if (options.executor != nullptr) {
    if (options.executor->num_workers() < 1) {
      return InvalidArgumentError(
          "executor must have at least one worker (num_workers 0 runs only "
          "when driven, and the engine's swap I/O runs in the background)");
    }
    if (options.executor->clock() != runtime::ClockKind::kReal) {
      return InvalidArgumentError("executor must use the real clock");
    }
  }
  const ModelShape& model = options.model;
  if ((options.num_pages == 0) == (options.kv_budget_bytes == 0)) {
    return InvalidArgumentError(fmt::format(
        "exactly one of num_pages ({}) and kv_budget_bytes ({}) must be set",
        options.num_pages, options.kv_budget_bytes));
  }
  std::uint64_t num_pages = options.num_pages;
  if (options.kv_budget_bytes != 0) {
    const std::uint64_t page_bytes_all_layers =
        std::uint64_t{model.num_layers} * options.page_size_tokens * 2 *
        model.num_kv_heads * model.head_dim *
        memory::StorageBytes(model.storage);
    num_pages = options.kv_budget_bytes / page_bytes_all_layers;
    if (num_pages == 0) {
      return InvalidArgumentError(fmt::format(
          "kv_budget_bytes {} is less than one page of every layer ({} bytes)",
          options.kv_budget_bytes, page_bytes_all_layers));
    }
  }
  if (num_pages >= (std::uint64_t{1} << 31)) {
    return InvalidArgumentError(
        fmt::format("the KV budget gives {} pages, above 2^31 - 1", num_pages));
  }
  return static_cast<std::uint32_t>(num_pages);
}

}  // namespace rpa::scheduler::internal
