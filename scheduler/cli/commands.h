#pragma once

// The subcommands of the `rpa` tool. Each returns the process exit code and
// prints its errors on stderr; none lets an exception escape.

#include <string>
#include <vector>

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
  std::string filter;        // ECMAScript regex, searched in the row name
  double min_time_ms = 100;  // per repetition (several Runs if one is shorter)
  int buffer_mib = 512;      // roofline probe buffer
};
int RunBenchAttention(const BenchAttentionArgs& args);

}  // namespace rpa::cli
