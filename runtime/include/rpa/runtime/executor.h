#pragma once

// Executor: an embeddable fiber runtime. N worker threads (or the caller's
// thread), each with a lock-free run queue and an io_uring reactor; tasks are
// closures that run on pooled fibers and can suspend (Event, Channel,
// SleepFor, ReadAt, ...) without blocking their thread. It knows nothing
// about attention: any service can embed it.
//
// Tasks:
//   - Spawn() is cheap: a task that has not started is a heap closure in a
//     queue. Workers run tasks on their current fiber and take a new pooled
//     fiber only when a running task suspends.
//   - Idle workers steal tasks that have not started; a task that has started
//     stays on its worker until it ends (thread-local state and OS mutexes
//     held across a suspension stay valid).
//   - Spawn() may be called from any thread, including the embedding service's
//     own threads; an idle (parked) worker is woken.
//   - Order: tasks spawned from one thread or fiber start in spawn order when
//     num_workers <= 1 (with more workers, stealing reorders starts).
//   - No task is lost: Shutdown() runs every task spawned before it, and
//     reports the ones that could never finish.
//
// num_workers == 0 runs everything on the thread that calls Run(),
// RunUntilIdle() or JoinHandle::Join(): deterministic, and required for
// virtual time (ClockKind::kVirtual), where time jumps to the next timer when
// every fiber is blocked.
//
// Thread-safety: Spawn(), Now(), Stats(), io_backend() from any thread;
// Run()/RunUntilIdle() from one thread at a time (never from a fiber of this
// executor); Shutdown() once, from a thread that is not one of its workers.
// Memory ordering: everything before Spawn() happens-before the task starts;
// everything a task did happens-before its JoinHandle::Join() returns and
// before Shutdown() returns.
//
// Example (embedding in a service):
//   auto executor = rpa::runtime::Executor::Create({.num_workers = 2});
//   if (!executor.ok()) return executor.status();
//   // from any service thread:
//   auto handle = (*executor)->Spawn([&] { return HandleRequest(request); });
//   RPA_RETURN_IF_ERROR(handle.Join());        // blocks this service thread
//   only
//   // at exit, after the service threads stopped submitting:
//   RPA_RETURN_IF_ERROR((*executor)->Shutdown());

#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

#include "rpa/runtime/clock.h"
#include "rpa/runtime/internal/task.h"
#include "rpa/runtime/join_handle.h"
#include "rpa/runtime/status.h"

namespace rpa::runtime {

enum class IoBackend {
  kAuto,     // io_uring if the kernel allows it, else kThreads (said once on
             // stderr)
  kIoUring,  // io_uring or Create() fails with Unavailable
  kThreads,  // the fallback: condition-variable parking, timer heap, blocking
             // pool I/O
};

struct ExecutorOptions {
  // Worker threads. 0: run on the caller's thread (Run / RunUntilIdle / Join).
  int num_workers = 0;
  // Usable stack per fiber; a PROT_NONE guard page below it turns an
  // overflow into a crash (SIGSEGV), never into a neighbour's corruption.
  // Rounded up to whole pages.
  std::size_t stack_bytes = 256 * 1024;
  ClockKind clock = ClockKind::kReal;  // kVirtual requires num_workers == 0
  IoBackend io_backend = IoBackend::kAuto;
  // io_uring submission queue entries per worker (the completion queue is
  // twice that; in-flight operations never exceed it). Power of two.
  std::uint32_t ring_entries = 256;
  // Threads for RunBlocking() (and for file I/O on the kThreads backend).
  // 0: RunBlocking runs the callable inline, blocking the worker.
  int blocking_threads = 2;
  // How long an idle worker keeps looking for work (stealing, polling) before
  // it parks. Longer: faster hand-offs, more CPU burnt while idle.
  Duration spin = std::chrono::microseconds(20);
};

// Counters, for tests and monitoring. A snapshot: not atomic as a whole.
struct ExecutorStats {
  std::uint64_t tasks_spawned = 0;    // accepted by Spawn
  std::uint64_t tasks_completed = 0;  // ran to the end (with any result)
  std::uint64_t tasks_failed_at_shutdown = 0;  // rejected or abandoned
  std::uint64_t steals = 0;  // tasks taken from another worker's queue
  std::uint64_t fibers = 0;  // fibers (with stacks) currently owned by workers
  std::uint64_t blocked_fibers = 0;  // fibers suspended in a task right now
  std::uint64_t parks = 0;           // times a worker went to sleep
  // Entries in the workers' run queues and slots right now, stale ones (tasks
  // a joiner already ran inline) included: each holds a task object alive.
  std::uint64_t queued_tasks = 0;
};

namespace internal {
class ExecutorImpl;
}

class Executor {
 public:
  // Validates the options and starts the workers. Errors: InvalidArgument
  // (a field and its value), Unavailable (io_backend == kIoUring but the
  // kernel or sandbox forbids io_uring).
  static StatusOr<std::unique_ptr<Executor>> Create(
      const ExecutorOptions& options);

  // Calls Shutdown() if it was not called (its error is printed to stderr).
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Schedules fn() to run on a fiber. fn may return void, T, Status or
  // StatusOr<T>; the handle's Join() returns Status or StatusOr<T>. After
  // Shutdown() the task is not run and Join() returns FailedPrecondition.
  template <typename F>
  auto Spawn(F&& fn) -> JoinHandle<typename internal::TaskValue<
      std::invoke_result_t<std::decay_t<F>&>>::type> {
    using R = std::invoke_result_t<std::decay_t<F>&>;
    using T = typename internal::TaskValue<R>::type;
    auto* task = new internal::Task<std::decay_t<F>, R>(std::forward<F>(fn));
    Submit(task);
    return JoinHandle<T>(task);
  }

  // num_workers == 0 only (else FailedPrecondition). Runs tasks on the
  // calling thread until every spawned task has finished. Real time: waits
  // for timers, I/O and wake-ups from other threads. Virtual time: returns
  // FailedPrecondition("deadlock: N fibers blocked") when fibers are blocked
  // and no timer is pending.
  Status Run();
  // num_workers == 0 only. Runs until nothing is ready right now; never
  // waits and never advances virtual time.
  Status RunUntilIdle();

  // Stops the executor: rejects new tasks from outside it, lets every task
  // spawned so far run as far as it can (timers, I/O and blocking work are
  // waited for), then stops the workers. Returns OK if every task finished;
  // otherwise FailedPrecondition naming how many tasks were still blocked
  // (their fibers are discarded without unwinding and their JoinHandles
  // return FailedPrecondition). Idempotent. Never call it from a fiber of
  // this executor (FailedPrecondition).
  Status Shutdown();

  // Current time of this executor's clock (virtual time for kVirtual).
  TimePoint Now() const;

  // The executor running the calling fiber, or null outside fibers.
  static Executor* Current();

  int num_workers() const;
  IoBackend io_backend() const;  // kIoUring or kThreads: the one in use
  ClockKind clock() const;
  ExecutorStats Stats() const;

 private:
  explicit Executor(std::unique_ptr<internal::ExecutorImpl> impl);
  void Submit(internal::TaskBase* task);

  std::unique_ptr<internal::ExecutorImpl> impl_;
};

}  // namespace rpa::runtime
