// Engine: creation, the request calls and the public calls (the options are
// validated in engine_options.cc; Attend, Commit and DiscardStep are in
// engine_step.cc). Every call validates everything first and mutates after
// (engine.h, "Errors").

#include "rpa/scheduler/engine.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <new>
#include <string>
#include <utility>

#include "engine_impl.h"

#include "rpa/device/device_spec.h"

namespace rpa::scheduler {

using internal::NanosSince;

// ---------------------------------------------------------------- lifecycle

StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  RPA_ASSIGN_OR_RETURN(const std::uint32_t num_pages,
                       internal::ValidateOptions(options));
  try {
    auto impl = std::make_unique<Impl>(options);
    RPA_RETURN_IF_ERROR(impl->Init(num_pages));
    return std::unique_ptr<Engine>(new Engine(std::move(impl)));
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(
        fmt::format("no memory for the engine's tables ({} pages)", num_pages));
  }
}

Status Engine::Impl::Init(std::uint32_t num_pages) {
  const ModelShape& model = options_.model;
  num_pages_ = num_pages;
  page_size_ = options_.page_size_tokens;
  chunk_tokens_ = options_.chunk_prefill_tokens != 0
                      ? options_.chunk_prefill_tokens
                      : options_.max_tokens_per_step;
  token_bytes_ = std::size_t{2} * model.num_kv_heads * model.head_dim *
                 memory::StorageBytes(model.storage);
  // The selector resolves the target: "host", a preset or a device JSON.
  RPA_ASSIGN_OR_RETURN(KernelSelector selector,
                       KernelSelector::Create(options_.target));
  selector_.emplace(std::move(selector));
  device_spec_ = selector_->device();
  if (options_.executor != nullptr) {
    executor_ = options_.executor;
  } else {
    RPA_ASSIGN_OR_RETURN(
        own_executor_,
        runtime::Executor::Create({.num_workers = options_.num_workers}));
    executor_ = own_executor_.get();
  }
  RPA_ASSIGN_OR_RETURN(cache_, memory::KvCache::Create(
                                   {.num_pages = num_pages,
                                    .page_size_tokens = page_size_,
                                    .num_kv_heads = model.num_kv_heads,
                                    .head_dim = model.head_dim,
                                    .storage = model.storage,
                                    .num_layers = model.num_layers,
                                    .max_sequences = options_.max_requests}));
  if (options_.enable_prefix_caching) {
    prefix_ = std::make_unique<internal::PrefixCache>(cache_.get(), page_size_);
  }
  swap_ = std::make_unique<internal::SwapStore>(
      options_.swap_directory, options_.max_swap_bytes,
      options_.swap_fault_injector, cache_.get(), executor_);

  // One parameter set per distinct sliding window.
  attention::AttentionParams base;
  base.sm_scale = model.sm_scale.value_or(
      1.0F / std::sqrt(static_cast<float>(model.head_dim)));
  base.soft_cap = model.soft_cap;
  base.chunk_prefill_size = static_cast<std::int32_t>(chunk_tokens_);
  layer_param_set_.resize(model.num_layers);
  for (std::uint32_t l = 0; l < model.num_layers; ++l) {
    attention::AttentionParams params = base;
    if (!model.sliding_window_tokens.empty()) {
      params.sliding_window = model.sliding_window_tokens[l];
    }
    std::uint32_t set = 0;
    while (set < param_sets_.size() &&
           param_sets_[set].sliding_window != params.sliding_window) {
      ++set;
    }
    if (set == param_sets_.size()) param_sets_.push_back(params);
    layer_param_set_[l] = set;
  }
  plans_.resize(param_sets_.size());
  plan_options_.parallelism = std::max(executor_->num_workers(), 1);

  // Everything a step touches is sized here, so steps do not allocate.
  const std::uint32_t max_step = options_.max_requests_per_step;
  running_.reserve(options_.max_requests);
  waiting_.reserve(options_.max_requests);
  io_pending_.reserve(options_.max_requests);
  picks_.reserve(max_step);
  batch_.reserve(max_step);
  scheduled_.reserve(max_step);
  cu_q_lens_.reserve(std::size_t{max_step} + 1);
  step_seqs_.reserve(max_step);
  page_table_.kv_lens.reserve(max_step);
  attended_.assign(model.num_layers, 0);
  page_scratch_.reserve(num_pages);
  ref_scratch_.resize(num_pages);
  requests_.reserve(options_.max_requests);
  stats_.num_pages = num_pages;
  return OkStatus();
}

