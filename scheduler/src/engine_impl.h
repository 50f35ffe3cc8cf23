#pragma once

// Engine::Impl: the state of one engine and its private operations. The
// public calls (engine.cc) validate and then call into the scheduling
// (engine_plan.cc), step (engine_step.cc) and bookkeeping
// (engine_requests.cc) parts here.
// scheduler/README.md, "The engine", states the states and invariants.

#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "prefix_cache.h"
#include "swap_store.h"

#include "rpa/attention/device_run.h"
#include "rpa/attention/params.h"
#include "rpa/attention/plan.h"
#include "rpa/device/device_spec.h"
#include "rpa/memory/kv_cache.h"
#include "rpa/runtime/executor.h"
#include "rpa/runtime/int_math.h"
#include "rpa/scheduler/engine.h"
#include "rpa/scheduler/selector.h"

namespace rpa::scheduler {

namespace internal {

// A request's tokens (prompt + new) and a step's tokens stay below 2^31.
inline constexpr std::uint32_t kMaxTokens =
    std::numeric_limits<std::int32_t>::max();

// The time since `start` on the steady clock, for the stats' *_ns fields
// (engine.cc and engine_step.cc).
inline std::int64_t NanosSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now() - start)
      .count();
}

// The number of KV pages the options give (num_pages, or kv_budget_bytes
// over one page of every layer), or InvalidArgument naming the field and the
// value (engine_options.cc).
StatusOr<std::uint32_t> ValidateOptions(const EngineOptions& options);

enum class PendingEnd : std::uint8_t { kNone, kFinish, kAbort };

struct Request {
  RequestId id = 0;
  std::int32_t priority = 0;
  std::uint64_t arrival = 0;  // admission order tie-breaker
  // Prompt, then the committed tokens; capacity prompt + max_new_tokens, so
  // appending never allocates.
  std::vector<std::int32_t> tokens;
  std::uint32_t prompt_len = 0;
  std::uint32_t max_new = 0;
  std::uint32_t generated = 0;
  std::uint32_t computed = 0;  // tokens whose KV is in the cache
  RequestState state = RequestState::kWaiting;

  bool has_seq = false;  // running, or a swap job holds its pages
  memory::SequenceId seq{};
  std::uint32_t reserved = 0;  // the sequence's length in the KvCache

  // Prefix cache: the hash chain of full pages (computed lazily, a function
  // of the tokens only) and the cache entries representing pages [0,
  // page_refs.size()). Capacity: the most pages the request can have.
  std::vector<std::uint64_t> page_hashes;
  std::vector<CachedPageRef> page_refs;
  std::uint32_t prefix_hit_tokens = 0;
  std::uint32_t num_preemptions = 0;

  // Swap: the extent holding its KV while swapped out, the job in flight.
  SwapExtent swap;
  std::unique_ptr<SwapJob> io;

  // The planned step.
  bool in_step = false;
  PendingEnd pending_end = PendingEnd::kNone;
};

// One entry of the step while it is being scheduled.
struct Pick {
  Request* request = nullptr;
  std::uint32_t num_tokens = 0;
};

}  // namespace internal

class Engine::Impl {
 public:
  using Request = internal::Request;

  explicit Impl(const EngineOptions& options) : options_(options) {}
  ~Impl();

  // engine.cc
  Status Init(std::uint32_t num_pages);
  Status AddRequest(RequestId id, std::span<const std::int32_t> prompt,
                    std::uint32_t max_new_tokens, const RequestOptions& opts);
  Status End(RequestId id, internal::PendingEnd kind);
  StatusOr<RequestInfo> GetRequest(RequestId id) const;
  StatusOr<std::span<const std::int32_t>> RequestTokens(RequestId id) const;
  Status ReadRequestKv(RequestId id, std::uint32_t layer,
                       std::span<std::byte> out) const;
  EngineStats Stats() const;
  Status CheckInvariants() const;  // engine_check.cc

  // engine_plan.cc
  StatusOr<const StepPlan*> Plan();

  // engine_step.cc
  Status Attend(std::uint32_t layer, std::span<const float> q,
                std::span<const float> k, std::span<const float> v,
                std::span<float> out);
  Status Commit(std::span<const std::int32_t> sampled_tokens);
  Status DiscardStep();

