#pragma once

// Engine: the serving engine a C++ service links. It owns the paged KV cache
// of one model and decides, step after step, which requests run and how many
// of their tokens; the service runs the model (projections, MLP, sampling)
// and hands the engine each layer's q / k / v rows; the engine does the fused
// KV-cache write and the ragged paged attention (attention/) for them.
//
// One step:
//   const StepPlan* plan = *engine->Plan();   // which requests, which tokens
//   for (layer = 0; layer < num_layers; ++layer) {
//     ... service computes q, k, v rows for plan->num_tokens tokens ...
//     engine->Attend(layer, q, k, v, out);    // cache write + attention
//     ... service continues the layer with out ...
//   }
//   engine->Commit(sampled);                  // one token per producing
//                                             // request, in plan order
//
// Scheduling (in the spirit of vLLM's v1 scheduler; scheduler/README.md,
// "The engine"): each step has a token budget (max_tokens_per_step) and a
// request budget (max_requests_per_step). Running requests are served first
// (those decoding: one token each; those still in their prompt: the next
// chunk), then waiting requests in priority order (smaller `priority` first,
// then arrival), as long as budget and KV pages last. A prompt is split into
// chunks of at most chunk_prefill_tokens (chunked prefill), so a long prompt
// never holds the decode requests back for more than one chunk per step.
// The step's batch is ordered [decode | prefill | mixed] (SPEC section 1):
// q_len 1 first, then chunks of exactly chunk_prefill_tokens, then the rest,
// so each range runs its specialised kernel (SPEC section 6).
//
// Prefix caching (enable_prefix_caching): every full KV page is keyed by a
// 64-bit hash chain over all token ids up to and including it. A new request
// (or one resumed after recompute) reuses the cached pages of its longest
// cached prefix: reference counted, shared read-only; if the whole prompt is
// cached, its last token is computed again, and the partially reused last
// page is copied on write. Unreferenced cached pages are evicted least
// recently used, only when the allocator needs room. A hash hit is confirmed
// by comparing the page's stored token ids, so a hash collision is a miss,
// never wrong KV.
//
// Preemption: when a step cannot get the pages it needs, the running request
// with the lowest priority (largest `priority`, then latest arrival) is
// preempted:
//   - kSwap: its KV pages (every layer) are written to the engine's swap file
//     through the runtime's io_uring file I/O, as tasks on the executor that
//     overlap the step's attention; its pages are released when the writes
//     have completed (at the next Plan). When it resumes, fresh pages are
//     allocated and read back (again overlapped with a step), and it continues
//     with bit-identical KV.
//   - kRecompute: its pages are released at once; when it resumes, its prompt
//     and the tokens it generated so far are prefilled again (through the
//     prefix cache when the pages are still there).
// Nothing is lost: a preempted request keeps every token it had.
//
// Targets: "host" runs the attention kernels on this CPU (on the executor's
// workers). A device preset ("v5e", "v6e", "tpu7x") or the path of a device
// JSON file (device/device_spec.h) runs them on the simulated TPU
// (attention::RunOnDevice): the same numerics, plus simulated time, bytes and
// FLOPs accumulated into EngineStats (simulated step time, MBU, MFU).
//
// Errors: every call validates first and mutates after. A bad request id is
// NotFound; a duplicate id, a wrong tensor size, a bad layer, a bad token id
// InvalidArgument; a call out of order (Attend or Commit with no planned
// step, Plan while a step is planned, Commit before every layer was attended)
// FailedPrecondition. Each names the field and the value; none changes
// anything. Only swap I/O can fail after the fact (see Plan()). No exception
// crosses the API (allocation failure inside a call is reported as
// ResourceExhausted).
//
// Thread-safety: an Engine is not thread-safe: calls on one Engine must be
// serialized by the caller (one service thread, or a mutex); they may come
// from different threads over time. Stats() and the const accessors may run
// concurrently with each other but not with a mutating call. Several engines
// in one process are independent (no global state); each has its own KV
// cache, swap file and (unless one is shared through EngineOptions::executor)
// its own executor.
// Memory ordering: everything a call did is visible to the next call on the
// same engine from any thread, provided the caller serializes the calls
// (a mutex or a join gives the needed happens-before).
//
// Example:
//   rpa::scheduler::EngineOptions options;
//   options.model.num_layers = 32;
//   options.model.num_q_heads = 32;
//   options.model.num_kv_heads = 8;
//   options.model.head_dim = 128;
//   options.model.storage = rpa::memory::StorageType::kBf16;
//   options.kv_budget_bytes = 8ULL << 30;
//   options.max_tokens_per_step = 512;
//   RPA_ASSIGN_OR_RETURN(auto engine, rpa::scheduler::Engine::Create(options));
//   RPA_RETURN_IF_ERROR(engine->AddRequest(42, prompt_token_ids, 128));
//   while (engine->HasWork()) {
//     RPA_ASSIGN_OR_RETURN(const rpa::scheduler::StepPlan* plan,
//                          engine->Plan());
//     for (std::uint32_t l = 0; l < 32; ++l) {
//       FillQkv(*plan, l, q, k, v);  // rows in plan order
//       RPA_RETURN_IF_ERROR(engine->Attend(l, q, k, v, out));
//     }
//     // One sampled token per request with produces_token, in plan order.
//     Sample(*plan, sampled);
//     RPA_RETURN_IF_ERROR(engine->Commit(sampled));
//   }

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "rpa/memory/storage_type.h"
#include "rpa/runtime/status.h"