Engine::Impl::~Impl() {
  // Swap I/O reads and writes pages of the cache: let it land first.
  for (Request* request : io_pending_) {
    swap_->Wait(*request->io).IgnoreError();
    request->io.reset();
  }
  io_pending_.clear();
  for (auto& [id, request] : requests_) {
    if (request->has_seq) FreeSeq(request.get());
  }
  if (prefix_ != nullptr) prefix_->Clear();
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

// ----------------------------------------------------------------- requests

Status Engine::Impl::AddRequest(RequestId id,
                                std::span<const std::int32_t> prompt,
                                std::uint32_t max_new_tokens,
                                const RequestOptions& opts) {
  if (requests_.count(id) != 0) {
    return InvalidArgumentError(
        fmt::format("request id {} is already live", id));
  }
  if (prompt.empty()) {
    return InvalidArgumentError(
        fmt::format("request {}: prompt_tokens is empty", id));
  }
  for (std::size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0) {
      return InvalidArgumentError(fmt::format(
          "request {}: prompt_tokens[{}] = {} is negative", id, i, prompt[i]));
    }
  }
  if (max_new_tokens == 0) {
    return InvalidArgumentError(
        fmt::format("request {}: max_new_tokens must be positive, got 0", id));
  }
  // The KV of the last generated token is never computed.
  const std::uint64_t most_tokens =
      std::uint64_t{prompt.size()} + max_new_tokens - 1;
  if (prompt.size() + std::uint64_t{max_new_tokens} > internal::kMaxTokens) {
    return InvalidArgumentError(fmt::format(
        "request {}: prompt of {} tokens + max_new_tokens {} is above 2^31 - 1",
        id, prompt.size(), max_new_tokens));
  }
  const std::uint64_t most_pages =
      DivideRoundUp<std::uint64_t>(most_tokens, page_size_);
  if (most_pages > num_pages_) {
    return InvalidArgumentError(fmt::format(
        "request {}: prompt of {} tokens + max_new_tokens {} needs up to {} "
        "pages; the KV budget has {}",
        id, prompt.size(), max_new_tokens, most_pages, num_pages_));
  }
  if (requests_.size() >= options_.max_requests) {
    return ResourceExhaustedError(
        fmt::format("max_requests {} requests are live; finish one first",
                    options_.max_requests));
  }
  try {
    auto request = std::make_unique<Request>();
    request->id = id;
    request->priority = opts.priority;
    request->arrival = next_arrival_++;
    request->tokens.reserve(prompt.size() + max_new_tokens);
    request->tokens.assign(prompt.begin(), prompt.end());
    request->prompt_len = static_cast<std::uint32_t>(prompt.size());
    request->max_new = max_new_tokens;
    // The step's page table holds up to max_requests_per_step rows of the
    // longest request's pages: the next Plan sizes it once (not here: a
    // planned step's page_indices must stay where they are).
    table_entries_wanted_ =
        std::max(table_entries_wanted_,
                 std::size_t{options_.max_requests_per_step} * most_pages);
    request->page_hashes.reserve(most_pages + 1);
    request->page_refs.reserve(most_pages + 1);
    Request* raw = request.get();
    requests_.emplace(id, std::move(request));
    waiting_.push_back(raw);  // capacity max_requests: cannot throw
  } catch (const std::bad_alloc&) {
    requests_.erase(id);
    return ResourceExhaustedError(
        fmt::format("request {}: no memory for its token list", id));
  }
  return OkStatus();
}

Status Engine::Impl::End(RequestId id, internal::PendingEnd kind) {
  Request* request = Find(id);
  if (request == nullptr) {
    return NotFoundError(
        fmt::format("request id {} names no live request", id));
  }
  if (planned_ && request->in_step) {
    request->pending_end = kind;  // Commit or DiscardStep applies it
    return OkStatus();
  }
  Release(request, kind);
  return OkStatus();
}

StatusOr<RequestInfo> Engine::Impl::GetRequest(RequestId id) const {
  const Request* request = Find(id);
  if (request == nullptr) {
    return NotFoundError(
        fmt::format("request id {} names no live request", id));
  }
  return RequestInfo{.state = request->state,
                     .prompt_tokens = request->prompt_len,
                     .generated_tokens = request->generated,
                     .max_new_tokens = request->max_new,
                     .computed_tokens = request->computed,
                     .prefix_hit_tokens = request->prefix_hit_tokens,
                     .num_preemptions = request->num_preemptions,
                     .priority = request->priority};
}

StatusOr<std::span<const std::int32_t>> Engine::Impl::RequestTokens(
    RequestId id) const {
  const Request* request = Find(id);
  if (request == nullptr) {
    return NotFoundError(
        fmt::format("request id {} names no live request", id));
  }
  return std::span<const std::int32_t>(request->tokens);
}

