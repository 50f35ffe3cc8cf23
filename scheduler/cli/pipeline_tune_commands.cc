// `rpa bench pipeline` and `rpa tune`.

#include <cstdio>
#include <string>

#include "commands.h"
#include <nlohmann/json.hpp>

#include "rpa/scheduler/pipeline_bench.h"
#include "rpa/scheduler/tuner.h"

namespace rpa::cli {

int RunBenchPipeline(const BenchPipelineArgs& args) {
  scheduler::PipelineBenchOptions options;
  options.device = args.device == "none" ? "" : args.device;
  options.host = args.host;
  options.page_size = static_cast<std::uint32_t>(args.page_size);
  options.host_repetitions = args.repetitions;
  options.filter = args.filter;
  options.trace_dir = args.trace_dir;
  if (!args.json) {
    std::fprintf(
        stderr, "rpa bench pipeline: device %s, host rows %s, page %d\n",
        options.device.empty() ? "none" : options.device.c_str(),
        options.host ? "on (best of N, wall clock)" : "off", args.page_size);
  }
  auto rows = scheduler::RunPipelineBench(options);
  if (!rows.ok()) {
    std::fprintf(stderr, "rpa bench pipeline: %s\n",
                 rows.status().ToString().c_str());
    return 1;
  }
  if (args.json) {
    nlohmann::json array = nlohmann::json::array();
    for (const scheduler::PipelineRow& row : *rows) {
      nlohmann::json busy = nlohmann::json::object();
      for (const auto& b : row.busy) busy[b.stage] = b.busy_us;
      array.push_back({{"name", row.name},
                       {"target", row.target},
                       {"schedule", row.schedule},
                       {"makespan_us", row.makespan_us},
                       {"overlap_efficiency", row.overlap_efficiency},
                       {"mbu", row.mbu},
                       {"mfu", row.mfu},
                       {"busy_us", busy}});
    }
    std::printf("%s\n", array.dump(2).c_str());
    return 0;
  }
  std::printf("\n%-16s %-8s %-10s %12s %8s %6s %6s  %s\n", "name", "target",
              "schedule", "makespan_us", "overlap", "MBU", "MFU",
              "busy us (per unit)");
  const scheduler::PipelineRow* serial = nullptr;
  for (const scheduler::PipelineRow& row : *rows) {
    std::string busy;
    for (const auto& b : row.busy) {
      if (b.stage.rfind("dma engine", 0) == 0) continue;  // in the JSON
      busy +=
          b.stage + " " + std::to_string(static_cast<long>(b.busy_us)) + "  ";
    }
    std::printf("%-16s %-8s %-10s %12.1f %8.3f %5.1f%% %5.1f%%  %s\n",
                row.name.c_str(), row.target.c_str(), row.schedule.c_str(),
                row.makespan_us, row.overlap_efficiency, 100 * row.mbu,
                100 * row.mfu, busy.c_str());
    if (!row.trace_file.empty()) {
      std::printf("%-16s trace: %s\n", "", row.trace_file.c_str());
    }
    if (row.schedule == "serial") serial = &row;
    if (row.schedule == "pipelined" && serial != nullptr &&
        serial->name == row.name && serial->target == row.target) {
      std::printf("%-16s %-8s serial / pipelined makespan: %.2fx\n", "",
                  row.target.c_str(), serial->makespan_us / row.makespan_us);
    }
  }
  return 0;
}

int RunTune(const TuneArgs& args) {
  scheduler::TuneOptions options;
  options.target = args.target;
  options.host_threads = args.threads;
  options.repetitions = args.repetitions;
  options.quick = args.quick;
  options.progress = [](std::string_view line) {
    std::fprintf(stderr, "  %.*s\n", static_cast<int>(line.size()),
                 line.data());
  };
  std::fprintf(stderr, "rpa tune --target %s%s\n", args.target.c_str(),
               args.quick ? " --quick" : "");
  auto table = scheduler::Tune(options);
  if (!table.ok()) {
    std::fprintf(stderr, "rpa tune: %s\n", table.status().ToString().c_str());
    return 1;
  }
  if (args.out.empty()) {
    std::printf("%s", table->ToJson().c_str());
    return 0;
  }
  if (Status status = table->Save(args.out); !status.ok()) {
    std::fprintf(stderr, "rpa tune: %s\n", status.ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "wrote %zu entries to %s\n", table->entries().size(),
               args.out.c_str());
  return 0;
}

}  // namespace rpa::cli
