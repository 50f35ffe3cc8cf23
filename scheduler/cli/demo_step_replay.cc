// ReplayStep (demo.h): one traced step of the demo rebuilt on a scratch
// one-layer cache, for what the Engine does not expose: the selector's block
// sizes and, on a simulated target, the device's own trace of the step.
// The sequences have the step's (q_len, kv_len) and batch order, so the
// selection and the simulated time are those of the real step's layer;
// only the values differ (the model's rows for made-up contexts; the cached
// positions are zeros).

#include <fmt/format.h>

#include <cmath>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "demo.h"

#include "rpa/attention/device_run.h"
#include "rpa/attention/plan.h"
#include "rpa/memory/kv_cache.h"
#include "rpa/runtime/int_math.h"
#include "rpa/scheduler/selector.h"
#include "rpa/scheduler/synthetic_model.h"

namespace rpa::cli {
namespace {

std::string ChoiceLine(const char* range, const scheduler::KernelChoice& c,
                       bool host) {
  std::string blocks;
  if (host && c.q_tokens_per_block == 0 && c.kv_tokens_per_block == 0) {
    blocks = "host default blocks";
  } else {
    blocks = fmt::format("blocks q {} x kv {} tokens", c.q_tokens_per_block,
                         c.kv_tokens_per_block);
    if (!host) blocks += fmt::format(", compute {} keys", c.compute_kv_tokens);
  }
  return fmt::format(
      "{} range -> {} kernel, {} ({}; max q_len {}, max kv_len "
      "{})",
      range, attention::KernelKindName(c.kernel), blocks,
      c.from_table ? "tuning table" : "fallback rule", c.key.max_q_len,
      c.key.max_kv_len);
}

}  // namespace

StatusOr<StepReplay> ReplayStep(const DemoConfig& config,
                                const StepShape& step) {
  const scheduler::ModelShape& m = config.engine.model;
  const std::uint32_t ps = config.engine.page_size_tokens;
  const std::size_t num_seqs = step.kv_lens.size();
  std::uint32_t pages = 1;
  std::int32_t num_tokens = 0;
  for (std::size_t i = 0; i < num_seqs; ++i) {
    pages += DivideRoundUp(static_cast<std::uint32_t>(step.kv_lens[i]), ps);
    num_tokens += step.q_lens[i];
  }
  RPA_ASSIGN_OR_RETURN(std::unique_ptr<memory::KvCache> cache,
                       memory::KvCache::Create({.num_pages = pages,
                                                .page_size_tokens = ps,
                                                .num_kv_heads = m.num_kv_heads,
                                                .head_dim = m.head_dim,
                                                .storage = m.storage,
                                                .num_layers = 1}));
  std::vector<memory::SequenceId> seqs;
  std::vector<std::int32_t> cu_q_lens = {0};
  for (std::size_t i = 0; i < num_seqs; ++i) {
    RPA_ASSIGN_OR_RETURN(memory::SequenceId seq, cache->CreateSequence());
    RPA_RETURN_IF_ERROR(
        cache->Reserve(seq, static_cast<std::uint32_t>(step.kv_lens[i])));
    seqs.push_back(seq);
    cu_q_lens.push_back(cu_q_lens.back() + step.q_lens[i]);
  }
  memory::BatchPageTable table;
  RPA_RETURN_IF_ERROR(cache->ExportBatch(seqs, 0, &table));
  const std::vector<std::int32_t> distribution(step.distribution.begin(),
                                               step.distribution.end());
  const auto t = static_cast<std::uint32_t>(num_tokens);
  attention::BatchMetadata meta{
      .shape = {t, m.num_q_heads, m.num_kv_heads, m.head_dim},
      .kv_lens = table.kv_lens,
      .page_indices = table.page_indices,
      .cu_q_lens = cu_q_lens,
      .distribution = distribution};

  RPA_ASSIGN_OR_RETURN(scheduler::KernelSelector selector,
                       scheduler::KernelSelector::Create(config.engine.target));
  const scheduler::Selection selection =
      selector.Select(meta, cache->Layer(0), config.engine.num_workers);
  StepReplay replay;
  replay.step_index = step.step_index;
  const char* names[3] = {"decode", "prefill", "mixed"};
  for (std::size_t r = 0; r < 3; ++r) {
    if (!selection.ranges[r].used) continue;
    replay.kernel_choices.push_back(
        ChoiceLine(names[r], selection.ranges[r], selector.is_host()));
  }
  if (selector.is_host()) return replay;

  // One device run of the step's layer 0, with its trace.
  RPA_ASSIGN_OR_RETURN(
      scheduler::SyntheticModel model,
      scheduler::SyntheticModel::Create({.seed = config.seed,
                                         .num_layers = 1,
                                         .num_q_heads = m.num_q_heads,
                                         .num_kv_heads = m.num_kv_heads,
                                         .head_dim = m.head_dim}));
  std::vector<float> q(static_cast<std::size_t>(t) * model.q_row_floats());
  std::vector<float> k(static_cast<std::size_t>(t) * model.kv_row_floats());
  std::vector<float> v(k.size());
  std::vector<float> out(q.size());
  const std::size_t qf = model.q_row_floats();
  const std::size_t kf = model.kv_row_floats();
  for (std::uint32_t row = 0; row < t; ++row) {
    model.FillToken(0,
                    scheduler::SyntheticModel::Extend(
                        step.step_index, static_cast<std::int32_t>(row)),
                    std::span<float>(q).subspan(row * qf, qf),
                    std::span<float>(k).subspan(row * kf, kf),
                    std::span<float>(v).subspan(row * kf, kf));
  }
  attention::AttentionParams params;
  params.sm_scale =
      m.sm_scale.value_or(1.0F / std::sqrt(static_cast<float>(m.head_dim)));
  params.soft_cap = m.soft_cap;
  if (step.distribution[1] > step.distribution[0]) {
    params.chunk_prefill_size =
        step.q_lens[static_cast<std::size_t>(step.distribution[0])];
  }
  RPA_ASSIGN_OR_RETURN(
      attention::AttentionPlan plan,
      attention::AttentionPlan::Create(meta, cache->Layer(0), params,
                                       selection.plan_options));
  attention::DeviceRunOptions options = selection.device_options;
  options.record_trace = true;
  RPA_ASSIGN_OR_RETURN(
      attention::DeviceRunReport report,
      attention::RunOnDevice(plan, {q, k, v, cache->Layer(0), out},
                             *selector.device(), options));
  replay.simulated = true;
  replay.simulated_us = report.simulated_us;
  replay.mbu = report.mbu;
  replay.mfu = report.mfu;
  replay.device_trace_json = std::move(report.trace_json);
  return replay;
}

}  // namespace rpa::cli
