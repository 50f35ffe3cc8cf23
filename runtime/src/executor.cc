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
    // Help-first: a task nobody started runs right here, on our stack.
    if (task->executor == worker->executor()) {
      if (worker->TakeFromSlot(task)) {  // just spawned here: claim is certain
        RPA_CHECK(task->TryClaim());
        worker->RunInline(task, /*holds_queue_ref=*/true);
        return OkStatus();
      }
      if (task->TryClaim()) {  // still queued somewhere: leaves a stale entry
        worker->RunInline(task, /*holds_queue_ref=*/false);
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

// ---- TaskBase
// -----------------------------------------------------------------------

void TaskBase::WaitDone() {
  lock_.lock();
  std::uint32_t state = state_.load(std::memory_order_acquire);
  while ((state & kStateMask) != kDone) {
    // The waiters bit tells Complete() to take the lock and wake us; set under
    // the lock, so Complete() finds us queued.
    if ((state & kWaitersBit) != 0 ||
        state_.compare_exchange_weak(state, state | kWaitersBit,
                                     std::memory_order_acq_rel,
                                     std::memory_order_acquire)) {
      Waiter self;
      Wait(self, waiters_, lock_);
      return;  // only Complete() wakes us
    }
  }
  lock_.unlock();
}

void TaskBase::Complete() {
  const std::uint32_t before =
      state_.exchange(kDone, std::memory_order_acq_rel);
  if ((before & kWaitersBit) == 0) return;
  SpinLockGuard guard(lock_);
  while (Waiter* waiter = waiters_.PopFront()) Wake(*waiter);
}

// ---- Wait / Wake
// ------------------------------------------------------------------------

void Wait(Waiter& w, WaitQueue& queue, SpinLock& lock) {
  queue.PushBack(&w);
  Worker* worker = Worker::Current();
  if (worker != nullptr && worker->in_fiber()) {
    Fiber* fiber = worker->current();
    w.fiber = fiber;
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
    fiber->worker->Schedule(fiber);
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
  worker->AddExternalPending();
  // Handed to the pool only after we are switched out, so the pool's wake-up
  // can never race with our own suspension.
  worker->Suspend({.blocking_job = job});
  worker->RemoveExternalPending();
  return true;
}

}  // namespace internal
}  // namespace rpa::runtime
