#pragma once

// The subcommands of the `rpa` tool. Each returns the process exit code and
// prints its errors on stderr; none lets an exception escape.

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace rpa::cli {

struct AttendArgs {
  std::string case_dir;
  std::string out_dir;
  int threads = 1;
};
int RunAttend(const AttendArgs& args);

struct RooflineArgs {
  int threads = 1;
  bool json = false;
  int buffer_mib = 512;
};
int RunRoofline(const RooflineArgs& args);

struct BenchAttentionArgs {
  std::vector<int> threads = {1, 2};
  int repetitions = 5;
  bool json = false;
  std::string filter;        // POSIX extended regex, searched in the row name
  double min_time_ms = 100;  // per repetition (several Runs if one is shorter)
  int buffer_mib = 512;      // roofline probe buffer
  // false: every decode item on the AVX2 kernel (for A/B runs).
  bool avx512_decode = true;
};
int RunBenchAttention(const BenchAttentionArgs& args);

struct BenchPipelineArgs {
  std::string device = "tpu7x";  // "" or "none": no device rows
  bool host = true;
  int page_size = 128;
  int repetitions = 3;
  bool json = false;
  std::string filter;
  std::string trace_dir;
};
int RunBenchPipeline(const BenchPipelineArgs& args);

struct TuneArgs {
  std::string target = "host";
  std::string out;  // "" = scheduler/tuning/<target>.json is not assumed:
                    // print to stdout
  int threads = 2;
  int repetitions = 3;
  bool quick = false;
};
int RunTune(const TuneArgs& args);

struct DemoArgs {
  int requests = 0;            // 0 = the target's default (see demo_command.cc)
  std::string trace;           // CSV to replay (its first `requests` rows)
  std::string azure = "conv";  // length distribution without --trace
  std::string azure_dir;       // where splitwise_{conv,code}.csv are
  std::string target = "host";
  int layers = 0;  // 0 = the target's default
  std::uint64_t seed = 2023;
  std::string out;  // directory for trace.json and summary.json
  int threads = 2;
  bool json = false;
  double rate = 0;             // requests/s (Poisson); 0 = the trace's own
  int concurrency = 0;         // > 0: closed loop with this many in flight
  double time_scale = 1.0;     // --trace: arrival times multiplied by this
  double length_scale = 0;     // 0 = the target's default
  int max_prompt_tokens = -1;  // -1 = default, 0 = no cap
  int max_output_tokens = -1;
  double shared_prefix_fraction = 0;
  int shared_prefixes = 4;
  int shared_prefix_tokens = 512;
  int kv_budget_mib = 0;  // 0 = default
  int max_tokens_per_step = 512;
  int chunk_prefill_tokens = 256;
  std::string preemption = "swap";
  bool prefix_caching = true;
  int trace_steps = 4;
  int verify_rows = 16;
  bool progress = true;
};
int RunDemo(const DemoArgs& args);
// Registers `rpa demo` and its options on `app`, parsing into *args.
CLI::App* AddDemoCommand(CLI::App& app, DemoArgs* args);

}  // namespace rpa::cli
