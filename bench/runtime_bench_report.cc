// The report of rpa_runtime_bench (the benchmarks are in runtime_bench.cc):
// main() runs the registered benchmarks through a console reporter that keeps
// the best (minimum) repetition of every counter, then prints the runtime
// issue's table: each rpa figure, its baseline from the same run, the target
// and pass/miss, in markdown (also written to --rpa_summary_out=FILE).

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace rpa::runtime {
namespace {

// Forwards to the console and keeps the minimum of every counter per
// benchmark over its repetitions.
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.run_type != Run::RT_Iteration || run.error_occurred) continue;
      for (const auto& [name, counter] : run.counters) {
        const std::string key = run.run_name.function_name +
                                (run.run_name.args.empty() ? "" : "/") +
                                run.run_name.args;
        auto [it, inserted] = best_[key].emplace(name, counter.value);
        if (!inserted) it->second = std::min(it->second, counter.value);
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }

  std::optional<double> Best(const std::string& benchmark,
                             const std::string& counter) const {
    auto row = best_.find(benchmark);
    if (row == best_.end()) return std::nullopt;
    auto value = row->second.find(counter);
    if (value == row->second.end()) return std::nullopt;
    return value->second;
  }

 private:
  std::map<std::string, std::map<std::string, double>> best_;
};

std::string Format(std::optional<double> value, const std::string& unit) {
  if (!value) return "n/a";
  double shown = *value;
  std::string shown_unit = unit;
  if (unit == "ns" && shown >= 10'000) {
    shown /= 1000;
    shown_unit = "us";
  }
  char text[64];
  std::snprintf(text, sizeof(text), shown >= 100 ? "%.0f" : "%.1f", shown);
  return shown_unit.empty() ? text : std::string(text) + " " + shown_unit;
}

std::string CpuModel() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0)
      return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

