// `rpa demo`: a serving workload through the whole stack (demo.h) with the
// Llama-3-8B attention shapes, scaled down to this machine, and its report.
//
// Scaling (printed at the top of the report). The full model has 32 layers
// and Azure conversation requests average 1155 prompt / 211 output tokens;
// on a 2-core host one layer-step of attention over a few hundred sequences
// takes milliseconds, so the defaults keep the run under a minute:
//   host:             4 layers, 64 requests, lengths x 0.25, prompt cap
//                     1024, output cap 256, KV budget 1 GiB;
//   simulated device: 2 layers, 24 requests, the same lengths (the device
//                     simulation computes the real numerics on one thread
//                     and models the time on top).
// Every default can be overridden (--layers, --requests, --length-scale,
// --max-prompt-tokens, --max-output-tokens, --kv-budget-mib).

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "commands.h"
#include "demo.h"
#include <CLI/CLI.hpp>

#include "rpa/scheduler/npy.h"
#include "rpa/scheduler/workload.h"

namespace rpa::cli {
namespace {

struct TargetDefaults {
  int layers;
  int requests;
  double length_scale;
  int max_prompt_tokens;
  int max_output_tokens;
  int kv_budget_mib;
};

TargetDefaults DefaultsFor(std::string_view target) {
  if (target == "host") return {4, 64, 0.25, 1024, 256, 1024};
  return {2, 24, 0.25, 1024, 256, 1024};
}

Status WriteText(const std::filesystem::path& path, const std::string& text) {
  return scheduler::WriteFileAtomically(
      path, std::as_bytes(std::span<const char>(text.data(), text.size())));
}

StatusOr<DemoConfig> BuildConfig(const DemoArgs& args) {
  const TargetDefaults defaults = DefaultsFor(args.target);
  const int layers = args.layers > 0 ? args.layers : defaults.layers;
  const int requests = args.requests > 0 ? args.requests : defaults.requests;
  const double length_scale =
      args.length_scale > 0 ? args.length_scale : defaults.length_scale;
  const int max_prompt = args.max_prompt_tokens >= 0
                             ? args.max_prompt_tokens
                             : defaults.max_prompt_tokens;
  const int max_output = args.max_output_tokens >= 0
                             ? args.max_output_tokens
                             : defaults.max_output_tokens;
  const int kv_budget_mib =
      args.kv_budget_mib > 0 ? args.kv_budget_mib : defaults.kv_budget_mib;

  DemoConfig config;
  config.seed = args.seed;
  config.concurrency = static_cast<std::uint32_t>(args.concurrency);
  config.trace_steps = static_cast<std::uint32_t>(args.trace_steps);
  config.verify_rows = static_cast<std::uint32_t>(args.verify_rows);
  config.progress = args.progress;

  scheduler::EngineOptions& e = config.engine;
  e.model.num_layers = static_cast<std::uint32_t>(layers);
  e.model.num_q_heads = 32;
  e.model.num_kv_heads = 8;
  e.model.head_dim = 128;
  e.model.storage = memory::StorageType::kBf16;
  e.kv_budget_bytes = static_cast<std::uint64_t>(kv_budget_mib) << 20;
  e.page_size_tokens = 16;
  e.target = args.target;
  e.max_tokens_per_step = static_cast<std::uint32_t>(args.max_tokens_per_step);
  e.chunk_prefill_tokens =
      static_cast<std::uint32_t>(args.chunk_prefill_tokens);
  e.max_requests = static_cast<std::uint32_t>(std::max(requests, 4096));
  e.enable_prefix_caching = args.prefix_caching;
  if (args.preemption == "swap") {
    e.preemption_mode = scheduler::PreemptionMode::kSwap;
  } else if (args.preemption == "recompute") {
    e.preemption_mode = scheduler::PreemptionMode::kRecompute;
  } else {
    return InvalidArgumentError(fmt::format(
        "--preemption must be swap or recompute, got \"{}\"", args.preemption));
  }
  e.num_workers = args.threads;

  scheduler::WorkloadOptions w;
  w.seed = args.seed;
  w.num_requests = static_cast<std::uint32_t>(requests);
  w.arrivals = args.concurrency > 0 ? scheduler::ArrivalProcess::kClosedLoop
                                    : scheduler::ArrivalProcess::kPoisson;
  w.time_scale = args.time_scale;
  w.scaling = {.length_scale = length_scale,
               .max_prompt_tokens = static_cast<std::uint32_t>(max_prompt),
               .max_output_tokens = static_cast<std::uint32_t>(max_output)};
  w.shared_prefix = {
      .fraction = args.shared_prefix_fraction,
      .num_prefixes = static_cast<std::uint32_t>(args.shared_prefixes),
      .prefix_tokens = static_cast<std::uint32_t>(args.shared_prefix_tokens)};

  std::string source;
  std::string arrivals;
  if (!args.trace.empty()) {
    RPA_ASSIGN_OR_RETURN(std::vector<scheduler::TraceRow> rows,
                         scheduler::ReadTraceCsv(
                             args.trace, static_cast<std::size_t>(requests)));
    RPA_ASSIGN_OR_RETURN(config.requests, scheduler::ReplayTrace(rows, w));
    source = fmt::format("replay of the first {} rows of {}", rows.size(),
                         args.trace);
    arrivals = args.concurrency > 0
                   ? fmt::format("closed loop, {} in flight", args.concurrency)
                   : fmt::format("arrivals as recorded x {}", args.time_scale);
  } else {
    RPA_ASSIGN_OR_RETURN(scheduler::AzureTrace trace,
                         scheduler::ParseAzureTraceName(args.azure));
    std::optional<std::filesystem::path> dir;
    if (!args.azure_dir.empty()) dir = args.azure_dir;
    RPA_ASSIGN_OR_RETURN(scheduler::LengthDistribution lengths,
                         scheduler::LengthDistribution::Azure(trace, dir));
    w.arrival_rate_per_s =
        args.rate > 0 ? args.rate : scheduler::AzureMeanArrivalRatePerS(trace);
    RPA_ASSIGN_OR_RETURN(config.requests,
                         scheduler::SampleWorkload(lengths, w));
    source = "lengths drawn from the " + lengths.description();
    arrivals = args.concurrency > 0
                   ? fmt::format("closed loop, {} in flight", args.concurrency)
                   : fmt::format("Poisson arrivals at {:.2f} req/s",
                                 w.arrival_rate_per_s);
  }
  const scheduler::WorkloadTotals totals =
      scheduler::SumWorkload(config.requests);
  config.workload_description =
      fmt::format("{}; {}; seed {}", source, arrivals, args.seed);
  config.workload_totals = fmt::format(
      "{} requests, {} prompt tokens (longest {}), {} output tokens (longest "
      "{}); ",
      totals.requests, totals.prompt_tokens, totals.max_prompt_tokens,
      totals.output_tokens, totals.max_output_tokens);
  config.workload_totals +=
      args.shared_prefix_fraction > 0
          ? fmt::format("{} start with one of {} shared prefixes of {} tokens",
                        totals.shared_prefix_requests, args.shared_prefixes,
                        args.shared_prefix_tokens)
          : std::string("no shared prefixes");

  if (layers < 32) {
    config.notes.push_back(fmt::format(
        "{} of the model's 32 layers (--layers; each layer is the same "
        "attention shape, so time and KV scale with the count)",
        layers));
  }
  config.notes.push_back(
      fmt::format("{} requests (--requests){}", requests,
                  args.trace.empty() ? "" : ", the first rows of the trace"));
  config.notes.push_back(fmt::format(
      "lengths x {} (--length-scale), prompt capped at {}, output at {} tokens "
      "(0 = no cap; before the shared prefix)",
      length_scale, max_prompt, max_output));
  config.notes.push_back(
      fmt::format("KV budget {} MiB for the {} layers (--kv-budget-mib)",
                  kv_budget_mib, layers));
  return config;
}

}  // namespace

CLI::App* AddDemoCommand(CLI::App& app, DemoArgs* args) {
  CLI::App* cmd = app.add_subcommand(
      "demo",
      "Serve a realistic request stream through the whole stack (engine, "
      "prefix cache, preemption, kernels) with a synthetic Llama-3-8B-shaped "
      "model, and report throughput, latency, kernel choices and page use");
  cmd->add_option("--requests", args->requests,
                  "requests to serve (default: 64 on the host, 24 on a "
                  "simulated target); with --trace, its first N rows")
      ->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--trace", args->trace,
                  "replay a trace CSV (arrived_at,num_prefill_tokens,"
                  "num_decode_tokens) instead of sampling");
  cmd->add_option("--azure", args->azure,
                  "length distribution without --trace: conv or code")
      ->capture_default_str();
  cmd->add_option("--azure-dir", args->azure_dir,
                  "directory holding splitwise_conv.csv / splitwise_code.csv "
                  "(default: shared/data/azure-llm-2023 found near the "
                  "checkout, else the embedded percentiles)");
  cmd->add_option("--target", args->target,
                  "host, v5e, v6e, tpu7x or a device JSON file")
      ->capture_default_str();
  cmd->add_option("--layers", args->layers,
                  "model layers (default 4 on the host, 2 simulated; the "
                  "full model has 32)")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--seed", args->seed, "workload and model seed")
      ->capture_default_str();
  cmd->add_option("--out", args->out,
                  "write summary.json and trace.json (Perfetto) here");
  cmd->add_option("--threads", args->threads, "executor worker threads")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "print only the summary JSON on stdout");
  cmd->add_option("--rate", args->rate,
                  "Poisson arrival rate in requests/s (default: the Azure "
                  "trace's own, 5.53 conv / 2.57 code)")
      ->check(CLI::Range(1e-6, 1e9));
  cmd->add_option("--concurrency", args->concurrency,
                  "closed loop: keep N requests in flight, ignore arrival "
                  "times")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--time-scale", args->time_scale,
                  "--trace: multiply the recorded arrival times by this")
      ->check(CLI::Range(1e-9, 1e9))
      ->capture_default_str();
  cmd->add_option("--length-scale", args->length_scale,
                  "multiply prompt and output lengths by this (default 0.25)")
      ->check(CLI::Range(1e-6, 1e6));
  cmd->add_option("--max-prompt-tokens", args->max_prompt_tokens,
                  "cap on the scaled prompt length (default 1024; 0 = none)")
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--max-output-tokens", args->max_output_tokens,
                  "cap on the scaled output length (default 256; 0 = none)")
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--shared-prefix-fraction", args->shared_prefix_fraction,
                  "fraction of requests that start with a shared system "
                  "prompt")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--shared-prefixes", args->shared_prefixes,
                  "number of distinct shared prefixes")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--shared-prefix-tokens", args->shared_prefix_tokens,
                  "tokens per shared prefix")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--kv-budget-mib", args->kv_budget_mib,
                  "KV cache budget over all layers (default 1024)")
      ->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--max-tokens-per-step", args->max_tokens_per_step,
                  "token budget of one step")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--chunk", args->chunk_prefill_tokens,
                  "chunked prefill: prompt tokens per request per step "
                  "(0 = the step budget)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--preemption", args->preemption, "swap or recompute")
      ->capture_default_str();
  cmd->add_flag("--prefix-caching,!--no-prefix-caching", args->prefix_caching,
                "reuse cached KV pages of shared prefixes");
  cmd->add_option("--trace-steps", args->trace_steps,
                  "steps recorded in trace.json")
      ->check(CLI::Range(0, 1 << 16))
      ->capture_default_str();
  cmd->add_option("--verify", args->verify_rows,
                  "output rows checked against a double-precision reference")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_flag("--progress,!--no-progress", args->progress,
                "progress on stderr");
  return cmd;
}

