// Invariant fuzzer of the serving engine (scheduler/include/rpa/scheduler/
// engine.h). Each input is decoded into an engine configuration (pages, page
// size, budgets, chunk size, prefix caching, swap or recompute, injected swap
// I/O faults, storage type) and up to 256 operations: add requests (prompts
// over a 3-token alphabet, so prefixes repeat), full steps through the test
// driver, Finish / Abort of live and unknown ids, DiscardStep, and misuse.
// Checked after every operation:
//   - Engine::CheckInvariants (reference counts = page tables + prefix cache,
//     pages a step writes owned by one request, states and queues agree);
//   - the driver's plan checks (token / request budgets, cu_q_lens,
//     distribution ranges, tokens, output count) and KV immutability
//     (computed KV never changes, across swap and recompute);
//   - misuse returns the documented error code and changes nothing;
// and at the end that every request finishes (no livelock) and every page
// comes back (only evictable prefix-cache pages remain).
// Seeds: fuzz/corpus/engine/. Reproduce with RPA_FUZZ_TRACE=1 to print ops.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "byte_reader.h"
#include "scheduler/engine_test_util.h"

#include "rpa/scheduler/engine.h"

namespace {

using rpa::Status;
using rpa::StatusCode;
using rpa::scheduler::Engine;
using rpa::scheduler::EngineOptions;
using rpa::scheduler::RequestId;
using rpa::scheduler::testing_util::Driver;
using rpa::scheduler::testing_util::RunResult;

bool Trace() {
  static const bool trace = std::getenv("RPA_FUZZ_TRACE") != nullptr;
  return trace;
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "engine_fuzz: invariant violated: %s\n", what.c_str());
  std::abort();
}

void Require(bool condition, const std::string& what) {
  if (!condition) Die(what);
}

void RequireOk(const Status& status, const char* what) {
  if (!status.ok()) Die(std::string(what) + ": " + status.ToString());
}

using ::rpa::fuzz::ByteReader;

struct FaultPlan {
  std::uint32_t kind = 0;  // 0 none, 1 every k-th I/O, 2 all writes, 3 reads
  std::uint32_t period = 1;
};

