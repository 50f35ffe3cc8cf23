#pragma once

// Waiter and WaitQueue: how every cooperative primitive suspends a fiber (or
// blocks a plain thread) and wakes it again. Not for users; the primitives'
// headers need it because Channel<T> and JoinHandle<T> are templates.
//
// Protocol (the "unlock after switch" rule):
//   waiting side, holding the primitive's SpinLock:
//       checks its condition, then Wait(waiter, queue, lock)
//       -> the waiter is appended to the queue; a fiber is switched out and the
//          worker releases `lock` only after the fiber's context is saved; a
//          plain thread releases `lock` and blocks on a futex.
//   waking side, holding the same lock:
//       queue.PopFront() (or Remove), fills the waiter's payload, Wake(waiter).
// Because the lock is held until the fiber is fully switched out, a waker can
// never resume a fiber that is still running on its stack. A woken fiber is
// pushed to its own worker's ready list (same thread) or inbox (other thread):
// fibers never migrate between workers.
//
// Thread-safety: WaitQueue is guarded by the primitive's SpinLock. Wait/Wake
// may be called from any thread, inside or outside a fiber.
// Memory ordering: everything the waker wrote before Wake() (the payload) is
// visible to the waiter when Wait() returns: the lock orders it for threads,
// and the wake-up queues (release/acquire) order it for fibers.

#include <atomic>
#include <cstdint>

#include "rpa/runtime/internal/spin_lock.h"

namespace rpa::runtime::internal {

class Fiber;
class WaitQueue;
class Worker;

struct Waiter {
  Waiter* next = nullptr;
  Waiter* prev = nullptr;
  WaitQueue* queue = nullptr;  // while enqueued
  Fiber* fiber = nullptr;      // null: a plain thread waiting on `woken`
  // The fiber's worker, kept here so that the waker, which reads this
  // waiter anyway, never reads the fiber (a line of the sleeping worker's).
  Worker* worker = nullptr;
  std::atomic<std::uint32_t> woken{0};
  // Payload, by primitive: units wanted (Semaphore), value slot (Channel),
  // outcome (Channel send/receive succeeded).
  std::uint64_t amount = 0;
  void* slot = nullptr;
  bool ok = false;
};

// FIFO of waiters. `lock` is the owning primitive's lock (Shutdown uses it to
// unlink the waiters of fibers it abandons).
class WaitQueue {
 public:
  explicit WaitQueue(SpinLock* lock) : lock_(lock) {}
  WaitQueue(const WaitQueue&) = delete;
  WaitQueue& operator=(const WaitQueue&) = delete;

  bool empty() const { return head_ == nullptr; }
  Waiter* front() const { return head_; }
  SpinLock* lock() const { return lock_; }

  void PushBack(Waiter* w) {
    w->queue = this;
    w->next = nullptr;
    w->prev = tail_;
    if (tail_ != nullptr) {
      tail_->next = w;
    } else {
      head_ = w;
    }
    tail_ = w;
  }
  // The waker reads and then writes the waiter (its links, then the
  // payload), which usually sits on another core's fiber stack: one
  // write-intent fetch instead of a read and then an ownership upgrade.
  Waiter* PopFront() {
    Waiter* w = head_;
    if (w != nullptr) {
      __builtin_prefetch(w, 1);
      Remove(w);
    }
    return w;
  }
  void Remove(Waiter* w) {
    if (w->prev != nullptr) {
      w->prev->next = w->next;
    } else {
      head_ = w->next;
    }
    if (w->next != nullptr) {
      w->next->prev = w->prev;
    } else {
      tail_ = w->prev;
    }
    w->next = w->prev = nullptr;
    w->queue = nullptr;
  }

 private:
  SpinLock* lock_;
  Waiter* head_ = nullptr;
  Waiter* tail_ = nullptr;
};

// Appends `w` to `queue` and suspends the caller until Wake(w). `lock` is held
// on entry and is NOT held on return; Wait returns only after the waker
// released `lock`, so the caller may then destroy the primitive.
void Wait(Waiter& w, WaitQueue& queue, SpinLock& lock);

// Resumes the waiter. Call with the primitive's lock held, after removing `w`
// from its queue and writing its payload; do not touch `w` afterwards.
void Wake(Waiter& w);

// True when the caller runs in a fiber of some executor.
bool InFiberImpl();

}  // namespace rpa::runtime::internal
