// Worker's idle path, split off worker.cc (which keeps the per-task hot
// path: the loop, the run queue, waking, suspending and fiber switches): what
// the loop does when it finds nothing to run. Spinning, parking (the parking
// half of the wake-up protocol, README.md) and, with num_workers == 0, the
// driving thread's idle step.

#include <cstdint>
#include <string>

#include "executor_impl.h"
#include "worker.h"

#include "rpa/runtime/check.h"
#include "rpa/runtime/clock.h"
#include "rpa/runtime/internal/atomic_traits.h"
#include "rpa/runtime/internal/spin_lock.h"
#include "rpa/runtime/status.h"

namespace rpa::runtime::internal {

void Worker::Idle() {
  if (FindWorkWhileSpinning()) return;
  Park();
}

bool Worker::FindWorkWhileSpinning() {
  const auto spin = executor_->options().spin;
  if (spin <= Duration::zero()) return false;
  const TimePoint deadline = Clock::now() + spin;
  // Only some workers search at once (TryStartSpinning). Another one, if a
  // fiber of its own is blocked, watches its inbox and ring meanwhile, where
  // another thread may wake that fiber any moment (the other side of a
  // channel hand-off, a join): parking would add a wake-up (microseconds on
  // a VM) to every such round trip. It starts searching when a searcher
  // stops, and parks when the spin time is over.
  for (std::uint32_t i = 1; !executor_->TryStartSpinning(); ++i) {
    if (blocked.Get() == 0 || executor_->draining()) return false;
    if (Maintain()) return true;
    if (i % 16 == 0 && Clock::now() >= deadline) return false;
    CpuRelax();
  }
  bool found = false;
  for (std::uint32_t i = 1;; ++i) {
    if (Maintain()) {
      found = true;
      break;
    }
    TaskBase* task = TakeFromInjectQueue();
    if (task == nullptr) task = Steal();
    if (task != nullptr) {
      queue_.Push(task);
      found = true;
      break;
    }
    if (executor_->draining()) break;
    if (i % 16 == 0 && Clock::now() >= deadline) break;
    CpuRelax();
  }
  executor_->StopSpinning(found);
  return found;
}

// The parking half of the wake-up protocol (README.md): announce, re-check
// every source of work, then block in the reactor.
void Worker::Park() {
  RPA_DCHECK(ready_.empty());
  parked_.store(true, std::memory_order_seq_cst);
  executor_->AddSleeper(this);
  SeqCstFence();
  const bool work = !inbox_.empty() || !executor_->inject_empty() ||
                    executor_->AnyQueueNonEmpty() || executor_->stopping();
  if (!work) {
    if (executor_->draining() && reactor_->pending() == 0 &&
        external_pending_ == 0) {
      quiescent_.store(true, std::memory_order_seq_cst);
      executor_->NotifyCoordinator();
    }
    parks.Add();
    reactor_->Park();
  }
  // Epoch first: the shutdown coordinator must see that we woke before we
  // take anything from our inbox.
  epoch_.fetch_add(1, std::memory_order_seq_cst);
  quiescent_.store(false, std::memory_order_seq_cst);
  parked_.store(false, std::memory_order_seq_cst);
  executor_->RemoveSleeper(this);
}

// num_workers == 0: nothing is ready on the driving thread.
void Worker::IdleDriver() {
  RPA_DCHECK(ready_.empty());
  if (drive_mode_ == DriveMode::kUntilIdle) {
    leave_loop_ = true;
    return;
  }
  if (executor_->virtual_time()) {
    if (reactor_->AdvanceToNextTimer())
      return;  // time jumps; a sleeper is ready
    if (external_pending_ == 0) {
      const std::uint64_t n = blocked.Get();
      if (drive_mode_ != DriveMode::kShutdown) {
        drive_status_ =
            FailedPreconditionError("deadlock: " + std::to_string(n) +
                                    " fibers blocked and no timer pending");
      }
      leave_loop_ = true;
      return;
    }
  } else if (drive_mode_ == DriveMode::kShutdown && reactor_->pending() == 0 &&
             external_pending_ == 0) {
    leave_loop_ = true;  // quiescent: what is blocked now stays blocked
    return;
  }
  parked_.store(true, std::memory_order_seq_cst);
  if (inbox_.empty() && executor_->inject_empty()) {
    parks.Add();
    reactor_->Park();
  }
  parked_.store(false, std::memory_order_seq_cst);
}

}  // namespace rpa::runtime::internal
