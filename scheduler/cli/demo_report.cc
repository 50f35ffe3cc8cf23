// What `rpa demo` prints and writes (demo.h): the report, summary.json and
// trace.json.

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "demo.h"
#include <nlohmann/json.hpp>

namespace rpa::cli {
namespace {

using Json = nlohmann::ordered_json;

constexpr double kSpecErrorBound = 1e-4;  // SPEC section 4

double PerSecond(double count, double seconds) {
  return seconds > 0 ? count / seconds : 0.0;
}

double Pct(const std::vector<double>& values, double p) {
  return scheduler::Percentile(values, p);
}

// NaN (no sample) as JSON null.
Json Number(double value) {
  return std::isfinite(value) ? Json(value) : Json(nullptr);
}

std::string Bytes(double bytes) {
  if (bytes >= 1024.0 * 1024 * 1024) {
    return fmt::format("{:.2f} GiB", bytes / (1024.0 * 1024 * 1024));
  }
  if (bytes >= 1024.0 * 1024) {
    return fmt::format("{:.1f} MiB", bytes / (1024.0 * 1024));
  }
  if (bytes >= 1024.0) return fmt::format("{:.1f} KiB", bytes / 1024.0);
  return fmt::format("{:.0f} B", bytes);
}

std::string Ms(double ms) {
  if (!std::isfinite(ms)) return "-";
  return ms >= 100 ? fmt::format("{:.0f} ms", ms)
                   : fmt::format("{:.2f} ms", ms);
}

std::string StorageName(memory::StorageType storage) {
  switch (storage) {
    case memory::StorageType::kF32:
      return "f32";
    case memory::StorageType::kF16:
      return "f16";
    case memory::StorageType::kBf16:
      return "bf16";
  }
  return "?";
}

std::uint64_t Preemptions(const scheduler::EngineStats& s) {
  return s.preemptions_swap + s.preemptions_recompute;
}

bool VerificationPassed(const DemoResult& r) {
  return r.max_scaled_error <= kSpecErrorBound && r.token_mismatches == 0;
}

// Bytes of one page across every layer.
double PageBytes(const DemoConfig& c) {
  const auto& m = c.engine.model;
  const double element = m.storage == memory::StorageType::kF32 ? 4 : 2;
  return static_cast<double>(c.engine.page_size_tokens) * 2.0 * m.num_kv_heads *
         m.head_dim * element * m.num_layers;
}

}  // namespace

std::string FormatDemoReport(const DemoConfig& c, const DemoResult& r,
                             const StepReplay* replay) {
  const auto& m = c.engine.model;
  const scheduler::EngineStats& s = r.stats;
  std::string out;
  auto line = [&out](const std::string& text) {
    out += text;
    out += '\n';
  };
  line(fmt::format(
      "rpa demo: Llama-3-8B attention shapes (Hq {}, Hkv {}, D {}, {} cache, "
      "page {} tokens), target {}, {} worker threads",
      m.num_q_heads, m.num_kv_heads, m.head_dim, StorageName(m.storage),
      c.engine.page_size_tokens, c.engine.target, c.engine.num_workers));
  if (!c.notes.empty()) {
    line("scaled down to fit this machine:");
    for (const std::string& note : c.notes) line("  - " + note);
  }
  line("workload: " + c.workload_description);
  line("          " + c.workload_totals);
  line("");
  line(fmt::format("  requests            {} finished of {}", r.finished,
                   r.requests));
  line(fmt::format(
      "  tokens              {} prompt (workload), {} output; {} prefill and "
      "{} decode tokens computed",
      r.prompt_tokens, r.output_tokens, s.prefill_tokens, s.decode_tokens));
  line(fmt::format(
      "  wall time           {:.2f} s busy ({} steps; {:.2f} s of idle time "
      "between arrivals skipped)",
      r.wall_s, r.steps, r.skipped_idle_s));
  line(fmt::format(
      "  throughput          prefill {:.0f} tok/s, decode {:.0f} tok/s, "
      "output {:.0f} tok/s, {:.2f} requests/s",
      PerSecond(static_cast<double>(s.prefill_tokens), r.wall_s),
      PerSecond(static_cast<double>(s.decode_tokens), r.wall_s),
      PerSecond(static_cast<double>(r.output_tokens), r.wall_s),
      PerSecond(static_cast<double>(r.finished), r.wall_s)));
  line(fmt::format(
      "  time/output token   p50 {}, p99 {} ({} requests with "
      ">= 2 output tokens)",
      Ms(Pct(r.tpot_ms, 50)), Ms(Pct(r.tpot_ms, 99)), r.tpot_ms.size()));
  line(fmt::format("  time to 1st token   p50 {}, p99 {}",
                   Ms(Pct(r.ttft_ms, 50)), Ms(Pct(r.ttft_ms, 99))));
  line(fmt::format(
      "  step                p50 {}, p99 {}; batches up to {} tokens / {} "
      "requests",
      Ms(Pct(r.step_ms, 50)), Ms(Pct(r.step_ms, 99)), r.max_batch_tokens,
      r.max_batch_requests));
  line(fmt::format(
      "  kernel choices      decode {}, prefill {}, mixed {} calls (one per "
      "layer per non-empty batch range)",
      s.kernel_calls[0], s.kernel_calls[1], s.kernel_calls[2]));
  if (replay != nullptr) {
    for (std::size_t i = 0; i < replay->kernel_choices.size(); ++i) {
      const std::string label =
          i == 0 ? fmt::format("step {}:", replay->step_index) : "";
      line(fmt::format("  {:<18}{}", label, replay->kernel_choices[i]));
    }
  }
  line(fmt::format(
      "  prefix cache        {}hit rate {:.1f} % of looked-up prompt tokens "
      "({} of {} tokens; {} of {} admissions hit); {} pages evicted",
      c.engine.enable_prefix_caching ? "" : "off; ", s.prefix_hit_rate * 100,
      s.prefix_hit_tokens, s.prefix_query_tokens, s.prefix_hits,
      s.prefix_lookups, s.prefix_evictions));
  line(fmt::format(
      "  preemptions         {} ({} swap, {} recompute); swapped out {}, in "
      "{}; {} swap I/O errors",
      Preemptions(s), s.preemptions_swap, s.preemptions_recompute,
      Bytes(static_cast<double>(s.swap_out_bytes)),
      Bytes(static_cast<double>(s.swap_in_bytes)), s.swap_io_errors));
  const double pages = std::max<double>(1, s.num_pages);
  line(fmt::format(
      "  pages               held by requests: peak {} of {} ({:.1f} %), mean "
      "{:.0f}; with the prefix cache's reusable pages: peak {}, mean {:.0f}; "
      "{} per page (all layers)",
      r.peak_request_pages, s.num_pages, r.peak_request_pages / pages * 100,
      r.mean_request_pages, r.peak_used_pages, r.mean_used_pages,
      Bytes(PageBytes(c))));
  line(fmt::format(
      "  time split          q/k/v fill + sampling {:.2f} s, attention "
      "(Attend) {:.2f} s, Plan + Commit {:.2f} s, verification {:.2f} s",
      r.model_s, r.attend_s, r.engine_s, r.verify_s));
  line(fmt::format(
      "  verification        {} output rows ({} of preempted or prefix-hit "
      "requests) against the model's double-precision reference: max error "
      "{:.2e} x (1 + |expected|) (bound {:.0e}): {}",
      r.verified_rows, r.verified_reused_rows, r.max_scaled_error,
      kSpecErrorBound, VerificationPassed(r) ? "OK" : "FAILED"));
  if (s.simulated) {
    const double steps = std::max<double>(1, static_cast<double>(s.steps));
    const double full_model = 32.0 / m.num_layers;
    line("");
    line(fmt::format("simulated {} (attention only, {} layers):",
                     c.engine.target, m.num_layers));
    line(fmt::format(
        "  step time           mean {:.1f} us, last {:.1f} us; total {:.3f} s "
        "for {} steps",
        s.simulated_us / steps, s.last_step_simulated_us, s.simulated_us * 1e-6,
        s.steps));
    line(fmt::format("  MBU {:.1f} %, MFU {:.1f} %  ({} moved, {:.3g} FLOPs)",
                     s.mbu * 100, s.mfu * 100, Bytes(s.simulated_bytes),
                     s.simulated_flops));
    line(fmt::format(
        "  at 32 layers        {:.1f} us of attention per step, {:.0f} output "
        "tok/s if attention were the whole step",
        s.simulated_us / steps * full_model,
        PerSecond(static_cast<double>(r.output_tokens),
                  s.simulated_us * 1e-6 * full_model)));
    if (replay != nullptr && replay->simulated) {
      line(fmt::format(
          "  step {} replayed    {:.1f} us for one layer (MBU {:.1f} %, MFU "
          "{:.1f} %); its device trace is in trace.json",
          replay->step_index, replay->simulated_us, replay->mbu * 100,
          replay->mfu * 100));
    }
  }
  return out;
}

std::string DemoSummaryJson(const DemoConfig& c, const DemoResult& r,
                            const StepReplay* replay) {
  const scheduler::EngineStats& s = r.stats;
  const auto& m = c.engine.model;
  Json j;
  j["requests"] = r.requests;
  j["finished_requests"] = r.finished;
  j["prompt_tokens"] = r.prompt_tokens;
  j["output_tokens"] = r.output_tokens;
  j["output_tokens_per_s"] =
      PerSecond(static_cast<double>(r.output_tokens), r.wall_s);
  j["prefill_tokens"] = s.prefill_tokens;
  j["decode_tokens"] = s.decode_tokens;
  j["prefill_tokens_per_s"] =
      PerSecond(static_cast<double>(s.prefill_tokens), r.wall_s);
  j["decode_tokens_per_s"] =
      PerSecond(static_cast<double>(s.decode_tokens), r.wall_s);
  j["tpot_p50_ms"] = Number(Pct(r.tpot_ms, 50));
  j["tpot_p99_ms"] = Number(Pct(r.tpot_ms, 99));
  j["ttft_p50_ms"] = Number(Pct(r.ttft_ms, 50));
  j["ttft_p99_ms"] = Number(Pct(r.ttft_ms, 99));
  j["step_p50_ms"] = Number(Pct(r.step_ms, 50));
  j["step_p99_ms"] = Number(Pct(r.step_ms, 99));
  j["steps"] = r.steps;
  j["prefix_hit_rate"] = s.prefix_hit_rate;
  j["prefix_hit_tokens"] = s.prefix_hit_tokens;
  j["prefix_query_tokens"] = s.prefix_query_tokens;
  j["preemptions"] = Preemptions(s);
  j["preemptions_swap"] = s.preemptions_swap;
  j["preemptions_recompute"] = s.preemptions_recompute;
  j["swap_io_errors"] = s.swap_io_errors;
  j["kernel_calls"] = {{"decode", s.kernel_calls[0]},
                       {"prefill", s.kernel_calls[1]},
                       {"mixed", s.kernel_calls[2]}};
  if (replay != nullptr) {
    j["kernel_choices"] = {{"step", replay->step_index},
                           {"ranges", replay->kernel_choices}};
  }
  j["pages"] = {{"total", s.num_pages},
                {"peak_request", r.peak_request_pages},
                {"mean_request", r.mean_request_pages},
                {"peak_used", r.peak_used_pages},
                {"mean_used", r.mean_used_pages},
                {"page_size_tokens", c.engine.page_size_tokens}};
  j["wall_s"] = r.wall_s;
  j["skipped_idle_s"] = r.skipped_idle_s;
  j["time_split_s"] = {{"model", r.model_s},
                       {"attend", r.attend_s},
                       {"plan_commit", r.engine_s},
                       {"verify", r.verify_s}};
  j["verification"] = {
      {"rows", r.verified_rows},
      {"rows_of_preempted_or_prefix_hit", r.verified_reused_rows},
      {"max_scaled_error", r.max_scaled_error},
      {"bound", kSpecErrorBound},
      {"passed", VerificationPassed(r)}};
  j["config"] = {{"target", c.engine.target},
                 {"layers", m.num_layers},
                 {"num_q_heads", m.num_q_heads},
                 {"num_kv_heads", m.num_kv_heads},
                 {"head_dim", m.head_dim},
                 {"cache", StorageName(m.storage)},
                 {"workers", c.engine.num_workers},
                 {"max_tokens_per_step", c.engine.max_tokens_per_step},
                 {"seed", c.seed},
                 {"workload", c.workload_description},
                 {"workload_totals", c.workload_totals},
                 {"notes", c.notes}};
  if (s.simulated) {
    j["simulated"] = {
        {"step_us_mean",
         s.simulated_us / std::max<double>(1, static_cast<double>(s.steps))},
        {"last_step_us", s.last_step_simulated_us},
        {"total_us", s.simulated_us},
        {"bytes", s.simulated_bytes},
        {"flops", s.simulated_flops},
        {"mbu", s.mbu},
        {"mfu", s.mfu}};
    if (replay != nullptr && replay->simulated) {
      j["simulated"]["replayed_step"] = {{"step", replay->step_index},
                                         {"layer_us", replay->simulated_us},
                                         {"mbu", replay->mbu},
                                         {"mfu", replay->mfu}};
    }
  }
  return j.dump(2) + "\n";
}

std::string DemoTraceJson(const DemoConfig& c, const DemoResult& r,
                          const std::string& device_trace_json) {
  Json events = Json::array();
  auto meta = [&events](int pid, int tid, const char* what,
                        const std::string& name) {
    events.push_back({{"name", what},
                      {"ph", "M"},
                      {"pid", pid},
                      {"tid", tid},
                      {"args", {{"name", name}}}});
  };
  meta(1, 0, "process_name", fmt::format("rpa demo ({})", c.engine.target));
  meta(1, 0, "thread_name", "engine: plan / commit");
  meta(1, 1, "thread_name", "model: q/k/v fill");
  meta(1, 2, "thread_name", "attention (Attend)");
  for (const TraceEvent& e : r.trace) {
    Json event = {{"name", e.name},
                  {"ph", std::string(1, e.phase)},
                  {"ts", e.ts_us},
                  {"pid", 1},
                  {"tid", e.tid}};
    if (e.phase == 'X') event["dur"] = e.dur_us;
    event["args"] =
        Json::parse(e.args_json, nullptr, /*allow_exceptions=*/false);
    events.push_back(std::move(event));
  }
  // Counters over the whole run (at most ~2000 samples: every n-th step).
  const std::size_t stride = r.timeline.size() / 2000 + 1;
  for (std::size_t i = 0; i < r.timeline.size(); i += stride) {
    const StepSample& t = r.timeline[i];
    events.push_back(
        {{"name", "batch"},
         {"ph", "C"},
         {"ts", t.ts_us},
         {"pid", 1},
         {"tid", 0},
         {"args", {{"tokens", t.tokens}, {"requests", t.requests}}}});
    events.push_back({{"name", "KV pages used"},
                      {"ph", "C"},
                      {"ts", t.ts_us},
                      {"pid", 1},
                      {"tid", 0},
                      {"args",
                       {{"requests", t.request_pages},
                        {"prefix cache", t.used_pages - t.request_pages}}}});
  }
  if (!device_trace_json.empty()) {
    Json device =
        Json::parse(device_trace_json, nullptr, /*allow_exceptions=*/false);
    const Json* list = nullptr;
    if (device.is_array()) list = &device;
    if (device.is_object() && device.contains("traceEvents") &&
        device["traceEvents"].is_array()) {
      list = &device["traceEvents"];
    }
    if (list != nullptr) {
      meta(2, 0, "process_name",
           fmt::format("simulated {}: one layer of step {} (simulated us)",
                       c.engine.target,
                       r.traced_steps.empty() ? 0 : r.traced_steps.front()));
      for (Json event : *list) {
        // Our own process name replaces the device's (which names no step).
        if (event.is_object() && event.value("name", "") != "process_name") {
          event["pid"] = 2;
          events.push_back(std::move(event));
        }
      }
    }
  }
  Json trace;
  trace["traceEvents"] = std::move(events);
  trace["displayTimeUnit"] = "ms";
  trace["otherData"] = {{"traced_steps", r.traced_steps},
                        {"clock",
                         "wall time since the start of the run, "
                         "plus skipped idle time"}};
  return trace.dump() + "\n";
}

}  // namespace rpa::cli
