// The embedding example: a small service that links the installed rpa
// (find_package(rpa)) and serves requests submitted from several threads of
// its own.
//
// How it follows the Engine's thread-safety contract (rpa/scheduler/engine.h:
// "calls on one Engine must be serialized by the caller (one service thread,
// or a mutex)"): every engine call, from any thread, is made under one
// mutex. Four client threads submit requests (AddRequest) at their own pace
// and wait for their answers (futures); one loop thread steps the engine (Plan,
// then per layer Attend, then Commit), taking the mutex for each call, so
// clients get in between the layers of a step (AddRequest is allowed while a
// step is planned; the request joins a later step). The model is rpa's
// SyntheticModel (fixed pseudo-random q / k / v per layer, greedy decoding),
// standing in for the service's real one.
//
// It checks, and exits non-zero otherwise:
//   - every request completes with exactly the tokens greedy decoding of the
//     model gives (each client recomputes them on its own);
//   - the last output row of every request matches the model's double-
//     precision reference (so KV survived prefix sharing and preemption);
//   - shared system prompts hit the prefix cache (the KV budget is also small
//     on purpose, so requests usually get preempted and swapped: the count is
//     printed, and the two checks above cover those requests too);
//   - the host's malloc is still its own (rpa does not replace it).

#include <dlfcn.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "rpa/scheduler/engine.h"
#include "rpa/scheduler/synthetic_model.h"

namespace {

using rpa::scheduler::Engine;
using rpa::scheduler::RequestId;
using rpa::scheduler::SyntheticModel;

constexpr int kClients = 4;
constexpr int kRequestsPerClient = 8;
constexpr std::uint32_t kLayers = 2;

void Die(const std::string& what) {
  std::fprintf(stderr, "consumer: %s\n", what.c_str());
  std::exit(1);
}

void Check(const rpa::Status& status, const char* call) {
  if (!status.ok()) Die(std::string(call) + ": " + status.ToString());
}

// The service: one engine behind a mutex, a loop thread, and a completion
// slot per request that client threads wait on.
class Service {
 public:
  Service(std::unique_ptr<Engine> engine, const SyntheticModel& model)
      : engine_(std::move(engine)), model_(model) {
    loop_ = std::thread([this] { Loop(); });
  }
  ~Service() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    work_.notify_all();
    loop_.join();
  }

  // Called from client threads: queues the request; the future yields its
  // generated tokens when the engine has finished it.
  std::future<std::vector<std::int32_t>> Submit(
      RequestId id, const std::vector<std::int32_t>& prompt,
      std::uint32_t max_new_tokens) {
    std::lock_guard<std::mutex> lock(mu_);
    Check(engine_->AddRequest(id, prompt, max_new_tokens), "AddRequest");
    std::future<std::vector<std::int32_t>> answer = pending_[id].get_future();
    work_.notify_all();
    return answer;
  }