namespace rpa::runtime {
class Executor;
}

namespace rpa::scheduler {

// Chosen by the service; unique among the engine's live requests (a finished
// or aborted id may be used again).
using RequestId = std::uint64_t;

// The attention part of the model.
struct ModelShape {
  std::uint32_t num_layers = 0;    // >= 1
  std::uint32_t num_q_heads = 0;   // Hq, a multiple of Hkv
  std::uint32_t num_kv_heads = 0;  // Hkv, >= 1
  std::uint32_t head_dim = 0;      // D, >= 1
  // Per layer: empty = no sliding window in any layer; otherwise exactly
  // num_layers entries, each none or > 0 tokens.
  std::vector<std::optional<std::int32_t>> sliding_window_tokens;
  std::optional<float> soft_cap;  // none or != 0, finite
  std::optional<float> sm_scale;  // none: 1 / sqrt(head_dim); finite
  memory::StorageType storage = memory::StorageType::kBf16;
};

enum class PreemptionMode : std::uint8_t { kSwap, kRecompute };

// Testing hook for swap I/O: called before every swap read or write with the
// engine-wide I/O index (0, 1, 2, ... in issue order) and whether it is a
// write; returning true makes that operation fail as if the file I/O had
// returned EIO. Called on the executor's workers, one call at a time.
using SwapFaultInjector =
    std::function<bool(std::uint64_t io_index, bool is_write)>;

struct EngineOptions {
  ModelShape model;

  // KV budget: exactly one of num_pages and kv_budget_bytes is non-zero.
  // kv_budget_bytes covers every layer: num_pages = kv_budget_bytes /
  // (num_layers * page_size_tokens * 2 * Hkv * D * element bytes).
  std::uint32_t num_pages = 0;
  std::uint64_t kv_budget_bytes = 0;
  std::uint32_t page_size_tokens = 16;  // >= 1

  // "host", a device preset name ("v5e", "v6e", "tpu7x") or the path of a
  // device JSON file (device/device_spec.h's ResolveDeviceSpec: a target with a
  // '/' or ending in ".json" is a path).
  std::string target = "host";

  // Token budget per step: the sum of the scheduled tokens (T) never exceeds
  // it. >= 1.
  std::uint32_t max_tokens_per_step = 512;
  // Requests per step (S). >= 1.
  std::uint32_t max_requests_per_step = 256;
  // Chunked prefill: a request gets at most this many prompt tokens per step.
  // 0 = max_tokens_per_step. Chunks of exactly this size run in the prefill
  // range (the prefill kernel); shorter ones (a prompt's last chunk, a chunk
  // cut by the budget) in the mixed range.
  std::uint32_t chunk_prefill_tokens = 0;
  // Live requests (waiting + running + preempted) at most; AddRequest past it
  // is ResourceExhausted. >= 1.
  std::uint32_t max_requests = 4096;

  bool enable_prefix_caching = true;

  PreemptionMode preemption_mode = PreemptionMode::kSwap;
  // Where the swap file is created (O_TMPFILE, or unlinked right after open:
  // it never outlives the engine). Empty:
  // std::filesystem::temp_directory_path(). The file is created lazily, at the
  // first swap-out.
  std::filesystem::path swap_directory;
  // Swap file size limit; 0 = no limit. When a swap-out would pass it, the
  // request is recomputed instead.
  std::uint64_t max_swap_bytes = 0;

