#pragma once

// this_fiber: what a task does to its own fiber, like std::this_thread.
//
// In a fiber these suspend the fiber, never the worker thread: the worker runs
// other fibers meanwhile. Outside a fiber (a plain thread) they fall back to
// std::this_thread, so code can be shared between the two.
//
// Timers: in real time a sleep is an io_uring timeout (or the fallback's timer
// heap); in virtual time the executor's clock jumps to the earliest deadline
// once every fiber is blocked, so a simulation never sleeps. Sleepers with
// equal deadlines wake in the order they went to sleep.
//
// Thread-safety: each function acts on the caller's own fiber.
// Memory ordering: none beyond program order.
//
// Example (a discrete-event simulation, the same code in real time):
//   executor->Spawn([&] {
//     for (int i = 0; i < num_transfers; ++i) {
//       this_fiber::SleepFor(std::chrono::nanoseconds(dma_latency_ns));
//       bytes_ready.Release(page_bytes);
//     }
//   });

#include "rpa/runtime/clock.h"

namespace rpa::runtime::this_fiber {

// True in a fiber of some executor (a running task).
bool InFiber();

// Lets other ready fibers and queued tasks of this worker run, then continues.
// Outside a fiber: std::this_thread::yield().
void Yield();

// Suspends the fiber for `duration` of its executor's clock (<= 0: a Yield).
// Outside a fiber: std::this_thread::sleep_for.
void SleepFor(Duration duration);

// Suspends the fiber until its executor's clock reaches `deadline` (past: a
// Yield). Outside a fiber: std::this_thread::sleep_until on steady_clock.
void SleepUntil(TimePoint deadline);

// The time of the calling fiber's executor (virtual or real); outside a
// fiber, steady_clock::now().
TimePoint Now();

// Index of the worker running the calling fiber (0 for num_workers == 0), or
// -1 outside a fiber.
int WorkerIndex();

}  // namespace rpa::runtime::this_fiber
