// Engine::Plan: reaping swap I/O, the scheduling policy (running first, then
// waiting, within the budgets; chunked prefill; prefix-cache admission;
// eviction; preemption by swap or recompute) and the step's batch (decode |
// prefill | mixed) with its attention plans. scheduler/README.md, "The
// engine", describes the policy and its invariants.

#include <fmt/format.h>

#include <algorithm>

#include "engine_impl.h"

namespace rpa::scheduler {
namespace {

using Request = internal::Request;

bool HigherPriority(const Request* a, const Request* b) {
  if (a->priority != b->priority) return a->priority < b->priority;
  return a->arrival < b->arrival;
}

}  // namespace

StatusOr<const StepPlan*> Engine::Impl::Plan() {
  if (planned_) {
    return FailedPreconditionError(
        fmt::format("Plan: step {} is planned; Commit or DiscardStep it first",
                    plan_.step_index));
  }
  plan_.num_preempted = 0;
  plan_.num_swapping_in = 0;
  // The previous step's swap I/O has overlapped its kernels; it lands here.
  RPA_RETURN_IF_ERROR(ReapIo());
  Schedule();
  // Nothing can run until the I/O started just now lands (a preemption or a
  // swap-in with nothing else to do): wait for it and schedule again. Each
  // round preempts or resumes a request, so this ends.
  while (picks_.empty() && !io_pending_.empty()) {
    RPA_RETURN_IF_ERROR(ReapIo());
    Schedule();
  }
  RPA_RETURN_IF_ERROR(BuildPlan());
  planned_ = true;
  return &plan_;
}

// Joins every swap job in flight. A write that landed releases the
// request's pages (its KV is in the file); a read that landed makes the
// request runnable. A failed one falls back to recompute: the request keeps
// its tokens and only its KV is recomputed. Returns the first failure.
Status Engine::Impl::ReapIo() {
  Status first_error;
  for (Request* request : io_pending_) {
    const Status status = swap_->Wait(*request->io);
    const bool is_write = request->io->is_write();
    const std::uint64_t bytes = request->io->bytes();
    request->io.reset();
    if (!status.ok()) ++stats_.swap_io_errors;
    if (is_write) {
      FreeSeq(request);  // the KV is in the file (or lost, on error)
      if (status.ok()) stats_.swap_out_bytes += bytes;
    } else {
      if (status.ok()) stats_.swap_in_bytes += bytes;
      swap_->Free(request->swap);  // read back (or lost): the space is free
      request->swap = {};
      if (!status.ok()) FreeSeq(request);
    }
    if (!status.ok()) {
      if (request->swap.num_pages != 0) {
        swap_->Free(request->swap);
        request->swap = {};
      }
      ResetForRecompute(request);
      waiting_.push_back(request);
      if (first_error.ok()) {
        first_error =
            Status(status.code(),
                   fmt::format(
                       "swap-{} of request {} failed; the request is kept and "
                       "will recompute its KV: {}",
                       is_write ? "out" : "in", request->id, status.message()));
      }
      continue;
    }
    if (is_write) {
      request->state = RequestState::kSwappedOut;
      waiting_.push_back(request);
    } else {
      request->state = RequestState::kRunning;
      running_.push_back(request);
    }
  }
  io_pending_.clear();
  return first_error;
}

std::uint32_t Engine::Impl::NextChunk(const Request& request,
                                      std::uint32_t budget) const {
  const auto remaining =
      static_cast<std::uint32_t>(request.tokens.size()) - request.computed;
  return std::min({remaining, chunk_tokens_, budget});
}

void Engine::Impl::Schedule() {
  picks_.clear();
  preempted_this_step_ = false;
  std::uint32_t budget = options_.max_tokens_per_step;
  std::uint32_t slots = options_.max_requests_per_step;

  // Running requests first, most important first; the least important one
  // (the back) is the preemption victim.
  std::sort(running_.begin(), running_.end(), HigherPriority);
  bool stop = false;
  for (std::size_t i = 0; i < running_.size() && !stop;) {
    if (budget == 0 || slots == 0) break;
    Request* request = running_[i];
    const std::uint32_t n = NextChunk(*request, budget);
    bool got_pages = false;
    while (!(got_pages = EnsurePages(request, request->computed + n))) {
      Request* victim = running_.back();
      running_.pop_back();
      Preempt(victim);
      preempted_this_step_ = true;
      ++plan_.num_preempted;
      // A victim swapped out holds its pages until its writes land (the next
      // Plan): nothing more fits this step.
      if (victim == request || victim->state != RequestState::kWaiting) {
        stop = true;
        break;
      }
    }
    if (!got_pages) break;
    picks_.push_back({request, n});  // capacity max_requests_per_step
    budget -= n;
    --slots;
    ++i;
  }

  // Then waiting and swapped-out requests, unless this step had to preempt
  // (vLLM's rule: no admission under memory pressure). A request that does
  // not fit blocks the ones behind it (no overtaking).
  if (preempted_this_step_) return;
  std::sort(waiting_.begin(), waiting_.end(), HigherPriority);
  std::size_t kept = 0;
  bool blocked = false;
  for (Request* request : waiting_) {
    bool taken = false;
    if (!blocked && budget > 0 && slots > 0) {
      if (request->state == RequestState::kSwappedOut) {
        taken = StartSwapIn(request);
        if (taken) ++plan_.num_swapping_in;
      } else {
        taken = AdmitWaiting(request, budget);
        if (taken) {
          budget -= picks_.back().num_tokens;
          --slots;
        }
      }
      blocked = !taken;
    }
    if (!taken) waiting_[kept++] = request;
  }
  waiting_.resize(kept);  // shrinks: no allocation
}

std::uint32_t Engine::Impl::PagesNeeded(const Request& request,
                                        std::uint32_t total_tokens) const {
  const std::uint32_t have = DivideRoundUp(request.reserved, page_size_);
  std::uint32_t needed = DivideRoundUp(total_tokens, page_size_) - have;
  if (request.reserved % page_size_ != 0) {
    // A shared, partially filled last page is copied on write.
    const auto table = cache_->PageTable(request.seq);
    if (table.ok() && cache_->RefCount(table->back()) > 1) ++needed;
  }
  return needed;
}

bool Engine::Impl::MakeRoom(std::uint32_t pages) {
  std::uint32_t free_pages = cache_->Stats().free_pages;
  if (free_pages >= pages) return true;
  if (prefix_ == nullptr) return false;
  free_pages += prefix_->Evict(pages - free_pages);
  return free_pages >= pages;
}

// Pages for `total_tokens` tokens of the request (evicting cached pages if
// needed, never preempting). False if they are not there.
bool Engine::Impl::EnsurePages(Request* request, std::uint32_t total_tokens) {
  if (total_tokens <= request->reserved) return true;
  if (!MakeRoom(PagesNeeded(*request, total_tokens))) return false;
  const bool partial = request->reserved % page_size_ != 0;
  const std::size_t last_index =
      partial ? DivideRoundUp(request->reserved, page_size_) - 1 : 0;
  memory::PageId old_last{};
  if (partial) old_last = (*cache_->PageTable(request->seq))[last_index];
  const Status reserved =
      cache_->Reserve(request->seq, total_tokens - request->reserved);
  if (!reserved.ok()) {
    // Pages or page-table metadata ran out: the caller preempts or waits.
    RPA_CHECK_MSG(reserved.code() == StatusCode::kResourceExhausted,
                  reserved.ToString().c_str());
    return false;
  }
  if (partial && prefix_ != nullptr) {
    // Copy on write replaced a shared last page: it lost our reference.
    const memory::PageId now = (*cache_->PageTable(request->seq))[last_index];
    if (now != old_last) prefix_->OnReleased(old_last);
  }
  request->reserved = total_tokens;
  return true;
}

void Engine::Impl::Preempt(Request* victim) {
  ++victim->num_preemptions;
  if (options_.preemption_mode == PreemptionMode::kSwap &&
      victim->computed > 0) {
    const std::uint32_t pages = DivideRoundUp(victim->computed, page_size_);
    StatusOr<internal::SwapExtent> extent = swap_->Allocate(pages);
    if (extent.ok()) {
      const auto table = cache_->PageTable(victim->seq);
      RPA_CHECK(table.ok());
      auto job = swap_->Start(/*is_write=*/true, *extent, table->first(pages));
      if (job.ok()) {
        victim->swap = *extent;
        victim->io = std::move(*job);
        victim->state = RequestState::kSwappedOut;
        io_pending_.push_back(victim);
        ++stats_.preemptions_swap;
        return;
      }
      swap_->Free(*extent);
    }
    // No swap space (max_swap_bytes, no file): recompute instead.
  }
  PreemptByRecompute(victim);
}

void Engine::Impl::PreemptByRecompute(Request* victim) {
  FreeSeq(victim);
  ResetForRecompute(victim);
  waiting_.push_back(victim);
  ++stats_.preemptions_recompute;
}

bool Engine::Impl::StartSwapIn(Request* request) {
  const std::uint32_t pages = request->swap.num_pages;
  if (!MakeRoom(pages)) return false;
  StatusOr<memory::SequenceId> seq = cache_->CreateSequence();
  if (!seq.ok()) return false;
  if (!cache_->Reserve(*seq, request->computed).ok()) {
    const Status freed = cache_->FreeSequence(*seq);
    RPA_CHECK(freed.ok());
    return false;
  }
  request->seq = *seq;
  request->has_seq = true;
  request->reserved = request->computed;
  const auto table = cache_->PageTable(*seq);
  RPA_CHECK(table.ok() && table->size() == pages);
  auto job = swap_->Start(/*is_write=*/false, request->swap, *table);
  if (!job.ok()) {
    FreeSeq(request);
    return false;
  }
  request->io = std::move(*job);
  request->state = RequestState::kSwappingIn;
  request->page_refs.clear();  // fresh pages: registered again at Commit
  io_pending_.push_back(request);
  return true;
}

// Admits a waiting request: reuses its longest cached prefix, then reserves
// the pages of its first chunk. False (nothing changed) if they do not fit.
bool Engine::Impl::AdmitWaiting(Request* request, std::uint32_t budget) {
  RPA_DCHECK(!request->has_seq);
  const auto num_tokens = static_cast<std::uint32_t>(request->tokens.size());
  std::uint32_t hit_tokens = 0;
  std::uint32_t hit_pages = 0;
  StatusOr<memory::SequenceId> seq = memory::SequenceId{};
  if (prefix_ != nullptr) {
    const std::uint32_t full = num_tokens / page_size_;
    EnsureHashes(request, full);
    const std::uint32_t found = prefix_->Lookup(
        std::span<const std::uint64_t>(request->page_hashes).first(full),
        request->tokens, ref_scratch_);
    // The last token is always computed: its output yields the next token.
    hit_tokens = std::min(found * page_size_, num_tokens - 1);
    hit_pages = DivideRoundUp(hit_tokens, page_size_);
    page_scratch_.resize(hit_pages);  // capacity num_pages
    for (std::uint32_t i = 0; i < hit_pages; ++i) {
      page_scratch_[i] = ref_scratch_[i].page;
    }
    seq = cache_->CreateSequenceFromPages(page_scratch_, hit_tokens);
  } else {
    seq = cache_->CreateSequence();
  }
  if (!seq.ok()) return false;
  request->seq = *seq;
  request->has_seq = true;
  request->reserved = hit_tokens;
  request->computed = hit_tokens;
  request->page_refs.clear();
  if (prefix_ != nullptr) {
    for (std::uint32_t i = 0; i < hit_pages; ++i) {
      prefix_->OnAcquired(ref_scratch_[i].page);
      request->page_refs.push_back(ref_scratch_[i]);
    }
  }
  const std::uint32_t n = NextChunk(*request, budget);
  if (!EnsurePages(request, hit_tokens + n)) {
    FreeSeq(request);
    ResetForRecompute(request);
    return false;
  }
  if (prefix_ != nullptr) {
    ++stats_.prefix_lookups;
    stats_.prefix_query_tokens += num_tokens;
    stats_.prefix_hit_tokens += hit_tokens;
    if (hit_tokens > 0) ++stats_.prefix_hits;
  }
  request->prefix_hit_tokens = hit_tokens;
  request->state = RequestState::kRunning;
  running_.push_back(request);
  picks_.push_back({request, n});
  return true;
}

// Orders the picks [decode | prefill | mixed], fills the StepPlan and plans
// the attention of every distinct layer configuration.
Status Engine::Impl::BuildPlan() {
  const auto range_of = [this](std::uint32_t n) {
    if (n == 1) return 0;
    return n == chunk_tokens_ ? 1 : 2;
  };
  batch_.clear();
  std::array<std::int32_t, 3> counts{};
  for (int range = 0; range < 3; ++range) {
    for (const internal::Pick& pick : picks_) {
      if (range_of(pick.num_tokens) == range) {
        batch_.push_back(pick);
        ++counts[static_cast<std::size_t>(range)];
      }
    }
  }
  scheduled_.clear();
  cu_q_lens_.clear();
  step_seqs_.clear();
  cu_q_lens_.push_back(0);
  plan_.num_tokens = 0;
  plan_.num_output_tokens = 0;
  plan_.num_prefill_tokens = 0;
  plan_.num_decode_tokens = 0;
  for (const internal::Pick& pick : batch_) {
    Request* request = pick.request;
    const std::uint32_t start = request->computed;
    const std::uint32_t kv_len = start + pick.num_tokens;
    const bool produces = kv_len == request->tokens.size();
    const bool is_decode =
        pick.num_tokens == 1 && produces && request->generated > 0;
    ScheduledRequest entry;
    entry.id = request->id;
    entry.range = static_cast<BatchRange>(range_of(pick.num_tokens));
    entry.num_tokens = pick.num_tokens;
    entry.row_offset = plan_.num_tokens;
    entry.start_position = start;
    entry.kv_len = kv_len;
    entry.tokens = std::span<const std::int32_t>(request->tokens)
                       .subspan(start, pick.num_tokens);
    entry.produces_token = produces;
    entry.finishes_request =
        produces && request->generated + 1 == request->max_new;
    entry.is_prefill = !is_decode;
    scheduled_.push_back(entry);
    request->in_step = true;
    request->pending_end = internal::PendingEnd::kNone;
    step_seqs_.push_back(request->seq);
    plan_.num_tokens += pick.num_tokens;
    cu_q_lens_.push_back(static_cast<std::int32_t>(plan_.num_tokens));
    if (produces) ++plan_.num_output_tokens;
    (is_decode ? plan_.num_decode_tokens : plan_.num_prefill_tokens) +=
        pick.num_tokens;
  }
  plan_.requests = scheduled_;
  plan_.kv_lens = {};
  plan_.page_indices = {};
  plan_.pages_per_sequence = 0;
  plan_.cu_q_lens = cu_q_lens_;
  plan_.distribution = {counts[0], counts[0] + counts[1],
                        counts[0] + counts[1] + counts[2]};

  if (!batch_.empty()) {
    // ExportBatch reuses the vectors' capacity but grows them to the exact
    // size: size them here for the longest admitted request (AddRequest
    // records it), so decode steps crossing into new pages never reallocate.
    std::uint32_t most_pages = 1;
    for (const internal::Pick& pick : batch_) {
      most_pages = std::max(most_pages,
                            DivideRoundUp(pick.request->reserved, page_size_));
    }
    const std::size_t entries = std::max(
        batch_.size() * std::size_t{most_pages}, table_entries_wanted_);
    if (page_table_.page_indices.capacity() < entries) {
      page_table_.page_indices.reserve(
          std::max(entries, 2 * page_table_.page_indices.capacity()));
    }
    const Status exported = cache_->ExportBatch(step_seqs_, 0, &page_table_);
    RPA_CHECK_MSG(exported.ok(), exported.ToString().c_str());
    // A sequence may hold more than this step's tokens (pages reserved by a
    // discarded step): the kernels see exactly computed + new.
    for (std::size_t i = 0; i < scheduled_.size(); ++i) {
      page_table_.kv_lens[i] = static_cast<std::int32_t>(scheduled_[i].kv_len);
    }
    plan_.kv_lens = page_table_.kv_lens;
    plan_.page_indices = page_table_.page_indices;
    plan_.pages_per_sequence = page_table_.pages_per_sequence;
    const ModelShape& model = options_.model;
    const attention::BatchMetadata metadata{
        .shape = {.num_tokens = plan_.num_tokens,
                  .num_q_heads = model.num_q_heads,
                  .num_kv_heads = model.num_kv_heads,
                  .head_dim = model.head_dim},
        .kv_lens = page_table_.kv_lens,
        .page_indices = page_table_.page_indices,
        .cu_q_lens = cu_q_lens_,
        .distribution = plan_.distribution};
    // The selector picks each range's kernel and block sizes for this
    // batch's shape on this target (it does not allocate).
    const Selection selection = selector_->Select(metadata, cache_->Layer(0),
                                                  plan_options_.parallelism);
    const attention::PlanOptions& step_options = selection.plan_options;
    device_run_options_ = selection.device_options;
    for (std::size_t set = 0; set < param_sets_.size(); ++set) {
      // Re-plan into the previous step's plan: its vectors keep their
      // capacity, so a warmed-up step does not allocate here.
      Status planned = OkStatus();
      if (plans_[set].has_value()) {
        planned = plans_[set]->Update(metadata, cache_->Layer(0),
                                      param_sets_[set], step_options);
      } else {
        StatusOr<attention::AttentionPlan> plan =
            attention::AttentionPlan::Create(metadata, cache_->Layer(0),
                                             param_sets_[set], step_options);
        if (plan.ok()) {
          plans_[set] = std::move(*plan);
        } else {
          planned = plan.status();
        }
      }
      if (!planned.ok()) {
        for (const internal::Pick& pick : batch_) pick.request->in_step = false;
        return planned;
      }
      // The plan keeps room for the tables the engine has room for, so that
      // the next steps' Update does not grow its copies as the KV grows.
      plans_[set]->Reserve(page_table_.kv_lens.capacity(),
                           page_table_.page_indices.capacity());
    }
  }
  std::fill(attended_.begin(), attended_.end(), 0);
  num_attended_ = 0;
  plan_.step_index = next_step_index_++;
  return OkStatus();
}

}  // namespace rpa::scheduler
