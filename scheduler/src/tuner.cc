#include "rpa/scheduler/tuner.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "rpa/attention/device_run.h"
#include "rpa/attention/plan.h"
#include "rpa/device/device_spec.h"
#include "rpa/runtime/executor.h"
#include "rpa/scheduler/attention_workloads.h"
#include "rpa/scheduler/selector.h"

namespace rpa::scheduler {
namespace {

using attention::KernelKind;

// A representative shape: one kernel's range of a batch.
struct TuneShape {
  std::string name;
  std::uint32_t page_size = 16;
  KernelKind kernel;
  std::vector<WorkloadSequence> sequences;
  std::optional<std::int32_t> chunk;
};

struct Candidate {
  std::uint32_t q_tokens = 0;
  std::uint32_t kv_tokens = 0;
  std::uint32_t compute_kv_tokens = 0;
};

std::vector<TuneShape> BaseShapes(bool quick) {
  auto repeat = [](int n, WorkloadSequence s) {
    return std::vector<WorkloadSequence>(static_cast<std::size_t>(n), s);
  };
  if (quick) {
    return {{"decode_4x256", 16, KernelKind::kDecode, repeat(4, {1, 256}), {}},
            {"prefill_1x128", 16, KernelKind::kPrefill, repeat(1, {128, 128}),
             128}};
  }
  return {
      {"decode_64x2048", 16, KernelKind::kDecode, repeat(64, {1, 2048}), {}},
      {"decode_16x8192", 16, KernelKind::kDecode, repeat(16, {1, 8192}), {}},
      {"prefill_1x512", 16, KernelKind::kPrefill, repeat(1, {512, 512}), 512},
      {"prefill_1x2048", 16, KernelKind::kPrefill, repeat(1, {2048, 2048}),
       2048},
      {"mixed_4x64",
       16,
       KernelKind::kMixed,
       {{64, 1024}, {32, 700}, {64, 2048}, {16, 300}},
       {}},
  };
}

// Page sizes tuned: 16 (the engine's default) everywhere, and 128 on a
// device (the RPA paper's page size; fewer DMA descriptors per byte).
std::vector<TuneShape> Shapes(bool quick, bool device) {
  std::vector<TuneShape> out = BaseShapes(quick);
  if (device && !quick) {
    const std::size_t n = out.size();
    for (std::size_t i = 0; i < n; ++i) {
      TuneShape shape = out[i];
      shape.page_size = 128;
      shape.name += "_page128";
      out.push_back(shape);
    }
  }
  return out;
}

std::vector<Candidate> Candidates(KernelKind kernel, bool device, bool quick) {
  std::vector<Candidate> out;
  if (kernel == KernelKind::kDecode) {
    const std::vector<std::uint32_t> kv =
        quick ? std::vector<std::uint32_t>{64, 128}
              : std::vector<std::uint32_t>{256, 512, 1024, 2048};
    for (std::uint32_t k : kv) {
      if (device) {
        // Decode sequences per Q block (1: one sequence at a time; 32: the
        // device default for Llama-3-8B's 16 KiB of f32 queries per token)
        // x compute sub-tiles (a sub-tile never exceeds the block).
        for (std::uint32_t q : {1U, 8U, 32U}) {
          for (std::uint32_t c : {128U, 512U, 2048U}) {
            if (c > k && c != 128U) continue;
            out.push_back({q, k, std::min(c, k)});
          }
        }
      } else {
        out.push_back({1, k, 0});  // keys per KV split
      }
    }
    return out;
  }
  const std::vector<std::uint32_t> qs =
      quick ? std::vector<std::uint32_t>{32, 64}
            : (device ? std::vector<std::uint32_t>{128, 256, 512}
                      : std::vector<std::uint32_t>{16, 32, 64});
  const std::vector<std::uint32_t> kvs =
      quick ? std::vector<std::uint32_t>{64}
            : (device ? std::vector<std::uint32_t>{256, 512, 1024}
                      : std::vector<std::uint32_t>{64, 128, 256});
  for (std::uint32_t q : qs) {
    for (std::uint32_t k : kvs) {
      if (!device) {
        out.push_back({q, k, 0});
        continue;
      }
      for (std::uint32_t c : {256U, 512U}) {
        if (c <= k || c == 256U) out.push_back({q, k, std::min(c, k)});
      }
    }
  }
  if (!device) out.push_back({0, 0, 0});  // the cache-sized defaults
  return out;
}

StatusOr<std::unique_ptr<AttentionWorkload>> MakeWorkload(
    const TuneShape& shape) {
  AttentionWorkloadSpec spec;
  spec.storage = memory::StorageType::kBf16;
  spec.page_size_tokens = shape.page_size;
  spec.sequences = shape.sequences;
  const auto n = static_cast<std::int32_t>(shape.sequences.size());
  switch (shape.kernel) {
    case KernelKind::kDecode:
      spec.distribution = {n, n, n};
      break;
    case KernelKind::kPrefill:
      spec.distribution = {0, n, n};
      break;
    case KernelKind::kMixed:
      spec.distribution = {0, 0, n};
      break;
  }
  spec.chunk_prefill_size = shape.chunk;
  return AttentionWorkload::Create(shape.name, spec);
}

attention::DeviceBlockSizes DeviceBlocks(const TuneShape& shape,
                                         const Candidate& c) {
  return attention::DeviceBlocksFromTokens(
      c.q_tokens, c.kv_tokens, c.compute_kv_tokens, shape.page_size);
}

// Whether the candidate's buffers fit the device's VMEM, by the model
// RunOnDevice checks (attention::DeviceVmemBytes).
bool FitsVmem(const TuneShape& shape, const Candidate& c,
              const attention::BatchShape& batch_shape,
              const device::DeviceSpec& device) {
  std::int32_t max_q_len = 1;
  for (const WorkloadSequence& s : shape.sequences) {
    max_q_len = std::max(max_q_len, s.q_len);
  }
  const attention::DeviceRangeDemand demand{.kernel = shape.kernel,
                                            .max_q_len = max_q_len,
                                            .blocks = DeviceBlocks(shape, c)};
  return attention::DeviceVmemBytes(batch_shape, memory::StorageType::kBf16,
                                    shape.page_size,
                                    std::span(&demand, 1)) <= device.vmem_bytes;
}

// Seconds of one candidate (simulated or best measured).
StatusOr<double> Measure(const TuneShape& shape, const Candidate& c,
                         AttentionWorkload& w,
                         const std::optional<device::DeviceSpec>& device,
                         runtime::Executor* executor,
                         const TuneOptions& options) {
  attention::PlanOptions plan_options;
  plan_options.parallelism = device ? 1 : options.host_threads;
  const attention::BlockSizes host_blocks{c.q_tokens, c.kv_tokens};
  if (shape.kernel == KernelKind::kPrefill)
    plan_options.prefill_blocks = host_blocks;
  if (shape.kernel == KernelKind::kMixed)
    plan_options.mixed_blocks = host_blocks;
  if (shape.kernel == KernelKind::kDecode && !device) {
    plan_options.decode_min_kv_tokens_per_split = c.kv_tokens;
  }
  RPA_ASSIGN_OR_RETURN(
      auto plan, attention::AttentionPlan::Create(w.metadata(), w.cache(),
                                                  w.params(), plan_options));
  if (device) {
    attention::DeviceRunOptions run;
    const attention::DeviceBlockSizes blocks = DeviceBlocks(shape, c);
    run.decode_blocks = run.prefill_blocks = run.mixed_blocks = blocks;
    RPA_ASSIGN_OR_RETURN(
        attention::DeviceRunReport report,
        attention::RunOnDevice(plan, w.tensors(), *device, run));
    return report.simulated_us * 1e-6;
  }
  double best = std::numeric_limits<double>::infinity();
  RPA_RETURN_IF_ERROR(attention::Run(plan, w.tensors(), executor));  // warm-up
  for (int rep = 0; rep < std::max(1, options.repetitions); ++rep) {
    const auto start = std::chrono::steady_clock::now();
    RPA_RETURN_IF_ERROR(attention::Run(plan, w.tensors(), executor));
    best = std::min(best, std::chrono::duration<double>(
                              std::chrono::steady_clock::now() - start)
                              .count());
  }
  return best;
}

}  // namespace

StatusOr<TuningTable> Tune(const TuneOptions& options) {
  std::optional<device::DeviceSpec> device;
  std::string target_name = "host";
  if (options.target != "host") {
    RPA_ASSIGN_OR_RETURN(device::DeviceSpec spec,
                         device::ResolveDeviceSpec(options.target));
    target_name = spec.name;
    device = std::move(spec);
  }
  if (options.host_threads < 1) {
    return InvalidArgumentError(
        "host_threads = " + std::to_string(options.host_threads) +
        " must be >= 1");
  }
  std::unique_ptr<runtime::Executor> executor;
  if (!device && options.host_threads > 1) {
    RPA_ASSIGN_OR_RETURN(executor, runtime::Executor::Create(
                                       {.num_workers = options.host_threads}));
  }
  std::vector<TuningEntry> entries;
  for (const TuneShape& shape : Shapes(options.quick, device.has_value())) {
    RPA_ASSIGN_OR_RETURN(auto workload, MakeWorkload(shape));
    std::optional<Candidate> best;
    double best_s = std::numeric_limits<double>::infinity();
    for (const Candidate& c :
         Candidates(shape.kernel, device.has_value(), options.quick)) {
      if (device && !FitsVmem(shape, c, workload->metadata().shape, *device)) {
        continue;  // RunOnDevice would refuse it
      }
      RPA_ASSIGN_OR_RETURN(double seconds, Measure(shape, c, *workload, device,
                                                   executor.get(), options));
      if (options.progress) {
        options.progress(fmt::format("{} q {} kv {} sub {}: {:.1f} us",
                                     shape.name, c.q_tokens, c.kv_tokens,
                                     c.compute_kv_tokens, seconds * 1e6));
      }
      if (seconds < best_s) {
        best_s = seconds;
        best = c;
      }
    }
    if (!best) continue;
    std::uint32_t max_q = 0;
    std::uint32_t max_kv = 0;
    for (const WorkloadSequence& s : shape.sequences) {
      max_q = std::max(max_q, static_cast<std::uint32_t>(s.q_len));
      max_kv = std::max(max_kv, static_cast<std::uint32_t>(s.kv_len));
    }
    entries.push_back({.kernel = shape.kernel,
                       .key = {.storage = memory::StorageType::kBf16,
                               .head_dim = 128,
                               .q_per_kv = 4,
                               .page_size = shape.page_size,
                               .max_q_len = max_q,
                               .max_kv_len = max_kv},
                       .q_tokens_per_block = best->q_tokens,
                       .kv_tokens_per_block = best->kv_tokens,
                       .compute_kv_tokens = best->compute_kv_tokens,
                       .time_us = best_s * 1e6});
  }
  if (executor) RPA_RETURN_IF_ERROR(executor->Shutdown());
  // The command line that regenerates this table (non-default options only).
  std::string generated_by = "rpa tune --target " + options.target;
  const TuneOptions defaults;
  if (!device && options.host_threads != defaults.host_threads) {
    generated_by += " --threads " + std::to_string(options.host_threads);
  }
  if (!device && options.repetitions != defaults.repetitions) {
    generated_by += " --repetitions " + std::to_string(options.repetitions);
  }
  if (options.quick) generated_by += " --quick";
  return TuningTable(target_name, std::move(entries), std::move(generated_by));
}

}  // namespace rpa::scheduler