  // The executor that runs the kernels' work items and the swap I/O tasks
  // (borrowed; must outlive the engine; io_uring or kThreads backend, real
  // clock, num_workers >= 1). Null: the engine creates its own with
  // num_workers workers.
  runtime::Executor* executor = nullptr;
  int num_workers = 2;  // >= 1; only when executor is null

  // Testing only (see SwapFaultInjector). Empty: no faults.
  SwapFaultInjector swap_fault_injector;
};

// Per-request options beyond the three essentials.
struct RequestOptions {
  // Smaller is more important: scheduled first among waiting requests,
  // preempted last. Ties go by arrival (earlier first).
  std::int32_t priority = 0;
};

// Which range of the step's batch (SPEC section 1 distribution) a request is
// in; the range selects the kernel (SPEC section 6).
enum class BatchRange : std::uint8_t { kDecode, kPrefill, kMixed };

// One request's share of a step.
struct ScheduledRequest {
  RequestId id = 0;
  BatchRange range = BatchRange::kMixed;
  // q_len: this step's new tokens, >= 1. Their q / k / v rows are
  // [row_offset, row_offset + num_tokens) of every Attend tensor.
  std::uint32_t num_tokens = 0;
  std::uint32_t row_offset = 0;  // = cu_q_lens[i]
  // Absolute position (in the request's token sequence, prompt first) of the
  // first new token; new token j sits at start_position + j.
  std::uint32_t start_position = 0;
  // KV length after this step's tokens: start_position + num_tokens.
  std::uint32_t kv_len = 0;
  // The token ids at positions [start_position, start_position +
  // num_tokens): prompt tokens, then generated ones (the ids the service
  // committed). A view into the engine, valid until the next mutating call.
  std::span<const std::int32_t> tokens;
  // True when these tokens reach the end of the request's known tokens, so
  // the output row of the last one yields the next token: Commit expects a
  // token for it. False for a prompt chunk that does not finish the prompt.
  bool produces_token = false;
  // True when the token committed this step is the request's last
  // (max_new_tokens reached): after Commit the engine finishes the request
  // itself (its id is free again; Finish on it is NotFound).
  bool finishes_request = false;
  // True while the request is still processing its prompt (or re-processing
  // prompt + generated tokens after a recompute preemption).
  bool is_prefill = false;
};

// The next step, as Plan() returns it. A view into the engine, valid until
// Commit() or DiscardStep(); every span refers to engine-owned storage.
struct StepPlan {
  std::uint64_t step_index = 0;  // 0, 1, 2, ... per engine
  // In batch order: [decode | prefill | mixed] (S entries).
  std::span<const ScheduledRequest> requests;
  // SPEC section 1 metadata of the step (what every Attend uses):
  std::span<const std::int32_t> cu_q_lens;     // [S + 1]
  std::array<std::int32_t, 3> distribution{};  // (d0, d1, d2), d2 = S
  // The page table the step's kernels use (SPEC section 1), for inspection:
  std::span<const std::int32_t> kv_lens;       // [S], kv_len per entry
  std::span<const std::int32_t> page_indices;  // [S * pages_per_sequence]
  std::uint32_t pages_per_sequence = 0;
  std::uint32_t num_tokens = 0;          // T = cu_q_lens[S]
  std::uint32_t num_output_tokens = 0;   // Commit's expected token count
  std::uint32_t num_prefill_tokens = 0;  // tokens with is_prefill
  std::uint32_t num_decode_tokens = 0;   // the others
  // Requests whose swapped-out KV is being read back during this step (they
  // join a later step) and requests preempted while planning it.
  std::uint32_t num_swapping_in = 0;
  std::uint32_t num_preempted = 0;

  bool empty() const { return requests.empty(); }
};

enum class RequestState : std::uint8_t {
  kWaiting,     // not started, or preempted by recompute
  kRunning,     // has KV pages; scheduled when budget allows
  kSwappedOut,  // preempted by swap; KV in the swap file (or being written)
  kSwappingIn,  // KV being read back; runs from the next step
};

struct RequestInfo {
  RequestState state = RequestState::kWaiting;
  std::uint32_t prompt_tokens = 0;
  std::uint32_t generated_tokens = 0;  // committed so far
  std::uint32_t max_new_tokens = 0;
  std::uint32_t computed_tokens = 0;    // tokens whose KV is in the cache
  std::uint32_t prefix_hit_tokens = 0;  // reused from the prefix cache (last
                                        // admission)
  std::uint32_t num_preemptions = 0;
  std::int32_t priority = 0;
};

// Counters since Create (cumulative unless stated).
struct EngineStats {
  std::uint64_t steps = 0;           // committed non-empty steps
  std::uint64_t prefill_tokens = 0;  // scheduled tokens with is_prefill
  std::uint64_t decode_tokens = 0;
  std::uint64_t generated_tokens = 0;   // tokens committed
  std::uint64_t finished_requests = 0;  // Finish or max_new_tokens
  std::uint64_t aborted_requests = 0;

