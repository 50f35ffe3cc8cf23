#pragma once

// Worker: one scheduling loop, its queues and its reactor. See README.md for
// the loop, the queues, the wake-up protocol and the fiber lifecycle.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "fiber.h"
#include "reactor.h"
#include "task_cache.h"
#include "work_queue.h"

#include "rpa/runtime/blocking.h"
#include "rpa/runtime/internal/task.h"
#include "rpa/runtime/status.h"

namespace rpa::runtime::internal {

class ExecutorImpl;

// Owner-written counter readable from any thread.
class Counter {
 public:
  void Add(std::uint64_t n = 1) {
    value_.store(value_.load(std::memory_order_relaxed) + n,
                 std::memory_order_release);
  }
  void Sub(std::uint64_t n = 1) {
    value_.store(value_.load(std::memory_order_relaxed) - n,
                 std::memory_order_release);
  }
  std::uint64_t Get() const { return value_.load(std::memory_order_acquire); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

// FIFO of fibers through Fiber::next (owner thread only).
class FiberList {
 public:
  bool empty() const { return head_ == nullptr; }
  void PushBack(Fiber* f) {
    f->next = nullptr;
    if (tail_ != nullptr) {
      tail_->next = f;
    } else {
      head_ = f;
    }
    tail_ = f;
  }
  Fiber* PopFront() {
    Fiber* f = head_;
    if (f != nullptr) {
      head_ = f->next;
      if (head_ == nullptr) tail_ = nullptr;
      f->next = nullptr;
    }
    return f;
  }

 private:
  Fiber* head_ = nullptr;
  Fiber* tail_ = nullptr;
};

// What the worker does right after switching away from a fiber that
// suspended, on its behalf (the fiber's context is saved by then).
struct PostSwitch {
  SpinLock* unlock = nullptr;           // a primitive's lock (wait_queue.h)
  BlockingJob* blocking_job = nullptr;  // hand to the blocking pool
};

enum class DriveMode : std::uint8_t {
  kRun,        // until no task is live
  kUntilIdle,  // until nothing is ready now
  kJoin,       // until a given task is done
  kShutdown,   // until no task is live or nothing can progress any more
};

class Worker {
 public:
  Worker(ExecutorImpl* executor, int index);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  Status Init();  // creates the reactor

  // The worker whose thread (and fiber) is running, or null.
  static Worker* Current() { return tls_current_; }
  ExecutorImpl* executor() const { return executor_; }
  int index() const { return index_; }
  Reactor* reactor() const { return reactor_.get(); }
  // Owner thread only.
  TaskBlockCache& task_cache() { return task_cache_; }
  bool in_fiber() const {
    return current_ != nullptr && !current_->is_thread_context();
  }
  Fiber* current() const { return current_; }

  // ---- any thread
  // Makes a blocked fiber of this worker ready: local ready list on this
  // worker's thread, else the inbox plus a wake-up.
  void Schedule(Fiber* fiber);
  // Wakes the worker if it is parked (or about to be).
  void Unpark();
  bool parked() const { return parked_.load(std::memory_order_seq_cst); }

  // ---- owner thread, in a fiber
  void Suspend(PostSwitch action);
  void Yield();
  void SleepUntil(TimePoint deadline);
  // Performs a reactor I/O operation (op->fiber is filled in). Returns the
  // CQE result.
  std::int32_t RunIo(ReactorOp* op);
  // A joiner runs a task inline: `with_entry` when it took the task's queue
  // entry back (the entry's reference is then its to drop), else it claimed
  // the task with TryStart and the entry is left stale.
  void RunInline(TaskBase* task, bool with_entry);
  void MakeReady(Fiber* fiber);  // reactor completions and local wakes
  void AddExternalPending() { ++external_pending_; }
  void RemoveExternalPending() { --external_pending_; }

  // ---- entry points
  void ThreadMain();  // the worker thread (num_workers > 0)
  Status Drive(DriveMode mode,
               TaskBase* until);  // the caller's thread (num_workers == 0)

  // ---- run queue: the newest task waits in `slot_`, older ones in `queue_`
  // Owner: spawn. The previous newest task moves to the queue.
  void Push(TaskBase* task) {
    if (TaskBase* previous = slot_.exchange(task, std::memory_order_seq_cst))
      queue_.Push(previous);
  }
  // Any thread: takes `task` back out of the slot if it is still there (a
  // help-first Join of the task just spawned: no stale queue entry left).
  bool TakeFromSlot(TaskBase* task) {
    return slot_.load(std::memory_order_relaxed) == task &&
           slot_.compare_exchange_strong(task, nullptr,
                                         std::memory_order_acquire,
                                         std::memory_order_relaxed);
  }
  // Any thread (a joiner): takes `task` out of the queue if it is the oldest
  // entry, so that claiming it leaves no stale entry behind.
  bool TakeIfOldest(TaskBase* task) { return queue_.TakeIfOldest(task); }
  // Another worker's thread: half of the queue (at most kMaxStealBatch) moves
  // to `thief`'s queue and its oldest task is returned; else the slot's task.
  // `*stolen`: how many tasks were taken.
  TaskBase* StealInto(Worker* thief, std::size_t* stolen) {
    if (TaskBase* task =
            queue_.StealHalf(thief->queue_, kMaxStealBatch, stolen)) {
      return task;
    }
    if (slot_.load(std::memory_order_relaxed) == nullptr) return nullptr;
    TaskBase* task = slot_.exchange(nullptr, std::memory_order_acquire);
    *stolen = task != nullptr ? 1 : 0;
    return task;
  }
  // Any thread: the oldest task, or the slot's.
  TaskBase* StealOne() {
    if (TaskBase* task = queue_.Take()) return task;
    if (slot_.load(std::memory_order_relaxed) == nullptr) return nullptr;
    return slot_.exchange(nullptr, std::memory_order_acquire);
  }
  bool queue_empty() const {
    return queue_.empty_hint() &&
           slot_.load(std::memory_order_seq_cst) == nullptr;
  }
  // Racy count of the queue's and the slot's entries (exact when quiescent).
  std::size_t queued_hint() const {
    return queue_.size_hint() +
           (slot_.load(std::memory_order_relaxed) != nullptr ? 1 : 0);
  }
  bool inbox_empty() const { return inbox_.empty(); }
  bool quiescent() const { return quiescent_.load(std::memory_order_seq_cst); }
  std::uint64_t epoch() const { return epoch_.load(std::memory_order_seq_cst); }
  // Single-threaded, after the workers stopped: discards blocked fibers,
  // failing their tasks; returns how many tasks were failed.
  std::uint64_t AbandonBlockedFibers();
  // Single-threaded, after the workers stopped: tasks still queued.
  TaskBase* TakeLeftoverTask() { return StealOne(); }

  Counter spawned;
  Counter completed;
  Counter steals;
  Counter parks;
  Counter fibers;
  Counter blocked;

 private:
  // initial-exec: one %fs-relative load instead of a __tls_get_addr call in
  // this PIC library (it is linked into programs, not dlopen'ed late).
  __attribute__((tls_model(
      "initial-exec"))) static inline thread_local Worker* tls_current_ =
      nullptr;

  static void FiberEntry(void* worker);
  void Loop();
  Fiber* NextReady();
  TaskBase* NextTask();
  TaskBase* NextEntry(bool inject_turn);
  TaskBase* TakeFromInjectQueue();
  TaskBase* Steal();
  void RunTask(TaskBase* task);
  bool Maintain();
  bool DrainInbox();
  bool ShouldLeaveLoop();
  bool HasTaskHint() const;
  void Switch(Fiber* to);
  void SwitchAndIdle(Fiber* to);
  void RunPostSwitch();
  Fiber* TakeIdleFiber();
  void DestroyFiber(Fiber* fiber);
  // worker_idle.cc: the loop found nothing to run.
  void Idle();
  void IdleDriver();
  bool FindWorkWhileSpinning();
  void Park();

  static constexpr std::size_t kMaxStealBatch = 128;
  static constexpr int kMaxReadyStreak = 16;
  static constexpr std::uint32_t kMaintainEvery = 32;
  static constexpr std::size_t kMaxIdleFibers = 16;

  ExecutorImpl* const executor_;
  const int index_;
  std::unique_ptr<Reactor> reactor_;
  TaskBlockCache task_cache_;

  // Tokio's "LIFO slot", kept FIFO: a task spawned and joined right away
  // never enters the queue; the loop moves the slot's task behind the
  // queue's before taking the oldest. Thieves may take it too.
  alignas(64) std::atomic<TaskBase*> slot_{nullptr};
  WorkQueue<TaskBase*> queue_;
  IntrusiveStack<Fiber> inbox_;
  FiberList ready_;
  FiberList idle_;
  std::size_t num_idle_ = 0;
  Fiber* all_fibers_ = nullptr;

  Fiber* current_ = nullptr;
  std::unique_ptr<Fiber> thread_fiber_;  // the driving thread's own context
  PostSwitch post_switch_;
  int ready_streak_ = 0;
  std::uint32_t tick_ = 0;
  std::uint64_t external_pending_ = 0;  // blocking-pool jobs in flight
  std::uint64_t rng_;

  // Driving (num_workers == 0).
  DriveMode drive_mode_ = DriveMode::kRun;
  TaskBase* drive_until_ = nullptr;
  Status drive_status_;
  bool leave_loop_ = false;

  alignas(64) std::atomic<bool> parked_{false};
  std::atomic<bool> quiescent_{false};
  std::atomic<std::uint64_t> epoch_{0};
};

}  // namespace rpa::runtime::internal