int RunDemo(const DemoArgs& args) {
  auto config = BuildConfig(args);
  if (!config.ok()) {
    std::fprintf(stderr, "rpa demo: %s\n", config.status().ToString().c_str());
    return 1;
  }
  auto result = RunDemoLoop(*config);
  if (!result.ok()) {
    std::fprintf(stderr, "rpa demo: %s\n", result.status().ToString().c_str());
    return 1;
  }
  std::optional<StepReplay> replay;
  if (result->traced_shape.has_value()) {
    auto replayed = ReplayStep(*config, *result->traced_shape);
    if (replayed.ok()) {
      replay = std::move(*replayed);
    } else {
      std::fprintf(
          stderr, "rpa demo: replay of step %llu: %s\n",
          static_cast<unsigned long long>(result->traced_shape->step_index),
          replayed.status().ToString().c_str());
    }
  }
  const StepReplay* replay_ptr = replay.has_value() ? &*replay : nullptr;
  const std::string summary = DemoSummaryJson(*config, *result, replay_ptr);
  if (!args.out.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(args.out, ec);
    if (ec) {
      std::fprintf(stderr, "rpa demo: --out %s: %s\n", args.out.c_str(),
                   ec.message().c_str());
      return 1;
    }
    const std::filesystem::path dir(args.out);
    Status written = WriteText(dir / "summary.json", summary);
    if (written.ok()) {
      written = WriteText(
          dir / "trace.json",
          DemoTraceJson(*config, *result,
                        replay_ptr != nullptr ? replay_ptr->device_trace_json
                                              : std::string()));
    }
    if (!written.ok()) {
      std::fprintf(stderr, "rpa demo: %s\n", written.ToString().c_str());
      return 1;
    }
  }
  if (args.json) {
    std::fputs(summary.c_str(), stdout);
  } else {
    std::fputs(FormatDemoReport(*config, *result, replay_ptr).c_str(), stdout);
    if (!args.out.empty()) {
      std::printf(
          "\nwrote %s/summary.json and %s/trace.json (open it in "
          "https://ui.perfetto.dev)\n",
          args.out.c_str(), args.out.c_str());
    }
  }
  std::fflush(stdout);
  if (result->finished != result->requests) {
    std::fprintf(stderr, "rpa demo: only %llu of %llu requests finished\n",
                 static_cast<unsigned long long>(result->finished),
                 static_cast<unsigned long long>(result->requests));
    return 1;
  }
  if (result->max_scaled_error > 1e-4) {
    std::fprintf(stderr,
                 "rpa demo: verification failed: an output row differs from "
                 "the reference by %.3g x (1 + |expected|) (bound 1e-4)\n",
                 result->max_scaled_error);
    return 1;
  }
  return 0;
}

}  // namespace rpa::cli