  const EngineOptions& options() const { return options_; }
  void AddPlanTime(std::uint64_t ns) { stats_.plan_ns += ns; }
  bool planned() const { return planned_; }
  bool has_work() const { return !requests_.empty(); }
  std::uint32_t num_pages() const { return num_pages_; }

 private:
  // engine_plan.cc: scheduling.
  Status ReapIo();
  void Schedule();
  bool AdmitWaiting(Request* request, std::uint32_t budget);
  bool StartSwapIn(Request* request);
  bool EnsurePages(Request* request, std::uint32_t total_tokens);
  std::uint32_t PagesNeeded(const Request& request,
                            std::uint32_t total_tokens) const;
  bool MakeRoom(std::uint32_t pages);
  void Preempt(Request* victim);
  void PreemptByRecompute(Request* victim);
  Status BuildPlan();
  std::uint32_t NextChunk(const Request& request, std::uint32_t budget) const;

  // engine_requests.cc: bookkeeping shared by plan and commit.
  void FreeSeq(Request* request);
  void EnsureHashes(Request* request, std::uint32_t num_pages);
  void RegisterFullPages(Request* request);
  void Release(Request* request, internal::PendingEnd kind);
  void RemoveFrom(std::vector<Request*>& list, Request* request);
  Request* Find(RequestId id) const;
  void ResetForRecompute(Request* request);

  EngineOptions options_;
  std::uint32_t num_pages_ = 0;
  std::uint32_t page_size_ = 0;
  std::uint32_t chunk_tokens_ = 0;
  std::size_t token_bytes_ = 0;

  // Declaration order is destruction order reversed: the executor outlives
  // the swap store's tasks, the cache outlives everyone that holds pages.
  std::unique_ptr<runtime::Executor> own_executor_;
  runtime::Executor* executor_ = nullptr;
  std::unique_ptr<memory::KvCache> cache_;
  std::unique_ptr<internal::PrefixCache> prefix_;
  std::unique_ptr<internal::SwapStore> swap_;

  // Attention parameters: one set per distinct layer configuration.
  std::vector<attention::AttentionParams> param_sets_;
  std::vector<std::uint32_t> layer_param_set_;  // [num_layers]
  attention::PlanOptions plan_options_;
  // Kernel and block sizes per range, chosen every step from the batch's
  // shape (selector.h); the device options feed RunOnDevice.
  std::optional<KernelSelector> selector_;
  attention::DeviceRunOptions device_run_options_;
  // A simulated target (EngineOptions::target); none: the host.
  std::optional<device::DeviceSpec> device_spec_;
  double step_simulated_us_ = 0;

  // Requests.
  std::unordered_map<RequestId, std::unique_ptr<Request>> requests_;
  std::vector<Request*> running_;     // has KV pages
  std::vector<Request*> waiting_;     // kWaiting and kSwappedOut
  std::vector<Request*> io_pending_;  // a swap job in flight
  std::uint64_t next_arrival_ = 0;

  // The step.
  bool planned_ = false;
  std::uint64_t next_step_index_ = 0;
  StepPlan plan_;
  std::vector<internal::Pick> picks_;  // scheduling order
  std::vector<internal::Pick> batch_;  // batch order
  std::vector<ScheduledRequest> scheduled_;
  std::vector<std::int32_t> cu_q_lens_;
  std::vector<memory::SequenceId> step_seqs_;
  memory::BatchPageTable page_table_;
  std::size_t table_entries_wanted_ = 0;  // page_indices capacity to have
  std::vector<std::optional<attention::AttentionPlan>> plans_;
  std::vector<std::uint8_t> attended_;  // [num_layers]
  std::uint32_t num_attended_ = 0;
  bool preempted_this_step_ = false;
  bool stop_running_ = false;

  // Scratch (capacity num_pages): never reallocated in a step.
  std::vector<memory::PageId> page_scratch_;
  std::vector<internal::CachedPageRef> ref_scratch_;

  EngineStats stats_;
};

}  // namespace rpa::scheduler