std::string Summary(const SummaryReporter& r) {
  auto best = [&r](const char* benchmark, const char* counter) {
    return r.Best(benchmark, counter);
  };
  // "47 ns (7.1x faster than Boost.Fiber)"
  auto versus = [](std::optional<double> ours, std::optional<double> base,
                   const char* base_name) {
    std::string text = Format(ours, "ns");
    if (ours && base && *ours > 0) {
      const double ratio = *base / *ours;
      text += " (" + Format(ratio >= 1 ? ratio : 1 / ratio, "") + "x " +
              (ratio >= 1 ? "faster" : "slower") + " than " + base_name + ")";
    }
    return text;
  };
  auto verdict = [](std::optional<double> value, double limit,
                    const char* unit) -> std::string {
    if (!value) return "n/a";
    if (*value <= limit) return "pass";
    std::string miss = "MISS by " + Format(*value - limit, unit);
    if (std::string(unit) == "ns") {
      miss += " (" + Format(*value / limit, "") + "x the target)";
    }
    return miss;
  };
  std::ostringstream out;
  auto row = [&out](const std::string& what, const std::string& ours,
                    const std::string& base, const std::string& target,
                    const std::string& result) {
    out << "| " << what << " | " << ours << " | " << base << " | " << target
        << " | " << result << " |\n";
  };
  const auto bf_yield = best("BM_BoostFiber_Yield", "ns_per_yield");
  const auto bf_join = best("BM_BoostFiber_LaunchJoin", "ns_per_task");
  const auto cv = best("BM_CondVar_HandOff", "ns_per_handoff");
  const std::string bf_join_text =
      "Boost.Fiber launch+join " + Format(bf_join, "ns");
  const std::string cv_text = "condvar hand-off " + Format(cv, "ns");
  const auto yield = best("BM_Executor_Yield", "ns_per_yield");
  const auto spawn = best("BM_Executor_SpawnJoin/in_task", "ns_per_task");
  const auto spawn64 =
      best("BM_Executor_SpawnJoin/batch64_in_task", "ns_per_task");
  const auto ping =
      best("BM_Channel_CrossWorkerHandOff/ping_pong", "ns_per_handoff");
  constexpr const char* kWake = "BM_Executor_ForeignWakeup";
  constexpr const char* kCvWake = "BM_CondVar_ForeignWakeup";
  constexpr const char* kOverhead2 = "BM_Executor_Overhead1us/workers:2";
  constexpr const char* kOverhead1 = "BM_Executor_Overhead1us/workers:1";
  const double spawn_limit = bf_join ? std::min(120.0, *bf_join / 3) : 120.0;

  out << "| Measurement | rpa | Baseline (same run) | Target | Result |\n"
      << "|---|---|---|---|---|\n";
  row("Yield between two fibers, one worker (per yield)",
      versus(yield, bf_yield, "Boost.Fiber"),
      "Boost.Fiber yield " + Format(bf_yield, "ns") +
          "; Boost.Context switch round trip " +
          Format(best("BM_BoostContext_SwitchRoundTrip", "ns_per_round_trip"),
                 "ns"),
      "<= 25 ns", verdict(yield, 25, "ns"));
  row("Spawn+run+join of an empty task, in a task",
      versus(spawn, bf_join, "Boost.Fiber"), bf_join_text,
      "<= 120 ns and <= 1/3 of Boost.Fiber: " + Format(spawn_limit, "ns"),
      verdict(spawn, spawn_limit, "ns"));
  row("Spawn+run+join, 64 spawned, Yield, 64 joined, in a task (per task)",
      versus(spawn64, bf_join, "Boost.Fiber"), bf_join_text,
      "variant of the row above: " + Format(spawn_limit, "ns"),
      verdict(spawn64, spawn_limit, "ns"));
  row("Spawn+join from the caller's thread, 0 workers (Join drives)",
      Format(best("BM_Executor_SpawnJoin/from_thread_0_workers", "ns_per_task"),
             "ns"),
      bf_join_text, "reported", "-");
  row("Spawn+join from a foreign thread, 1 worker (Join blocks)",
      Format(best("BM_Executor_SpawnJoin/from_thread_1_worker", "ns_per_task"),
             "ns"),
      cv_text + " (x2 for a round trip)", "reported", "-");
  row("Cross-worker hand-off through a Channel, ping-pong (per hand-off)",
      versus(ping, cv, "condvar"), cv_text, "<= 1 us",
      verdict(ping, 1000, "ns"));
  row("Cross-worker Channel stream, capacity 64 (per value)",
      Format(best("BM_Channel_CrossWorkerHandOff/stream", "ns_per_item"), "ns"),
      cv_text, "reported", "-");
  for (const char* p : {"p50_ns", "p99_ns"}) {
    row(std::string("Wake-up of a parked executor by a foreign thread, ") +
            std::string(p, 3),
        Format(best(kWake, p), "ns"),
        "condvar wake-up of a parked thread " + Format(best(kCvWake, p), "ns"),
        "reported", "-");
  }
  // "16.2 % (159 ns of extra worker time per task)"
  auto overhead = [&best](const char* benchmark) {
    return Format(best(benchmark, "overhead_pct"), "%") + " (" +
           Format(best(benchmark, "extra_cpu_ns_per_task"), "ns") +
           " of extra worker time per task)";
  };
  row("Executor overhead, 1 us tasks on 2 workers", overhead(kOverhead2),
      "2 plain threads (work " +
          Format(best(kOverhead2, "work_ns_per_task"), "ns") + " per task)",
      "< 5 %", verdict(best(kOverhead2, "overhead_pct"), 5, "%"));
  row("Executor overhead, 1 us tasks on 1 worker (diagnostic)",
      overhead(kOverhead1), "1 plain thread", "reported", "-");
  constexpr const char* kWaitGroup2 =
      "BM_Executor_Overhead1usWaitGroup/workers:2";
  row("Executor overhead, 1 us detached tasks + WaitGroup on 2 workers",
      overhead(kWaitGroup2),
      "2 plain threads (work " +
          Format(best(kWaitGroup2, "work_ns_per_task"), "ns") + " per task)",
      "< 5 % (same target, second pattern)",
      verdict(best(kWaitGroup2, "overhead_pct"), 5, "%"));
  row("Executor overhead, 1 us detached tasks + WaitGroup on 1 worker "
      "(diagnostic)",
      overhead("BM_Executor_Overhead1usWaitGroup/workers:1"), "1 plain thread",
      "reported", "-");
  row("io_uring NOP, one per submit (baseline only)", "-",
      Format(best("BM_IoUring_Nop", "ns_per_nop"), "ns"), "-", "-");
  row("io_uring NOP, 32 per submit (baseline only)", "-",
      Format(best("BM_IoUring_NopBatched", "ns_per_nop"), "ns"), "-", "-");
  out << "\nBest of the repetitions for each figure. Machine: " << CpuModel()
      << ", " << std::thread::hardware_concurrency() << " CPUs. Compiler: gcc "
      << __VERSION__
#ifdef NDEBUG
      << ", NDEBUG (release)"
#else
      << ", assertions on (NOT a release build)"
#endif
      << ".\n";
  return out.str();
}

}  // namespace
}  // namespace rpa::runtime

int main(int argc, char** argv) {
  // Our flag, then the benchmark's, with five repetitions unless asked
  // otherwise.
  std::string summary_path;
  std::vector<char*> args;
  bool has_repetitions = false;
  constexpr std::string_view kSummaryFlag = "--rpa_summary_out=";
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind(kSummaryFlag, 0) == 0) {
      summary_path = arg.substr(kSummaryFlag.size());
      continue;
    }
    if (arg.rfind("--benchmark_repetitions", 0) == 0) has_repetitions = true;
    args.push_back(argv[i]);
  }
  std::string repetitions = "--benchmark_repetitions=5";
  if (!has_repetitions) args.push_back(repetitions.data());
  int args_count = static_cast<int>(args.size());
  benchmark::Initialize(&args_count, args.data());
  if (benchmark::ReportUnrecognizedArguments(args_count, args.data())) return 1;

  rpa::runtime::SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();

  const std::string summary = rpa::runtime::Summary(reporter);
  std::cout << "\n" << summary;
  if (!summary_path.empty()) {
    std::ofstream file(summary_path);
    file << summary;
    if (!file) {
      std::cerr << "cannot write " << summary_path << "\n";
      return 1;
    }
  }
  return 0;
}
