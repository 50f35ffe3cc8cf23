#pragma once

// JoinHandle<T>: the result of a spawned task.
//
// Join() waits for the task and returns what it returned: Status for a task
// returning void or Status, StatusOr<T> for one returning T or StatusOr<T>. A
// task that threw returns Internal("task threw: what()"); a task that never
// ran (spawned after Shutdown) or was still blocked when the executor shut
// down returns FailedPrecondition.
//
// How Join waits:
//   - in a fiber of the same executor, if the task has not started yet and
//     was spawned on this worker (or sits at the head of this worker's run
//     queue), the joiner runs it inline on its own stack (help-first: no
//     queue round trip, no extra fiber); otherwise it suspends the fiber
//     until the task's runner completes it;
//   - on a plain thread, it blocks that thread; for a num_workers == 0
//     executor that nobody is driving, the joining thread drives it (runs
//     the executor's loop) until the task is done;
//   - in virtual time, a deadlock (nothing can ever finish the task) makes
//     Join return FailedPrecondition("deadlock: ...") instead of hanging.
// Dropping a handle without joining detaches the task (it still runs).
//
// Thread-safety: a handle is a value owned by one thread/fiber at a time;
// Join() may be called from any thread or fiber, once.
// Memory ordering: everything the task did happens-before Join() returns.
//
// Example:
//   JoinHandle<int> h = executor->Spawn([] { return 6 * 7; });
//   StatusOr<int> v = h.Join();   // 42

#include <utility>

#include "rpa/runtime/check.h"
#include "rpa/runtime/internal/task.h"
#include "rpa/runtime/status.h"

namespace rpa::runtime {

namespace internal {
// Waits until `task` is done (inline-claiming or driving where allowed).
// Returns non-OK only when waiting is impossible (virtual-time deadlock).
Status JoinTask(TaskBase* task);
}  // namespace internal

template <typename T>
class JoinHandle {
 public:
  using Result = internal::JoinResult<T>;

  JoinHandle() = default;
  explicit JoinHandle(internal::TaskWithResult<T>* task) : task_(task) {}
  JoinHandle(JoinHandle&& other) noexcept
      : task_(std::exchange(other.task_, nullptr)) {}
  JoinHandle& operator=(JoinHandle&& other) noexcept {
    if (this != &other) {
      Reset();
      task_ = std::exchange(other.task_, nullptr);
    }
    return *this;
  }
  JoinHandle(const JoinHandle&) = delete;
  JoinHandle& operator=(const JoinHandle&) = delete;
  ~JoinHandle() { Reset(); }

  // False for a default-constructed, moved-from or joined handle.
  bool valid() const { return task_ != nullptr; }
  // True once the task finished (never blocks). Precondition: valid().
  bool done() const {
    RPA_CHECK(task_ != nullptr);
    return task_->done();
  }

  // Waits for the task and returns its result; the handle becomes invalid.
  // Precondition: valid().
  Result Join() {
    RPA_CHECK_MSG(task_ != nullptr, "Join() on an invalid JoinHandle");
    Status wait_status = internal::JoinTask(task_);
    if (!wait_status.ok()) return wait_status;
    Result out = std::move(*task_->result);
    Reset();
    return out;
  }

  // Lets the task run on without anyone waiting for it.
  void Detach() { Reset(); }

 private:
  void Reset() {
    if (task_ != nullptr) std::exchange(task_, nullptr)->Unref();
  }

  internal::TaskWithResult<T>* task_ = nullptr;
};

}  // namespace rpa::runtime
