#pragma once
// Runs the built `rpa` binary (RPA_CLI_PATH) for the end-to-end CLI tests,
// capturing its exit code, stdout and stderr through files in a scratch
// directory.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace rpa::scheduler::testing_util {

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// The whole file ("" if it cannot be read).
inline std::string Slurp(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// `rpa <args>`; stdout and stderr go through files in scratch_dir.
inline CliResult RunRpa(const std::filesystem::path& scratch_dir,
                        const std::string& args) {
  const std::string command = std::string(RPA_CLI_PATH) + " " + args + " >" +
                              (scratch_dir / "stdout").string() + " 2>" +
                              (scratch_dir / "stderr").string();
  const int status = std::system(command.c_str());
  CliResult result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.out = Slurp(scratch_dir / "stdout");
  result.err = Slurp(scratch_dir / "stderr");
  return result;
}

}  // namespace rpa::scheduler::testing_util
