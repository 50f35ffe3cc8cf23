#pragma once

// RunBlocking(fn): runs a blocking call (a syscall the ring cannot do, a
// library that blocks) on the executor's small blocking pool, suspending only
// the calling fiber; returns what fn returns. If fn throws, the exception is
// rethrown in the calling fiber (as if fn had been called directly).
//
// Outside a fiber, or with ExecutorOptions::blocking_threads == 0, fn runs
// inline on the calling thread. Jobs wait in FIFO order when every pool
// thread is busy. In virtual time, the blocking call takes no virtual time.
//
// Thread-safety: any thread or fiber; fn runs on another thread, so what it
// touches must be safe to touch from there.
// Memory ordering: everything before RunBlocking happens-before fn runs;
// everything fn did happens-before RunBlocking returns.
//
// Example:
//   int fd = RunBlocking([&] { return ::open(path, O_RDWR | O_CREAT, 0600); });

#include <exception>
#include <optional>
#include <type_traits>
#include <utility>

#include "rpa/runtime/internal/wait_queue.h"

namespace rpa::runtime {

namespace internal {
struct BlockingJob {
  void (*run)(BlockingJob*) = nullptr;
  BlockingJob* next = nullptr;
  Waiter waiter;  // the suspended fiber
};
// Runs job->run(job) on the pool and suspends the calling fiber until it
// did; returns false (without running it) when the caller must run it inline.
bool RunOnBlockingPool(BlockingJob* job);
}  // namespace internal

template <typename F>
auto RunBlocking(F&& fn) -> std::invoke_result_t<F&> {
  using R = std::invoke_result_t<F&>;
  struct Job : internal::BlockingJob {
    F* fn = nullptr;
    std::exception_ptr error;
    std::conditional_t<std::is_void_v<R>, bool, std::optional<R>> result{};
  };
  Job job;
  job.fn = &fn;
  job.run = [](internal::BlockingJob* base) {
    Job* self = static_cast<Job*>(base);
    try {
      if constexpr (std::is_void_v<R>) {
        (*self->fn)();
      } else {
        self->result.emplace((*self->fn)());
      }
    } catch (...) {
      self->error = std::current_exception();
    }
  };
  if (!internal::RunOnBlockingPool(&job)) return fn();
  if (job.error) std::rethrow_exception(job.error);
  if constexpr (!std::is_void_v<R>) return std::move(*job.result);
}

}  // namespace rpa::runtime
