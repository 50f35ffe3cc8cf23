#pragma once

// TaskBase / Task<F, R>: a spawned closure and the slot its result goes to
// (not for users; Executor::Spawn and JoinHandle<T> are the API).
//
// A task that has not started is just this heap object in a queue: no fiber,
// no stack. It has one queue entry (a worker's slot or run queue, the inject
// stack) until someone takes that entry. It is started (the `started_` flag)
// by exactly one runner: the taker of its entry, or its joiner, which runs it
// inline (help-first, JoinTask) either by taking the entry back or, on the
// worker that spawned it (its "home"), by claiming it while the entry is
// still queued; that entry is then stale, and whoever takes it drops it.
//
// Claims race only between the joiner and the entry's taker, so they are
// atomic exchanges, except where both are on one thread: the home worker's
// loop takes entries of the tasks it spawned, whose only out-of-queue claimer
// is a joiner on that same thread, and starts them with a plain store.
//
// A second atomic word holds the done bit, the waiters bit (a joiner is, or
// is about to be, suspended on the task) and the reference count: one
// reference for the queue entry (dropped by the runner when the task
// completes, or by the taker of a stale entry) and one for the JoinHandle.
// Completing and dropping the entry's reference is one read-modify-write.
//
// Thread-safety: TryStart/Complete*/WaitDone/Unref from any thread; the
// Start*/Run* variants as documented on each.
// Memory ordering: completion is a release of the result (an acq_rel RMW, or
// a release store when nobody else can reach the task); a joiner that
// observes done (acquire) reads the result; the last Unref acquires every
// other holder's release before deleting.

#include <atomic>
#include <cstdint>
#include <exception>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "rpa/runtime/check.h"
#include "rpa/runtime/internal/wait_queue.h"
#include "rpa/runtime/status.h"

namespace rpa::runtime::internal {

class ExecutorImpl;

class TaskBase {
 public:
  TaskBase() = default;
  TaskBase(const TaskBase&) = delete;
  TaskBase& operator=(const TaskBase&) = delete;

  // Task objects come from the current worker's block cache and go back to
  // the cache of the worker that frees them (src/task_cache.h); elsewhere
  // (service threads) they are `::operator new` blocks aligned to a cache
  // line.
  static void* operator new(std::size_t bytes);
  static void operator delete(void* block, std::size_t bytes) noexcept;
  static void* operator new(std::size_t bytes, std::align_val_t align) {
    return ::operator new(bytes, align);
  }
  // The global deallocations called here are the unsized ones: clang needs
  // -fsized-deallocation for the sized forms, and the size is only a hint.
  static void operator delete(void* block, std::size_t /*bytes*/,
                              std::align_val_t align) noexcept {
    ::operator delete(block, align);
  }

  bool done() const {
    return (state_.load(std::memory_order_acquire) & kDoneBit) != 0;
  }

  // Claims the task for the caller; true for exactly one claimer.
  bool TryStart() {
    return !started_.load(std::memory_order_relaxed) &&
           !started_.exchange(true, std::memory_order_acq_rel);
  }
  // The same, for a caller whose only possible competitor runs on its own
  // thread (the home worker's loop; see above).
  bool TryStartOnHomeThread() {
    if (started_.load(std::memory_order_relaxed)) return false;
    started_.store(true, std::memory_order_relaxed);
    return true;
  }

  // The runner took the entry and started the task: runs the closure on the
  // caller's stack (a thrown exception becomes Internal("task threw: ...")),
  // completes the task and drops the entry's reference (`this` may be gone).
  void Run() {
    Invoke();
    CompleteAndRelease();
  }
  // The joiner took the entry back: it holds both references and is the only
  // possible waiter or claimer, so nobody else can reach the task and neither
  // starting nor completing needs a read-modify-write. Leaves the handle's
  // reference.
  void RunAsJoinerWithEntry() {
    RPA_DCHECK(state_.load(std::memory_order_relaxed) == 2 * kOneRef);
    started_.store(true, std::memory_order_relaxed);
    Invoke();
    state_.store(kDoneBit | kOneRef, std::memory_order_release);
  }
  // The joiner claimed the task (TryStart) while its entry is queued: the
  // stale entry's taker drops that reference, concurrently, so completing is
  // an RMW.
  void RunAsJoinerWithoutEntry() {
    Invoke();
    Complete();
  }
  // Completes a started task that will never run (rejected, or abandoned at
  // shutdown) with `status`; the closure is destroyed. The caller holds the
  // entry's reference and drops it if `release`.
  void Fail(Status status, bool release) {
    SetFailed(std::move(status));
    if (release) {
      CompleteAndRelease();
    } else {
      Complete();
    }
  }

  // Blocks the calling fiber (or thread) until done(). Does not run the task.
  void WaitDone();

  // Drops the handle's (or the entry's) reference. Nothing ever adds one, so
  // a holder that sees a count of 1 holds the last one and skips the
  // read-modify-write (its acquire load pairs with the other holder's
  // release, as the RMW would).
  void Unref() {
    const std::uint32_t word = state_.load(std::memory_order_acquire);
    if (word / kOneRef == 1 ||
        state_.fetch_sub(kOneRef, std::memory_order_acq_rel) / kOneRef == 1) {
      delete this;
    }
  }

  TaskBase* next = nullptr;          // link in the foreign-submission stack
  ExecutorImpl* executor = nullptr;  // set by Submit
  const void* home = nullptr;  // the worker that spawned it (null: foreign)
  // While running: the task this fiber ran before it (inline joins nest),
  // and whether the runner holds the entry's reference (Shutdown fails the
  // whole chain of a fiber it discards).
  TaskBase* outer = nullptr;
  bool runner_holds_ref = false;

 protected:
  virtual ~TaskBase() = default;
  virtual void Invoke() = 0;
  virtual void SetFailed(Status status) = 0;

 private:
  static constexpr std::uint32_t kDoneBit = 1;
  static constexpr std::uint32_t kWaitersBit =
      2;  // a joiner is (about to be) parked
  static constexpr std::uint32_t kOneRef = 4;

  // Done, and the entry's reference dropped, in one RMW; wakes the waiter.
  void CompleteAndRelease();
  // Done (references unchanged); wakes the waiter.
  void Complete();
  void WakeWaiters();

  std::atomic<std::uint32_t> state_{2 * kOneRef};
  std::atomic<bool> started_{false};
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
  void SetFailed(Status status) override {
    fn_.reset();
    this->SetError(std::move(status));
  }

  std::optional<F> fn_;
};

}  // namespace rpa::runtime::internal
