// Executor (the public face), JoinTask, and the task / wait-queue protocols
// that need the worker.

#include "rpa/runtime/executor.h"

#include <cstdio>

#include "executor_impl.h"
#include "worker.h"

#include "rpa/runtime/blocking.h"
#include "rpa/runtime/internal/task.h"
#include "rpa/runtime/internal/wait_queue.h"

namespace rpa::runtime {

StatusOr<std::unique_ptr<Executor>> Executor::Create(
    const ExecutorOptions& options) {
  std::unique_ptr<Executor> executor(new Executor(nullptr));
  RPA_ASSIGN_OR_RETURN(executor->impl_,
                       internal::ExecutorImpl::Create(options, executor.get()));
  return executor;
}

Executor::Executor(std::unique_ptr<internal::ExecutorImpl> impl)
    : impl_(std::move(impl)) {}

Executor::~Executor() {
  if (impl_ == nullptr || impl_->shutdown_done()) return;
  Status status = impl_->Shutdown();
  if (!status.ok()) {
    std::fprintf(stderr, "rpa::runtime: ~Executor: %s\n",
                 status.ToString().c_str());
  }
}

void Executor::Submit(internal::TaskBase* task) { impl_->Submit(task); }
Status Executor::Run() {
  return impl_->Drive(internal::DriveMode::kRun, nullptr);
}
Status Executor::RunUntilIdle() {
  return impl_->Drive(internal::DriveMode::kUntilIdle, nullptr);
}
Status Executor::Shutdown() { return impl_->Shutdown(); }
TimePoint Executor::Now() const { return impl_->Now(); }
int Executor::num_workers() const { return impl_->num_workers(); }
IoBackend Executor::io_backend() const { return impl_->io_backend(); }
ClockKind Executor::clock() const { return impl_->options().clock; }
ExecutorStats Executor::Stats() const { return impl_->Stats(); }

Executor* Executor::Current() {
  internal::Worker* worker = internal::Worker::Current();
  return worker != nullptr && worker->in_fiber() ? worker->executor()->owner()
                                                 : nullptr;
}

namespace internal {
Status JoinTask(TaskBase* task) {
  if (task->done()) return OkStatus();
  Worker* worker = Worker::Current();
  if (worker != nullptr && worker->in_fiber()) {
    // Help-first: a task that has not started runs right here, on our stack.
    if (task->executor == worker->executor()) {
      // Its entry is this worker's newest or oldest: take it back, leaving
      // nothing behind.
      if (worker->TakeFromSlot(task) || worker->TakeIfOldest(task)) {
        worker->RunInline(task, /*with_entry=*/true);
        return OkStatus();
      }
      // Spawned here and still queued (or stolen, not yet started): claim
      // it; its entry goes stale. Only the home worker's joiners claim out of
      // queue, which is what lets its loop start tasks without an RMW.
      if (task->home == worker && task->TryStart()) {
        worker->RunInline(task, /*with_entry=*/false);
        return OkStatus();
      }
    }
    task->WaitDone();
    return OkStatus();
  }
  ExecutorImpl* executor = task->executor;
  if (worker == nullptr && executor != nullptr &&
      executor->num_workers() == 0) {
    // Nobody else runs a num_workers == 0 executor: the joiner drives it.
    RPA_RETURN_IF_ERROR(executor->Drive(DriveMode::kJoin, task));
    if (task->done()) return OkStatus();
  }
  task->WaitDone();
  return OkStatus();
}

// ---- TaskBase ---------------------------------------------------------------

namespace {

// The calling non-worker thread's block cache, or null once the thread has
// started destroying its thread_locals (a task freed from a later
// destructor then goes straight to ::operator delete). t_foreign_cache_state
// is trivially destructible, so reading it is valid at any point of the
// thread's life.
enum class ForeignCacheState : unsigned char { kUnused, kLive, kGone };
thread_local ForeignCacheState t_foreign_cache_state =
    ForeignCacheState::kUnused;

struct ForeignCacheHolder {
  ForeignTaskCache cache;
  ~ForeignCacheHolder() { t_foreign_cache_state = ForeignCacheState::kGone; }
};

ForeignTaskCache* ForeignCache() {
  if (t_foreign_cache_state == ForeignCacheState::kGone) return nullptr;
  thread_local ForeignCacheHolder holder;
  t_foreign_cache_state = ForeignCacheState::kLive;
  return &holder.cache;
}

}  // namespace

void* TaskBase::operator new(std::size_t bytes) {
  const std::size_t task_class = TaskClassOf(bytes);
  if (task_class == kNumTaskClasses) return ::operator new(bytes);
  if (Worker* worker = Worker::Current())
    return worker->task_cache().Allocate(task_class);
  if (ForeignTaskCache* cache = ForeignCache())
    return cache->Allocate(task_class);
  return NewTaskBlock(task_class);
}

void TaskBase::operator delete(void* block, std::size_t bytes) noexcept {
  const std::size_t task_class = TaskClassOf(bytes);
  if (task_class == kNumTaskClasses) {
    ::operator delete(block);
  } else if (Worker* worker = Worker::Current()) {
    worker->task_cache().Free(task_class, block);
  } else if (ForeignTaskCache* cache = ForeignCache()) {
    cache->Free(task_class, block);
  } else {
    DeleteTaskBlock(block);
  }
}

void TaskBase::WaitDone() {
  lock_.lock();
  std::uint32_t word = state_.load(std::memory_order_acquire);
  while ((word & kDoneBit) == 0) {
    // The waiters bit tells CompleteAndRelease() to take the lock and wake
    // us; set under the lock, so it finds us queued.
    if ((word & kWaitersBit) != 0 ||
        state_.compare_exchange_weak(word, word | kWaitersBit,
                                     std::memory_order_acq_rel,
                                     std::memory_order_acquire)) {
      Waiter self;
      Wait(self, waiters_, lock_);
      return;  // only CompleteAndRelease() wakes us
    }
  }
  lock_.unlock();
}

void TaskBase::CompleteAndRelease() {
  // Unsigned: adds the done bit and subtracts one reference.
  const std::uint32_t before =
      state_.fetch_add(kDoneBit - kOneRef, std::memory_order_acq_rel);
  if ((before & kWaitersBit) != 0) {
    // The waiter holds the handle's reference, so the task outlives this.
    WakeWaiters();
  } else if (before / kOneRef == 1) {
    delete this;  // detached: ours was the last reference
  }
}

void TaskBase::Complete() {
  const std::uint32_t before =
      state_.fetch_or(kDoneBit, std::memory_order_acq_rel);
  if ((before & kWaitersBit) != 0) WakeWaiters();
}

// Wait() returns only after we released the lock, so the waiter (and the
// task, which it keeps alive) outlives this.
void TaskBase::WakeWaiters() {
  SpinLockGuard guard(lock_);
  while (Waiter* waiter = waiters_.PopFront()) Wake(*waiter);
}

// ---- Wait / Wake ------------------------------------------------------------

void Wait(Waiter& w, WaitQueue& queue, SpinLock& lock) {
  queue.PushBack(&w);
  Worker* worker = Worker::Current();
  if (worker != nullptr && worker->in_fiber()) {
    Fiber* fiber = worker->current();
    w.fiber = fiber;
    w.worker = worker;
    fiber->waiter = &w;
    worker->Suspend({.unlock = &lock});
    fiber->waiter = nullptr;
  } else {
    w.fiber = nullptr;
    lock.unlock();
    while (w.woken.load(std::memory_order_acquire) == 0) {
      w.woken.wait(0, std::memory_order_acquire);
    }
  }
  // The waker still holds the lock while it finishes (it may touch `w`, and
  // it will unlock the primitive). Returning only after it let go means the
  // caller may destroy `w` and the primitive itself as soon as Wait returns:
  // the usual `WaitGroup wg; ...; wg.Wait();` on a stack that then unwinds.
  lock.lock();
  lock.unlock();
}

void Wake(Waiter& w) {
  if (Fiber* fiber = w.fiber; fiber != nullptr) {
    // Neither this nor the inbox push (see IntrusiveStack) touches the
    // fiber's own cache line when the sleeping worker's inbox is empty.
    w.worker->Schedule(fiber);
    return;
  }
  w.woken.store(1, std::memory_order_release);
  w.woken.notify_one();
}

bool InFiberImpl() {
  Worker* worker = Worker::Current();
  return worker != nullptr && worker->in_fiber();
}

bool RunOnBlockingPool(BlockingJob* job) {
  Worker* worker = Worker::Current();
  if (worker == nullptr || !worker->in_fiber()) return false;
  if (worker->executor()->blocking_pool() == nullptr) return false;
  job->waiter.fiber = worker->current();
  job->waiter.worker = worker;
  worker->AddExternalPending();
  // Handed to the pool only after we are switched out, so the pool's wake-up
  // can never race with our own suspension.
  worker->Suspend({.blocking_job = job});
  worker->RemoveExternalPending();
  return true;
}

}  // namespace internal
}  // namespace rpa::runtime
