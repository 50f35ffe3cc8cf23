#pragma once
// Tune: regenerates a tuning table (tuning_table.h) for a target by search.
//
// For each representative shape of the Llama-3-8B attention geometry (Hq 32,
// Hkv 8, D 128, bf16 cache, page 16; listed in scheduler/README.md) and each
// kernel, every candidate block-size combination is run and timed:
//   - device target: attention::RunOnDevice with the pipelined schedule; the
//     figure is the simulated makespan (deterministic, so one run each);
//   - host: attention::Run on an executor with `host_threads` workers; the
//     figure is the best of `repetitions` wall-clock runs (the machine is
//     shared and noisy).
// The fastest candidate becomes the shape's entry. `quick` tunes small shapes
// with few candidates (for tests and smoke runs), never for a shipped table.
//
// Thread-safety: one Tune at a time per process is sensible (it measures).
// Errors: InvalidArgument / NotFound for the target; anything a run returns.
//
// Example:
//   RPA_ASSIGN_OR_RETURN(TuningTable table, Tune({.target = "tpu7x"}));
//   RPA_RETURN_IF_ERROR(table.Save("scheduler/tuning/tpu7x.json"));
#include <functional>
#include <string>
#include <string_view>

#include "rpa/runtime/status.h"
#include "rpa/scheduler/tuning_table.h"

namespace rpa::scheduler {

struct TuneOptions {
  std::string target = "host";  // "host", a device preset or a JSON file
  int host_threads = 2;
  int repetitions = 3;
  bool quick = false;
  // Called with one line per candidate measured (for a progress display).
  std::function<void(std::string_view line)> progress;
};

StatusOr<TuningTable> Tune(const TuneOptions& options);

}  // namespace rpa::scheduler
