#include "scheduler/engine_test_util.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <set>
#include <sstream>

namespace rpa::scheduler::testing_util {

bool Driver::Fail(RunResult* result, std::string message) {
  if (result->failure.empty()) result->failure = std::move(message);
  return false;
}

void Driver::FillRows(const StepPlan& plan, std::uint32_t layer) {
  const ModelShape& model = engine_->options().model;
  const std::uint32_t hq_d = model.num_q_heads * model.head_dim;
  const std::uint32_t hkv_d = model.num_kv_heads * model.head_dim;
  for (const ScheduledRequest& entry : plan.requests) {
    for (std::uint32_t j = 0; j < entry.num_tokens; ++j) {
      const std::size_t row = entry.row_offset + j;
      const std::uint32_t position = entry.start_position + j;
      const std::int32_t token = entry.tokens[j];
      for (std::uint32_t i = 0; i < hq_d; ++i) {
        q_[row * hq_d + i] = SynthValue(1, token, position, layer, i);
      }
      for (std::uint32_t i = 0; i < hkv_d; ++i) {
        k_[row * hkv_d + i] = SynthValue(2, token, position, layer, i);
        v_[row * hkv_d + i] = SynthValue(3, token, position, layer, i);
      }
    }
  }
}

bool Driver::CheckPlan(const StepPlan& plan, RunResult* result) {
  const EngineOptions& options = engine_->options();
  const std::uint32_t chunk = options.chunk_prefill_tokens != 0
                                  ? options.chunk_prefill_tokens
                                  : options.max_tokens_per_step;
  std::ostringstream where;
  where << "step " << plan.step_index << ": ";
  if (plan.num_tokens > options.max_tokens_per_step) {
    return Fail(result, where.str() + "token budget exceeded: " +
                            std::to_string(plan.num_tokens));
  }
  if (plan.requests.size() > options.max_requests_per_step) {
    return Fail(result, where.str() + "request budget exceeded");
  }
  if (plan.cu_q_lens.size() != plan.requests.size() + 1 ||
      plan.cu_q_lens[0] != 0 ||
      static_cast<std::uint32_t>(plan.cu_q_lens.back()) != plan.num_tokens) {
    return Fail(result, where.str() + "cu_q_lens does not match the requests");
  }
  const auto& d = plan.distribution;
  if (!(0 <= d[0] && d[0] <= d[1] && d[1] <= d[2] &&
        static_cast<std::size_t>(d[2]) == plan.requests.size())) {
    return Fail(result, where.str() + "bad distribution");
  }
  std::set<RequestId> seen;
  std::uint32_t outputs = 0;
  for (std::size_t i = 0; i < plan.requests.size(); ++i) {
    const ScheduledRequest& entry = plan.requests[i];
    const auto index = static_cast<std::int32_t>(i);
    const std::string id = " (request " + std::to_string(entry.id) + ")";
    if (!seen.insert(entry.id).second) {
      return Fail(result, where.str() + "request scheduled twice" + id);
    }
    if (entry.num_tokens == 0 || entry.num_tokens > chunk ||
        static_cast<std::int32_t>(entry.row_offset) != plan.cu_q_lens[i] ||
        plan.cu_q_lens[i + 1] - plan.cu_q_lens[i] !=
            static_cast<std::int32_t>(entry.num_tokens) ||
        entry.kv_len != entry.start_position + entry.num_tokens ||
        entry.tokens.size() != entry.num_tokens) {
      return Fail(result, where.str() + "inconsistent entry" + id);
    }
    const BatchRange expected_range = index < d[0]   ? BatchRange::kDecode
                                      : index < d[1] ? BatchRange::kPrefill
                                                     : BatchRange::kMixed;
    if (entry.range != expected_range ||
        (expected_range == BatchRange::kDecode && entry.num_tokens != 1) ||
        (expected_range == BatchRange::kPrefill && entry.num_tokens != chunk) ||
        (expected_range == BatchRange::kMixed &&
         (entry.num_tokens == 1 || entry.num_tokens == chunk))) {
      return Fail(result, where.str() + "entry in the wrong range" + id);
    }
    auto tokens = engine_->RequestTokens(entry.id);
    if (!tokens.ok() || tokens->size() < entry.kv_len ||
        !std::equal(entry.tokens.begin(), entry.tokens.end(),
                    tokens->begin() + entry.start_position) ||
        entry.produces_token != (tokens->size() == entry.kv_len)) {
      return Fail(result, where.str() + "entry tokens disagree" + id);
    }
    outputs += entry.produces_token ? 1 : 0;
  }
  if (outputs != plan.num_output_tokens) {
    return Fail(result, where.str() + "num_output_tokens is wrong");
  }
  return true;
}

// Reads the KV of every running request and checks that the part an earlier
// read saw has not changed: computed KV is immutable, across preemption,
// swap and recompute alike.
bool Driver::SnapshotKv(RunResult* result) {
  const ModelShape& model = engine_->options().model;
  const std::size_t token_bytes = std::size_t{2} * model.num_kv_heads *
                                  model.head_dim *
                                  memory::StorageBytes(model.storage);
  for (const auto& [id, tokens] : result->tokens) {
    auto info = engine_->GetRequest(id);
    if (!info.ok() || info->state != RequestState::kRunning) continue;
    for (std::uint32_t layer = 0; layer < model.num_layers; ++layer) {
      kv_scratch_.resize(info->computed_tokens * token_bytes);
      const Status read = engine_->ReadRequestKv(id, layer, kv_scratch_);
      if (!read.ok()) return Fail(result, read.ToString());
      std::vector<std::byte>& known = result->kv[{id, layer}];
      const std::size_t common = std::min(known.size(), kv_scratch_.size());
      if (common > 0 &&
          std::memcmp(known.data(), kv_scratch_.data(), common) != 0) {
        return Fail(result, "request " + std::to_string(id) + " layer " +
                                std::to_string(layer) +
                                ": computed KV changed");
      }
      if (kv_scratch_.size() > known.size()) known = kv_scratch_;
    }
  }
  return true;
}

bool Driver::Step(RunResult* result, bool check_kv) {
  StatusOr<const StepPlan*> planned = engine_->Plan();
  // A swap I/O error: the engine kept the request; planning again goes on
  // (every retry reaps and may hit the next injected failure).
  for (int retry = 0; !planned.ok() && retry < 64; ++retry) {
    result->plan_errors.push_back(planned.status());
    if (planned.status().code() == StatusCode::kFailedPrecondition ||
        planned.status().code() == StatusCode::kInvalidArgument) {
      return Fail(result, planned.status().ToString());
    }
    planned = engine_->Plan();
  }
  if (!planned.ok()) return Fail(result, planned.status().ToString());
  const StepPlan& plan = **planned;
  if (!CheckPlan(plan, result)) return false;
  Status invariants = engine_->CheckInvariants();
  if (!invariants.ok()) return Fail(result, invariants.ToString());

  const ModelShape& model = engine_->options().model;
  const std::size_t hq_d = std::size_t{model.num_q_heads} * model.head_dim;
  const std::size_t hkv_d = std::size_t{model.num_kv_heads} * model.head_dim;
  q_.resize(plan.num_tokens * hq_d);
  out_.resize(plan.num_tokens * hq_d);
  k_.resize(plan.num_tokens * hkv_d);
  v_.resize(plan.num_tokens * hkv_d);
  for (std::uint32_t layer = 0; layer < model.num_layers; ++layer) {
    FillRows(plan, layer);
    const Status attended = engine_->Attend(layer, q_, k_, v_, out_);
    if (!attended.ok()) return Fail(result, attended.ToString());
    for (const ScheduledRequest& entry : plan.requests) {
      for (std::uint32_t j = 0; j < entry.num_tokens; ++j) {
        const float* row = out_.data() + (entry.row_offset + j) * hq_d;
        std::vector<float> values(row, row + hq_d);
        const OutKey key{entry.id, entry.start_position + j, layer};
        if (entry.produces_token && j + 1 == entry.num_tokens) {
          result->produced[key] = values;
        }
        result->out[key] = std::move(values);
      }
    }
  }
  sampled_.clear();
  for (const ScheduledRequest& entry : plan.requests) {
    if (entry.produces_token) {
      sampled_.push_back(SampleToken(entry.id, entry.kv_len));
    }
  }
  std::vector<std::pair<RequestId, bool>> ending;
  for (const ScheduledRequest& entry : plan.requests) {
    ending.emplace_back(entry.id, entry.finishes_request);
  }
  // The token list as it will be after Commit, for requests that end here.
  for (const ScheduledRequest& entry : plan.requests) {
    if (entry.finishes_request) {
      auto tokens = engine_->RequestTokens(entry.id);
      if (tokens.ok()) {
        std::vector<std::int32_t> final_tokens(tokens->begin(), tokens->end());
        final_tokens.push_back(SampleToken(entry.id, entry.kv_len));
        result->tokens[entry.id] = std::move(final_tokens);
      }
    }
  }
  const Status committed = engine_->Commit(sampled_);
  if (!committed.ok()) return Fail(result, committed.ToString());
  for (const auto& [id, finishes] : ending) {
    const bool live = engine_->GetRequest(id).ok();
    if (finishes == live) {
      return Fail(result,
                  "request " + std::to_string(id) +
                      (finishes ? " did not finish" : " finished early"));
    }
    if (live) {
      auto tokens = engine_->RequestTokens(id);
      result->tokens[id].assign(tokens->begin(), tokens->end());
    }
  }
  invariants = engine_->CheckInvariants();
  if (!invariants.ok()) return Fail(result, invariants.ToString());
  if (check_kv && !SnapshotKv(result)) return false;
  if (!plan.empty()) ++result->steps;
  return true;
}

Status Driver::Add(const TestRequest& request, RunResult* result) {
  RPA_RETURN_IF_ERROR(engine_->AddRequest(request.id, request.prompt,
                                          request.max_new,
                                          {.priority = request.priority}));
  result->tokens[request.id] = request.prompt;
  return OkStatus();
}

RunResult Driver::Run(const EngineOptions& options,
                      const std::vector<TestRequest>& requests, int max_steps,
                      bool check_kv) {
  RunResult result;
  auto engine = Engine::Create(options);
  if (!engine.ok()) {
    result.failure = engine.status().ToString();
    return result;
  }
  Driver driver(engine->get());
  std::size_t next = 0;
  std::vector<TestRequest> ordered = requests;
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](const TestRequest& a, const TestRequest& b) {
                     return a.add_at_step < b.add_at_step;
                   });
  for (int step = 0; step < max_steps; ++step) {
    while (next < ordered.size() && ordered[next].add_at_step <= step) {
      const Status added = driver.Add(ordered[next++], &result);
      if (!added.ok()) {
        result.failure = added.ToString();
        return result;
      }
    }
    if (!(*engine)->HasWork() && next == ordered.size()) break;
    if (!driver.Step(&result, check_kv)) break;
  }
  if (result.failure.empty() && (*engine)->HasWork()) {
    result.failure = "requests left after max_steps";
  }
  result.stats = (*engine)->Stats();
  // Every page is back: only the prefix cache holds some, all evictable.
  if (result.failure.empty() &&
      (result.stats.used_pages != result.stats.cached_pages ||
       result.stats.evictable_pages != result.stats.cached_pages)) {
    result.failure = "pages not returned: used " +
                     std::to_string(result.stats.used_pages) + ", cached " +
                     std::to_string(result.stats.cached_pages);
  }
  return result;
}