EngineOptions DecodeOptions(ByteReader& in, FaultPlan* faults) {
  EngineOptions options = rpa::scheduler::testing_util::TinyOptions();
  options.model.num_layers = 1 + in.Below(2);
  options.model.num_q_heads = 2;
  options.model.num_kv_heads = 1;
  options.model.head_dim = 8;
  options.model.storage = static_cast<rpa::memory::StorageType>(in.Below(3));
  options.page_size_tokens = 1 + in.Below(8);
  options.num_pages = 4 + in.Below(40);
  options.max_tokens_per_step = 1 + in.Below(24);
  const std::uint32_t chunk = in.Below(options.max_tokens_per_step + 1);
  options.chunk_prefill_tokens = chunk;
  options.max_requests_per_step = 1 + in.Below(8);
  const std::uint32_t flags = in.U8();
  options.enable_prefix_caching = (flags & 1) != 0;
  options.preemption_mode = (flags & 2) != 0
                                ? rpa::scheduler::PreemptionMode::kSwap
                                : rpa::scheduler::PreemptionMode::kRecompute;
  if ((flags & 4) != 0) {
    options.model.sliding_window_tokens.assign(options.model.num_layers, 5);
  }
  options.max_requests = 16;
  options.num_workers = 1;
  faults->kind = (flags >> 3) % 4;
  faults->period = 1 + (flags >> 5);
  return options;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  ByteReader in(data, size);
  FaultPlan faults;
  EngineOptions options = DecodeOptions(in, &faults);
  if (faults.kind != 0) {
    options.swap_fault_injector = [faults](std::uint64_t index, bool write) {
      switch (faults.kind) {
        case 1:
          return index % faults.period == 0;
        case 2:
          return write;
        default:
          return !write && index % faults.period == 0;
      }
    };
  }
  auto created = Engine::Create(options);
  RequireOk(created.status(), "Engine::Create");
  Engine& engine = **created;
  Driver driver(&engine);
  RunResult result;
  std::vector<RequestId> live;
  RequestId next_id = 1;
  const std::uint32_t ps = options.page_size_tokens;

  for (int op_index = 0; op_index < 256 && !in.empty(); ++op_index) {
    const std::uint32_t op = in.Below(9);
    if (Trace()) std::fprintf(stderr, "op %d: %u\n", op_index, op);
    switch (op) {
      case 0:
      case 1: {
        std::erase_if(live, [&](RequestId id) {
          return !engine.GetRequest(id).ok();  // finished by itself
        });
        const std::uint32_t length = 1 + in.Below(20);
        std::vector<std::int32_t> prompt(length);
        const std::uint32_t salt = in.U8();
        for (std::uint32_t i = 0; i < length; ++i) {
          prompt[i] = static_cast<std::int32_t>((salt >> (i % 8)) % 3);
        }
        const std::uint32_t max_new = 1 + in.Below(8);
        const auto priority = static_cast<std::int32_t>(in.Below(3)) - 1;
        const RequestId id = next_id++;
        const Status added =
            engine.AddRequest(id, prompt, max_new, {.priority = priority});
        const std::uint64_t pages = (length + max_new - 1 + ps - 1) / ps;
        if (pages > options.num_pages) {
          Require(added.code() == StatusCode::kInvalidArgument,
                  "an oversized request was not rejected: " + added.ToString());
        } else if (live.size() >= options.max_requests) {
          Require(added.code() == StatusCode::kResourceExhausted,
                  "max_requests not enforced");
        } else {
          RequireOk(added, "AddRequest");
          live.push_back(id);
          result.tokens[id] = prompt;
        }
        break;
      }
      case 2:
      case 3:
      case 4:
        if (!driver.Step(&result)) Die("step: " + result.failure);
        break;
      case 5:
      case 6: {
        // Finish / Abort a live request, or an unknown id.
        const std::uint32_t pick = in.U8();
        if (live.empty() || pick % 5 == 0) {
          const Status status =
              op == 5 ? engine.Abort(next_id + 7) : engine.Finish(0);
          Require(status.code() == StatusCode::kNotFound,
                  "an unknown id was not NotFound");
          break;
        }
        const std::size_t index = pick % live.size();
        if (!engine.GetRequest(live[index]).ok()) {
          live.erase(live.begin() + static_cast<std::ptrdiff_t>(index));
          break;  // it finished by itself meanwhile
        }
        RequireOk(
            op == 5 ? engine.Abort(live[index]) : engine.Finish(live[index]),
            "Finish / Abort of a live request");
        Require(!engine.GetRequest(live[index]).ok(), "ended request alive");
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(index));
        break;
      }
      case 7: {
        // Plan, maybe attend a layer with garbage, then discard.
        auto plan = engine.Plan();
        if (!plan.ok()) break;  // a swap I/O error (kept requests)
        if ((*plan)->num_tokens > 0 && in.Below(2) == 0) {
          const auto& model = options.model;
          std::vector<float> q(
              (*plan)->num_tokens * model.num_q_heads * model.head_dim, 1.0F);
          std::vector<float> kv(
              (*plan)->num_tokens * model.num_kv_heads * model.head_dim, -3.0F);
          std::vector<float> out(q.size());
          RequireOk(engine.Attend(0, q, kv, kv, out), "Attend");
        }
        RequireOk(engine.CheckInvariants(), "invariants in a planned step");
        RequireOk(engine.DiscardStep(), "DiscardStep");
        break;
      }
      default: {
        // Misuse outside a step: rejected, nothing changes.
        const rpa::scheduler::EngineStats before = engine.Stats();
        std::vector<float> none;
        Require(engine.Attend(0, none, none, none, none).code() ==
                    StatusCode::kFailedPrecondition,
                "Attend outside a step accepted");
        Require(engine.Commit({}).code() == StatusCode::kFailedPrecondition,
                "Commit outside a step accepted");
        const std::vector<std::int32_t> empty;
        Require(engine.AddRequest(next_id, empty, 1).code() ==
                    StatusCode::kInvalidArgument,
                "empty prompt accepted");
        const rpa::scheduler::EngineStats after = engine.Stats();
        Require(before.used_pages == after.used_pages &&
                    before.waiting_requests == after.waiting_requests &&
                    before.steps == after.steps,
                "a rejected call changed the engine");
        break;
      }
    }
    RequireOk(engine.CheckInvariants(), "invariants");
  }

  // Drain: everything must finish (no livelock) and every page come back.
  for (int step = 0; step < 4000 && engine.HasWork(); ++step) {
    if (!driver.Step(&result)) Die("drain step: " + result.failure);
  }
  Require(!engine.HasWork(), "requests never finished");
  const rpa::scheduler::EngineStats stats = engine.Stats();
  if (Trace()) {
    std::fprintf(stderr,
                 "steps %llu, prefix hits %llu, swap %llu, recompute %llu, "
                 "swap errors %llu, finished %llu, aborted %llu\n",
                 static_cast<unsigned long long>(stats.steps),
                 static_cast<unsigned long long>(stats.prefix_hits),
                 static_cast<unsigned long long>(stats.preemptions_swap),
                 static_cast<unsigned long long>(stats.preemptions_recompute),
                 static_cast<unsigned long long>(stats.swap_io_errors),
                 static_cast<unsigned long long>(stats.finished_requests),
                 static_cast<unsigned long long>(stats.aborted_requests));
  }
  Require(stats.used_pages == stats.cached_pages &&
              stats.evictable_pages == stats.cached_pages,
          "pages not returned: used " + std::to_string(stats.used_pages) +
              ", cached " + std::to_string(stats.cached_pages));
  return 0;
}