  // Prefix cache. A lookup is one admission of a request (a new one, or one
  // resumed after recompute); it hits if it reuses at least one page.
  std::uint64_t prefix_lookups = 0;
  std::uint64_t prefix_hits = 0;
  std::uint64_t prefix_query_tokens = 0;  // prompt tokens looked up
  std::uint64_t prefix_hit_tokens = 0;    // of those, reused from the cache
  double prefix_hit_rate = 0;             // hit_tokens / query_tokens
  std::uint64_t prefix_evictions = 0;     // cached pages evicted (LRU)

  // Preemption and swap.
  std::uint64_t preemptions_swap = 0;
  std::uint64_t preemptions_recompute = 0;  // includes swap fallbacks
  std::uint64_t swap_out_bytes = 0;
  std::uint64_t swap_in_bytes = 0;
  std::uint64_t swap_io_errors = 0;  // failed swap reads / writes

  // Pages now (KvCache view).
  std::uint32_t num_pages = 0;
  std::uint32_t used_pages = 0;       // referenced by a request or the cache
  std::uint32_t cached_pages = 0;     // held by the prefix cache
  std::uint32_t evictable_pages = 0;  // cached and used by no request
  std::uint32_t free_pages = 0;
  std::uint32_t high_water_pages = 0;

  // Requests now.
  std::uint32_t waiting_requests = 0;
  std::uint32_t running_requests = 0;
  std::uint32_t swapped_requests = 0;  // kSwappedOut + kSwappingIn

  // Kernel calls: one per layer per non-empty range of a step, by the kernel
  // that served it (index: BatchRange, i.e. decode, prefill, mixed).
  std::array<std::uint64_t, 3> kernel_calls{};
  // Wall time (host clock) inside the engine's calls, and the part of
  // Attend spent in the attention kernels (attention::Run or RunOnDevice);
  // engine overhead = plan_ns + commit_ns + attend_ns - kernel_ns.
  std::uint64_t plan_ns = 0;
  std::uint64_t attend_ns = 0;
  std::uint64_t commit_ns = 0;
  std::uint64_t kernel_ns = 0;

  // Simulated target only (zero on "host").
  bool simulated = false;
  double simulated_us = 0;  // sum of every Attend's simulated makespan
  double last_step_simulated_us = 0;  // the last committed step's
  double simulated_bytes = 0;         // SPEC section 7 bytes
  double simulated_flops = 0;         // SPEC section 7 FLOPs
  double mbu = 0;  // simulated_bytes / simulated time / HBM bandwidth
  double mfu = 0;  // simulated_flops / simulated time / matrix peak
};

class Engine {
 public:
  // Validates the options (InvalidArgument naming the field and the value:
  // zero sizes, Hq not a multiple of Hkv, a sliding window list of the wrong
  // length or with a value <= 0, soft_cap 0, both or neither KV budget, a
  // budget smaller than one page, an unknown target (NotFound from the
  // preset lookup), a borrowed executor with no workers or a virtual clock)
  // and creates the KV cache (ResourceExhausted / Unavailable from memory/)
  // and, unless borrowed, the executor.
  static StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);

  // Waits for swap I/O in flight, then releases everything (pages, swap file,
  // own executor). Requests still live are dropped.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. prompt_tokens: >= 1 token ids, each >= 0; copied.
  // max_new_tokens >= 1. InvalidArgument for a live duplicate id, an empty
  // prompt, a negative token id, max_new_tokens 0, or prompt + max_new_tokens
  // beyond what the KV budget could ever hold; ResourceExhausted at
  // max_requests. May be called while a step is planned (the request joins a
  // later step).
  Status AddRequest(RequestId id, std::span<const std::int32_t> prompt_tokens,
                    std::uint32_t max_new_tokens,
                    const RequestOptions& options = {});