std::string CompareOutputs(const RunResult& a, const RunResult& b,
                           float tolerance) {
  if (a.produced.size() != b.produced.size()) {
    return "produced rows: " + std::to_string(a.produced.size()) + " vs " +
           std::to_string(b.produced.size());
  }
  for (const auto& [key, row] : a.produced) {
    if (b.produced.count(key) == 0) return "a produced row missing in b";
  }
  for (const auto& [key, row] : a.out) {
    const auto it = b.out.find(key);
    if (it == b.out.end()) continue;
    for (std::size_t i = 0; i < row.size(); ++i) {
      const float expected = it->second[i];
      if (!(std::fabs(row[i] - expected) <=
            tolerance * (1.0F + std::fabs(expected)))) {
        return "request " + std::to_string(std::get<0>(key)) + " position " +
               std::to_string(std::get<1>(key)) + " layer " +
               std::to_string(std::get<2>(key)) + " element " +
               std::to_string(i) + ": " + std::to_string(row[i]) + " vs " +
               std::to_string(expected);
      }
    }
  }
  return "";
}

std::string CompareTokensAndKv(const RunResult& a, const RunResult& b) {
  if (a.tokens != b.tokens) return "token sequences differ";
  for (const auto& [key, bytes] : a.kv) {
    const auto it = b.kv.find(key);
    if (it == b.kv.end()) continue;
    const std::size_t common = std::min(bytes.size(), it->second.size());
    if (common > 0 &&
        std::memcmp(bytes.data(), it->second.data(), common) != 0) {
      return "KV of request " + std::to_string(key.first) + " layer " +
             std::to_string(key.second) + " differs";
    }
  }
  return "";
}

}  // namespace rpa::scheduler::testing_util