  double max_error() const { return max_error_; }
  rpa::scheduler::EngineStats Stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return engine_->Stats();
  }

 private:
  struct Live {
    std::vector<std::uint64_t> contexts;  // per known position
    std::vector<std::int32_t> generated;
  };

  void Loop() {
    const std::uint32_t qf = model_.q_row_floats();
    const std::uint32_t kf = model_.kv_row_floats();
    std::vector<float> q, k, v, out;
    std::vector<std::uint64_t> row_contexts;
    std::vector<rpa::scheduler::ScheduledRequest> scheduled;
    std::vector<std::int32_t> sampled;
    for (;;) {
      std::unique_lock<std::mutex> lock(mu_);
      work_.wait(lock, [&] { return stopping_ || engine_->HasWork(); });
      if (stopping_ && !engine_->HasWork()) return;
      auto planned = engine_->Plan();
      if (!planned.ok()) Die("Plan: " + planned.status().ToString());
      const rpa::scheduler::StepPlan& plan = **planned;
      // Copy what the step needs while the mutex is held: the plan's spans
      // are views into the engine.
      scheduled.assign(plan.requests.begin(), plan.requests.end());
      row_contexts.resize(plan.num_tokens);
      for (const auto& sr : scheduled) {
        Live& l = live_[sr.id];
        if (l.contexts.empty()) {
          // First sight: the contexts of every token the request has.
          auto tokens = engine_->RequestTokens(sr.id);
          if (!tokens.ok()) Die("RequestTokens: " + tokens.status().ToString());
          std::uint64_t context = SyntheticModel::kEmptyContext;
          for (std::int32_t t : *tokens) {
            context = SyntheticModel::Extend(context, t);
            l.contexts.push_back(context);
          }
        }
        for (std::uint32_t j = 0; j < sr.num_tokens; ++j) {
          row_contexts[sr.row_offset + j] =
              l.contexts.at(sr.start_position + j);
        }
      }
      const std::uint32_t rows = plan.num_tokens;
      lock.unlock();
      if (scheduled.empty()) {
        lock.lock();
        Check(engine_->Commit({}), "Commit");
        lock.unlock();
        std::this_thread::sleep_for(std::chrono::microseconds(50));
        continue;
      }

      q.assign(static_cast<std::size_t>(rows) * qf, 0);
      k.assign(static_cast<std::size_t>(rows) * kf, 0);
      v.assign(k.size(), 0);
      out.assign(q.size(), 0);
      for (std::uint32_t layer = 0; layer < kLayers; ++layer) {
        for (std::uint32_t r = 0; r < rows; ++r) {
          model_.FillToken(layer, row_contexts[r],
                           std::span<float>(q).subspan(r * qf, qf),
                           std::span<float>(k).subspan(r * kf, kf),
                           std::span<float>(v).subspan(r * kf, kf));
        }
        lock.lock();  // clients may add requests between layers
        Check(engine_->Attend(layer, q, k, v, out), "Attend");
        lock.unlock();
      }

      // Check every finishing request's last row against the reference.
      sampled.clear();
      for (const auto& sr : scheduled) {
        if (!sr.produces_token) continue;
        const Live& l = live_[sr.id];
        sampled.push_back(model_.NextToken(l.contexts[sr.kv_len - 1]));
        if (sr.finishes_request) {
          const std::uint32_t row = sr.row_offset + sr.num_tokens - 1;
          auto check = model_.Reference(
              kLayers - 1,
              std::span<const std::uint64_t>(l.contexts).first(sr.kv_len),
              rpa::memory::StorageType::kBf16,
              std::span<const float>(out).subspan(row * qf, qf));
          if (check.max_scaled_error > max_error_) {
            max_error_ = check.max_scaled_error;
          }
        }
      }
      lock.lock();
      Check(engine_->Commit(sampled), "Commit");
      std::size_t s = 0;
      for (const auto& sr : scheduled) {
        if (!sr.produces_token) continue;
        Live& l = live_[sr.id];
        const std::int32_t token = sampled[s++];
        l.generated.push_back(token);
        l.contexts.push_back(SyntheticModel::Extend(l.contexts.back(), token));
        if (sr.finishes_request) {
          pending_[sr.id].set_value(std::move(l.generated));
          pending_.erase(sr.id);
          live_.erase(sr.id);
        }
      }
      lock.unlock();
    }
  }

  std::unique_ptr<Engine> engine_;
  const SyntheticModel& model_;
  std::mutex mu_;
  std::condition_variable work_;
  bool stopping_ = false;
  std::unordered_map<RequestId, Live> live_;  // loop thread only
  std::map<RequestId, std::promise<std::vector<std::int32_t>>> pending_;
  double max_error_ = 0;  // loop thread only until it is joined
  std::thread loop_;
};