Status Engine::Impl::ReadRequestKv(RequestId id, std::uint32_t layer,
                                   std::span<std::byte> out) const {
  const Request* request = Find(id);
  if (request == nullptr) {
    return NotFoundError(
        fmt::format("request id {} names no live request", id));
  }
  if (layer >= options_.model.num_layers) {
    return InvalidArgumentError(fmt::format("layer {} is out of range [0, {})",
                                            layer, options_.model.num_layers));
  }
  if (request->state != RequestState::kRunning || !request->has_seq) {
    return FailedPreconditionError(
        fmt::format("request {}: its KV is not in the cache (state {})", id,
                    static_cast<int>(request->state)));
  }
  const std::size_t expected = std::size_t{request->computed} * token_bytes_;
  if (out.size() != expected) {
    return InvalidArgumentError(fmt::format(
        "out has {} bytes; request {} has {} computed tokens x {} bytes = {}",
        out.size(), id, request->computed, token_bytes_, expected));
  }
  RPA_ASSIGN_OR_RETURN(std::span<const memory::PageId> table,
                       cache_->PageTable(request->seq));
  const memory::KvLayerView view = cache_->Layer(layer);
  for (std::uint32_t t = 0; t < request->computed; ++t) {
    const std::byte* slot =
        view.SlotAddress(table[t / page_size_], t % page_size_);
    std::copy(slot, slot + token_bytes_,
              out.begin() + static_cast<std::ptrdiff_t>(t * token_bytes_));
  }
  return OkStatus();
}

// -------------------------------------------------------------------- stats

EngineStats Engine::Impl::Stats() const {
  EngineStats stats = stats_;
  const memory::KvCacheStats cache = cache_->Stats();
  stats.num_pages = cache.num_pages;
  stats.used_pages = cache.used_pages;
  stats.free_pages = cache.free_pages;
  stats.high_water_pages = cache.high_water_pages;
  if (prefix_ != nullptr) {
    stats.cached_pages = prefix_->num_cached();
    stats.evictable_pages = prefix_->num_evictable();
    stats.prefix_evictions = prefix_->evictions();
  }
  stats.prefix_hit_rate =
      stats.prefix_query_tokens == 0
          ? 0.0
          : static_cast<double>(stats.prefix_hit_tokens) /
                static_cast<double>(stats.prefix_query_tokens);
  stats.waiting_requests = 0;
  stats.swapped_requests = 0;
  for (const Request* request : waiting_) {
    if (request->state == RequestState::kWaiting) {
      ++stats.waiting_requests;
    } else {
      ++stats.swapped_requests;
    }
  }
  // Requests with swap I/O in flight: swapping out or in.
  stats.swapped_requests += static_cast<std::uint32_t>(io_pending_.size());
  stats.running_requests = static_cast<std::uint32_t>(running_.size());
  if (device_spec_.has_value()) {
    stats.simulated = true;
    const double seconds = stats.simulated_us * 1e-6;
    if (seconds > 0) {
      stats.mbu =
          stats.simulated_bytes / seconds / device_spec_->hbm_bytes_per_s;
      stats.mfu =
          stats.simulated_flops / seconds / device_spec_->matrix_peak_flops;
    }
  }
  return stats;
}

// ------------------------------------------------------------ public calls

Status Engine::AddRequest(RequestId id,
                          std::span<const std::int32_t> prompt_tokens,
                          std::uint32_t max_new_tokens,
                          const RequestOptions& options) {
  return impl_->AddRequest(id, prompt_tokens, max_new_tokens, options);
}
// Plan and Attend reach into the attention library, whose plans and task
// lists are heap vectors: an allocation failure there becomes a Status.
StatusOr<const StepPlan*> Engine::Plan() {
  const auto start = std::chrono::steady_clock::now();
  try {
    StatusOr<const StepPlan*> plan = impl_->Plan();
    impl_->AddPlanTime(static_cast<std::uint64_t>(NanosSince(start)));
    return plan;
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("Plan: out of memory for the step's plans");
  }
}
Status Engine::Attend(std::uint32_t layer, std::span<const float> q,
                      std::span<const float> k, std::span<const float> v,
                      std::span<float> out) {
  try {
    return impl_->Attend(layer, q, k, v, out);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(
        fmt::format("Attend: out of memory in layer {}", layer));
  }
}
Status Engine::Commit(std::span<const std::int32_t> sampled_tokens) {
  return impl_->Commit(sampled_tokens);
}
Status Engine::DiscardStep() { return impl_->DiscardStep(); }
Status Engine::Finish(RequestId id) {
  return impl_->End(id, internal::PendingEnd::kFinish);
}
Status Engine::Abort(RequestId id) {
  return impl_->End(id, internal::PendingEnd::kAbort);
}
StatusOr<RequestInfo> Engine::GetRequest(RequestId id) const {
  return impl_->GetRequest(id);
}
StatusOr<std::span<const std::int32_t>> Engine::RequestTokens(
    RequestId id) const {
  return impl_->RequestTokens(id);
}
Status Engine::ReadRequestKv(RequestId id, std::uint32_t layer,
                             std::span<std::byte> out) const {
  return impl_->ReadRequestKv(id, layer, out);
}
Status Engine::CheckInvariants() const { return impl_->CheckInvariants(); }
bool Engine::HasWork() const { return impl_->has_work(); }
bool Engine::step_planned() const { return impl_->planned(); }
std::uint32_t Engine::num_pages() const { return impl_->num_pages(); }
const EngineOptions& Engine::options() const { return impl_->options(); }
EngineStats Engine::Stats() const { return impl_->Stats(); }

}  // namespace rpa::scheduler
