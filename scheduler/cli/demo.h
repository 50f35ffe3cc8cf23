#pragma once

// `rpa demo`, inside: the serving loop that drives one Engine with a
// SyntheticModel over a request stream (demo_driver.cc), and the report,
// summary.json and trace.json it produces (demo_report.cc). The command
// (demo_command.cc) turns the flags into a DemoConfig.
//
// The loop is one thread, as engine.h asks (an Engine is not thread-safe):
//   admit every request whose arrival time has come (AddRequest);
//   Plan; per layer: fill the step's q / k / v rows from the model, Attend;
//   sample one token per producing request (the model's NextToken of the
//   token's context); Commit; record token times.
// Time is the host's wall clock from the start of the run, except that when
// the engine is idle and the next request has not arrived yet, the clock
// jumps to that arrival (no sleeping): an idle server costs no wall time, and
// latencies count only the time a request actually waited for the engine.
// Closed loop (concurrency > 0): arrival times are ignored, and a new request
// is admitted whenever fewer than `concurrency` are live.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "rpa/runtime/status.h"
#include "rpa/scheduler/engine.h"
#include "rpa/scheduler/workload.h"

namespace rpa::cli {

struct DemoConfig {
  scheduler::EngineOptions engine;
  std::uint64_t seed = 2023;
  std::vector<scheduler::WorkloadRequest> requests;
  std::uint32_t concurrency = 0;  // > 0: closed loop
  // Steps recorded in trace.json (the first ones whose batch holds both
  // decode and prompt tokens; the first steps if there are none).
  std::uint32_t trace_steps = 4;
  // Output rows checked against SyntheticModel::Reference (spread over the
  // run: one row of one layer every few steps).
  std::uint32_t verify_rows = 16;
  bool progress = true;  // progress on stderr
  // What the report prints about the configuration (scaled-down settings,
  // where lengths came from).
  std::vector<std::string> notes;
  std::string workload_description;  // the source and the arrivals
  std::string workload_totals;       // request and token counts
};

// One Chrome trace event ("X" complete event or "C" counter).
struct TraceEvent {
  std::string name;
  char phase = 'X';
  double ts_us = 0;
  double dur_us = 0;
  int tid = 0;
  std::string args_json = "{}";  // a JSON object
};

// The shape of one step's batch, in batch order (for the kernel-choice and
// device-trace replay of demo_step_replay.cc).
struct StepShape {
  std::uint64_t step_index = 0;
  std::vector<std::int32_t> q_lens;
  std::vector<std::int32_t> kv_lens;
  std::array<std::int32_t, 3> distribution{};
};

// One step on the timeline (trace.json counters).
struct StepSample {
  double ts_us = 0;
  std::uint32_t tokens = 0;
  std::uint32_t requests = 0;
  std::uint32_t used_pages = 0;     // held by requests or the prefix cache
  std::uint32_t request_pages = 0;  // held by requests
};

struct DemoResult {
  std::uint64_t requests = 0;
  std::uint64_t finished = 0;
  std::uint64_t prompt_tokens = 0;  // of the workload (shared prefix included)
  std::uint64_t output_tokens = 0;  // tokens committed
  double wall_s = 0;                // busy wall time of the serving loop
  double skipped_idle_s = 0;        // idle time the clock jumped over
  std::vector<double> tpot_ms;      // per request with >= 2 output tokens
  std::vector<double> ttft_ms;      // per request
  std::vector<double> step_ms;      // per non-empty step
  std::uint64_t steps = 0;
  std::uint64_t plan_errors = 0;  // swap I/O errors Plan reported
  std::uint64_t max_batch_tokens = 0;
  std::uint64_t max_batch_requests = 0;
  // Pages per step: used = held by requests or the prefix cache; request =
  // held by requests (used minus the cache's evictable pages).
  double mean_used_pages = 0;
  std::uint32_t peak_used_pages = 0;
  double mean_request_pages = 0;
  std::uint32_t peak_request_pages = 0;
  scheduler::EngineStats stats;
  // Verification against the double-precision reference.
  std::uint32_t verified_rows = 0;
  // Of those, rows of requests that had been preempted or reused cached
  // pages (the paths where wrong KV would hide best).
  std::uint32_t verified_reused_rows = 0;
  double max_scaled_error = 0;
  std::uint64_t token_mismatches = 0;  // plan tokens != the request's tokens
  // Time split of the loop (wall): model (q/k/v fill + sampling), attention
  // (inside Attend), engine bookkeeping (Plan + Commit).
  double model_s = 0;
  double attend_s = 0;
  double engine_s = 0;
  double verify_s = 0;
  std::vector<TraceEvent> trace;  // the recorded steps
  std::vector<std::uint64_t> traced_steps;
  std::optional<StepShape> traced_shape;  // the first traced step's batch
  std::vector<StepSample> timeline;       // every non-empty step
};

// Runs the whole workload. Errors: the Engine's (Create, AddRequest, Attend,
// Commit; the message names the call), or Internal when the verification or
// the token check fails or the run stalls (no progress in many steps).
StatusOr<DemoResult> RunDemoLoop(const DemoConfig& config);

// One traced step replayed outside the engine on one layer of a scratch
// cache with the same (q_len, kv_len) sequences: the kernel selector's
// choice for it, and on a simulated target one device run of it with its
// trace (DeviceRunReport::trace_json) and simulated time.
struct StepReplay {
  std::uint64_t step_index = 0;
  std::vector<std::string> kernel_choices;  // one line per used range
  bool simulated = false;
  double simulated_us = 0;
  double mbu = 0;
  double mfu = 0;
  std::string device_trace_json;
};
StatusOr<StepReplay> ReplayStep(const DemoConfig& config,
                                const StepShape& step);

// The human-readable report (stdout).
std::string FormatDemoReport(const DemoConfig& config, const DemoResult& result,
                             const StepReplay* replay);
// summary.json's text.
std::string DemoSummaryJson(const DemoConfig& config, const DemoResult& result,
                            const StepReplay* replay);
// trace.json's text (Chrome trace-event JSON for Perfetto): the recorded
// steps, plus `device_trace_json` (a device run's own trace-event JSON,
// possibly empty) under its own process.
std::string DemoTraceJson(const DemoConfig& config, const DemoResult& result,
                          const std::string& device_trace_json);

}  // namespace rpa::cli
