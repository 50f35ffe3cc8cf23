#pragma once

// TaskBase / Task<F, R>: a spawned closure and the slot its result goes to
// (not for users; Executor::Spawn and JoinHandle<T> are the API).
//
// A task that has not started is just this heap object in a queue: no fiber,
// no stack. States: kPending -> kRunning (claimed by exactly one runner: a
// worker, or a joiner running it inline) -> kDone. Two references: the
// executor's (dropped once the task is done and out of every queue) and the
// JoinHandle's.
//
// Thread-safety: TryClaim/Complete/WaitDone from any thread.
// Memory ordering: Complete() is a release of the result (state exchange
// acq_rel); a joiner that observes kDone (acquire) reads the result.

#include <atomic>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "rpa/runtime/internal/wait_queue.h"
#include "rpa/runtime/status.h"

namespace rpa::runtime::internal {

class ExecutorImpl;

class TaskBase {
 public:
  TaskBase() = default;
  TaskBase(const TaskBase&) = delete;
  TaskBase& operator=(const TaskBase&) = delete;

  // Pending -> running; true for exactly one caller.
  bool TryClaim() {
    std::uint32_t state = state_.load(std::memory_order_relaxed);
    while ((state & kStateMask) == kPending) {
      // Keep the waiters bit: a joiner may already be parked on a task that
      // has not started.
      if (state_.compare_exchange_weak(state, (state & ~kStateMask) | kRunning,
                                       std::memory_order_acquire,
                                       std::memory_order_relaxed)) {
        return true;
      }
    }
    return false;
  }
  // Claimed by a runner (running or done): a queue entry for it is stale.
  // The caller must hold a reference.
  bool claimed() const {
    return (state_.load(std::memory_order_acquire) & kStateMask) != kPending;
  }
  bool done() const {
    return (state_.load(std::memory_order_acquire) & kStateMask) == kDone;
  }

  // Runs the claimed closure on the caller's stack, converting a thrown
  // exception into Internal("task threw: ..."), then completes the task.
  void RunClaimed() {
    Invoke();
    Complete();
  }
  // Completes a task that will never run (rejected, or abandoned at
  // shutdown) with `status`. The closure is destroyed.
  void FailClaimed(Status status) {
    Fail(std::move(status));
    Complete();
  }

  // Blocks the calling fiber (or thread) until done(). Does not run the task.
  void WaitDone();

  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  TaskBase* next = nullptr;          // link in the foreign-submission stack
  ExecutorImpl* executor = nullptr;  // set by Submit
  // While running: the task this fiber ran before it (inline joins nest),
  // and whether the runner holds the queue's reference (Shutdown uses both).
  TaskBase* outer = nullptr;
  bool runner_holds_ref = false;

 protected:
  virtual ~TaskBase() = default;
  virtual void Invoke() = 0;
  virtual void Fail(Status status) = 0;

 private:
  static constexpr std::uint32_t kPending = 0;
  static constexpr std::uint32_t kRunning = 1;
  static constexpr std::uint32_t kDone = 2;
  static constexpr std::uint32_t kStateMask = 3;
  static constexpr std::uint32_t kWaitersBit =
      4;  // a joiner is (about to be) parked

  void Complete();

  std::atomic<std::uint32_t> state_{kPending};
  std::atomic<std::uint32_t> refs_{2};
  SpinLock lock_;
  WaitQueue waiters_{&lock_};
};

// What a task's closure returns -> what JoinHandle<T> carries.
template <typename R>
struct TaskValue {
  using type = R;
};
template <>
struct TaskValue<void> {
  using type = void;
};
template <>
struct TaskValue<Status> {
  using type = void;
};
template <typename U>
struct TaskValue<StatusOr<U>> {
  using type = U;
};

template <typename T>
using JoinResult = std::conditional_t<std::is_void_v<T>, Status, StatusOr<T>>;

template <typename T>
class TaskWithResult : public TaskBase {
 public:
  // Valid once done(); moved out by JoinHandle::Join.
  std::optional<JoinResult<T>> result;

 protected:
  void SetError(Status status) { result.emplace(std::move(status)); }
};

inline Status ThrownError(const std::exception* e) {
  return InternalError(std::string("task threw: ") +
                       (e != nullptr ? e->what() : "unknown exception"));
}

template <typename F, typename R>
class Task final : public TaskWithResult<typename TaskValue<R>::type> {
 public:
  template <typename G>
  explicit Task(G&& fn) : fn_(std::in_place, std::forward<G>(fn)) {}

 private:
  void Invoke() override {
    try {
      if constexpr (std::is_void_v<R>) {
        (*fn_)();
        this->result.emplace(OkStatus());
      } else {
        this->result.emplace((*fn_)());
      }
    } catch (const std::exception& e) {
      this->SetError(ThrownError(&e));
    } catch (...) {
      this->SetError(ThrownError(nullptr));
    }
    fn_.reset();  // captures are released when the task ends, not at Join
  }
  void Fail(Status status) override {
    fn_.reset();
    this->SetError(std::move(status));
  }

  std::optional<F> fn_;
};

}  // namespace rpa::runtime::internal