  // Plans the next step (see the file comment for the policy). The returned
  // plan stays valid until Commit() or DiscardStep(). With nothing runnable it
  // returns an empty plan (Commit({}) ends it; Attend is optional).
  // Also reaps swap I/O that completed since the last call: if a swap write or
  // read failed, the affected request is kept (it falls back to recompute: it
  // will prefill its tokens again) and Plan returns that I/O error (its code:
  // Internal for EIO, ResourceExhausted for ENOSPC; the message names the
  // request) without planning; calling Plan again continues.
  // FailedPrecondition if a step is already planned.
  StatusOr<const StepPlan*> Plan();

  // The fused cache write + attention of `layer` for the planned step.
  //   q:   [T, Hq, D] f32 rows in plan order (request i's tokens are rows
  //        [requests[i].row_offset, + num_tokens), in position order)
  //   k,v: [T, Hkv, D] f32, same row order, in the stored domain (SPEC 1);
  //        written into the cache converted to the storage type (RNE)
  //   out: [T, Hq, D] f32, written
  // T = plan->num_tokens. Each layer exactly once per step, in any order.
  // Errors, before anything is written: FailedPrecondition (no planned step,
  // layer already attended this step), InvalidArgument (layer >= num_layers,
  // a span of the wrong size naming it and the expected size), and the
  // kernel's own errors (Unavailable for a CPU without the kernels' ISA).
  // Blocks the calling thread (or suspends the calling fiber) until done;
  // waits first for this step's swap I/O that touches the layer's pages.
  Status Attend(std::uint32_t layer, std::span<const float> q,
                std::span<const float> k, std::span<const float> v,
                std::span<float> out);

  // Ends the planned step: every layer must have been attended (unless the
  // plan is empty). sampled_tokens: one token id (>= 0) per request with
  // produces_token, in plan order (plan->num_output_tokens entries). The
  // scheduled tokens become computed; each sampled token is appended to its
  // request; full pages enter the prefix cache; requests reaching
  // max_new_tokens are finished; Finish / Abort calls made during the step
  // take effect. Errors (nothing changes): FailedPrecondition (no planned
  // step, a layer not attended), InvalidArgument (wrong count, a negative
  // token naming its index).
  Status Commit(std::span<const std::int32_t> sampled_tokens);

  // Drops the planned step without committing it (the service's model failed
  // mid-step): no token advances; the cache slots the step wrote will be
  // written again when the tokens are rescheduled. FailedPrecondition with no
  // planned step.
  Status DiscardStep();

  // Ends a request normally (end-of-sequence or stop condition seen by the
  // service) / cancels it. Allowed in every state; the pages go back (full
  // ones stay in the prefix cache), swap space is released. If the request
  // is in the planned step, it takes effect at Commit (its sampled token is
  // still expected there and is dropped) or DiscardStep. If a swap read or
  // write of the request is in flight, the call first waits for it (its
  // pages are in use until then). NotFound for an id that names no live
  // request.
  Status Finish(RequestId id);
  Status Abort(RequestId id);

  // NotFound for an id that names no live request.
  StatusOr<RequestInfo> GetRequest(RequestId id) const;
  // The request's tokens so far (prompt + generated), valid until the next
  // mutating call.
  StatusOr<std::span<const std::int32_t>> RequestTokens(RequestId id) const;

  // Copies the K/V the cache holds for the request's computed tokens in
  // `layer`: computed_tokens rows of [2 * Hkv, D] elements of the storage
  // type (combined head 2h = K, 2h + 1 = V of kv head h, SPEC section 1), so
  // out.size() must be computed_tokens * 2 * Hkv * D * element bytes. For
  // tests and debugging (e.g. bit-equality of KV after a swap).
  // NotFound for a bad id; FailedPrecondition if its KV is not in the cache
  // right now (waiting, swapped out, swapping in); InvalidArgument for a bad
  // layer or size.
  Status ReadRequestKv(RequestId id, std::uint32_t layer,
                       std::span<std::byte> out) const;

  // Checks the engine's internal invariants: every page's reference count
  // equals the page tables holding it plus the prefix cache's reference; the
  // pages the planned step writes belong to one request only; requests'
  // states and queues agree; the evictable count matches. Internal naming
  // the first broken one. O(pages + requests): for tests, fuzzers and
  // debugging, not for the serving loop.
  Status CheckInvariants() const;

  // True while any request is live (waiting, running or preempted).
  bool HasWork() const;
  bool step_planned() const;
  std::uint32_t num_pages() const;
  const EngineOptions& options() const;

  EngineStats Stats() const;

 private:
  class Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace rpa::scheduler

namespace rpa {
// The name for it.
using Engine = scheduler::Engine;
}  // namespace rpa
