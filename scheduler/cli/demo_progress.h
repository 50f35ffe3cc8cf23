#pragma once

// Progress of `rpa demo` on stderr: a bar redrawn in place (at most 10 times
// a second) when stderr is a terminal, otherwise one plain line every 5 s, so
// a log file or CI output gets a readable trail instead of carriage returns.

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace rpa::cli {

class Progress {
 public:
  Progress(bool enabled, std::uint64_t total_requests)
      : enabled_(enabled),
        tty_(enabled && ::isatty(STDERR_FILENO) == 1),
        total_(total_requests),
        last_(std::chrono::steady_clock::now()) {}

  void Update(std::uint64_t finished, std::uint64_t output_tokens,
              std::uint64_t steps, std::uint32_t running, std::uint32_t waiting,
              double elapsed_s) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    const auto period =
        tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(5000);
    if (now - last_ < period) return;
    last_ = now;
    Print(finished, output_tokens, steps, running, waiting, elapsed_s);
  }

  void Finish(std::uint64_t finished, std::uint64_t output_tokens,
              std::uint64_t steps, double elapsed_s) {
    if (!enabled_) return;
    Print(finished, output_tokens, steps, 0, 0, elapsed_s);
    if (tty_) std::fputc('\n', stderr);
  }

 private:
  void Print(std::uint64_t finished, std::uint64_t output_tokens,
             std::uint64_t steps, std::uint32_t running, std::uint32_t waiting,
             double elapsed_s) {
    const double rate =
        elapsed_s > 0 ? static_cast<double>(output_tokens) / elapsed_s : 0;
    const std::string counts = fmt::format(
        "{}/{} requests  {} steps  {} running  {} waiting  {:.0f} output tok/s"
        "  {:.1f} s",
        finished, total_, steps, running, waiting, rate, elapsed_s);
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled =
          total_ == 0 ? kWidth : static_cast<int>(finished * kWidth / total_);
      std::string bar(static_cast<std::size_t>(filled), '#');
      bar.append(static_cast<std::size_t>(kWidth - filled), '.');
      std::fprintf(stderr, "\r[%s] %s\x1b[K", bar.c_str(), counts.c_str());
    } else {
      std::fprintf(stderr, "rpa demo: %s\n", counts.c_str());
    }
    std::fflush(stderr);
  }

  bool enabled_;
  bool tty_;
  std::uint64_t total_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace rpa::cli
