#pragma once

// The runtime's notion of time.
//
// An executor runs on real time (std::chrono::steady_clock, i.e.
// CLOCK_MONOTONIC) or on virtual time (ExecutorOptions::clock =
// ClockKind::kVirtual), where time starts at TimePoint{} (zero) and jumps to
// the next timer whenever every fiber is blocked. Both use the same types, so
// simulation code and real code are the same code: just
// this_fiber::SleepFor(duration).
//
// Thread-safety: types only.
// Memory ordering: none (types only).

#include <chrono>

namespace rpa::runtime {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Duration = std::chrono::nanoseconds;

enum class ClockKind {
  kReal,     // steady_clock; timers are io_uring timeouts (or a timer heap)
  kVirtual,  // simulated: single-threaded, deterministic, never sleeps
};

}  // namespace rpa::runtime
