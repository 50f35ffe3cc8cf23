#pragma once
// Runs the built `rpa` binary (RPA_CLI_PATH) for the end-to-end CLI tests,
// capturing its exit code, stdout and stderr through files in a scratch
// directory.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

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

// A fixture with a scratch directory of its own (named after the test suite
// and the process, removed after each test) and Rpa(args) to run the binary
// there.
class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string suite =
        ::testing::UnitTest::GetInstance()->current_test_suite()->name();
    root_ = std::filesystem::path(::testing::TempDir()) /
            (suite + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  CliResult Rpa(const std::string& args) { return RunRpa(root_, args); }

  std::filesystem::path root_;
};

}  // namespace rpa::scheduler::testing_util