// A client: submits kRequestsPerClient requests a millisecond apart (half of
// them opening with one of two shared system prompts), then checks each
// answer against its own greedy decoding of the model.
int Client(int client, Service& service, const SyntheticModel& model) {
  struct Sent {
    std::vector<std::int32_t> prompt;
    std::uint32_t max_new = 0;
    std::future<std::vector<std::int32_t>> answer;
  };
  std::vector<Sent> sent;
  for (int i = 0; i < kRequestsPerClient; ++i) {
    const RequestId id =
        static_cast<RequestId>(client * kRequestsPerClient + i);
    Sent s;
    if (i % 2 == 0) {  // a shared 48-token system prompt (3 full pages)
      for (int t = 0; t < 48; ++t) s.prompt.push_back(1000 + (i % 4) * 100 + t);
    }
    const int own = 20 + static_cast<int>((id * 37) % 90);
    for (int t = 0; t < own; ++t) {
      s.prompt.push_back(
          static_cast<std::int32_t>((id * 7919 + t * 13) % 30000));
    }
    s.max_new = 4 + static_cast<std::uint32_t>(id % 12);
    s.answer = service.Submit(id, s.prompt, s.max_new);
    sent.push_back(std::move(s));
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  int bad = 0;
  for (Sent& s : sent) {
    const std::vector<std::int32_t> got = s.answer.get();
    std::vector<std::int32_t> want;
    std::uint64_t context = SyntheticModel::kEmptyContext;
    for (std::int32_t t : s.prompt)
      context = SyntheticModel::Extend(context, t);
    for (std::uint32_t n = 0; n < s.max_new; ++n) {
      const std::int32_t next = model.NextToken(context);
      want.push_back(next);
      context = SyntheticModel::Extend(context, next);
    }
    if (got != want) {
      std::fprintf(stderr, "consumer: client %d: a request got wrong tokens\n",
                   client);
      ++bad;
    }
  }
  return bad;
}

}  // namespace

int main() {
  auto model = SyntheticModel::Create({.seed = 42,
                                       .num_layers = kLayers,
                                       .num_q_heads = 8,
                                       .num_kv_heads = 2,
                                       .head_dim = 64,
                                       .vocab_size = 32000});
  if (!model.ok()) Die(model.status().ToString());

  rpa::scheduler::EngineOptions options;
  options.model.num_layers = kLayers;
  options.model.num_q_heads = 8;
  options.model.num_kv_heads = 2;
  options.model.head_dim = 64;
  options.model.storage = rpa::memory::StorageType::kBf16;
  // 40 pages of 16 tokens: far less than 32 requests of up to ~170 tokens
  // need at once, so the engine must preempt.
  options.num_pages = 40;
  options.page_size_tokens = 16;
  options.max_tokens_per_step = 128;
  options.chunk_prefill_tokens = 64;
  options.num_workers = 2;
  auto engine = Engine::Create(options);
  if (!engine.ok()) Die("Engine::Create: " + engine.status().ToString());

  int bad = 0;
  rpa::scheduler::EngineStats stats;
  double max_error = 0;
  {
    Service service(std::move(*engine), *model);
    std::vector<std::thread> clients;
    std::vector<int> failures(kClients, 0);
    for (int c = 0; c < kClients; ++c) {
      clients.emplace_back(
          [&, c] { failures[c] = Client(c, service, *model); });
    }
    for (std::thread& t : clients) t.join();
    for (int f : failures) bad += f;
    stats = service.Stats();
    max_error = service.max_error();
  }

  // The host's malloc must not have been replaced by linking rpa.
  void* mimalloc = dlopen("libmimalloc.so.2", RTLD_NOW | RTLD_NOLOAD);
  const bool replaced = mimalloc != nullptr && dlsym(RTLD_DEFAULT, "malloc") ==
                                                   dlsym(mimalloc, "malloc");
  std::printf(
      "consumer: %d requests from %d client threads: %llu finished, %llu "
      "steps, %llu tokens generated; prefix cache hit rate %.1f %%; %llu "
      "preemptions (%llu swap); max output error %.2e x (1 + |expected|); "
      "host malloc replaced: %s\n",
      kClients * kRequestsPerClient, kClients,
      static_cast<unsigned long long>(stats.finished_requests),
      static_cast<unsigned long long>(stats.steps),
      static_cast<unsigned long long>(stats.generated_tokens),
      stats.prefix_hit_rate * 100,
      static_cast<unsigned long long>(stats.preemptions_swap +
                                      stats.preemptions_recompute),
      static_cast<unsigned long long>(stats.preemptions_swap), max_error,
      replaced ? "yes" : "no");
  const bool ok =
      bad == 0 &&
      stats.finished_requests ==
          static_cast<std::uint64_t>(kClients * kRequestsPerClient) &&
      max_error <= 1e-4 && stats.prefix_hits > 0 && !replaced;
  if (!ok) std::fprintf(stderr, "consumer: FAILED\n");
  return ok ? 0 : 1;
}
