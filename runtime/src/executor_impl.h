#pragma once

// ExecutorImpl: the state shared by an executor's workers (see README.md).

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "blocking_pool.h"
#include "fiber.h"
#include "work_queue.h"
#include "worker.h"

#include "rpa/runtime/executor.h"

namespace rpa::runtime::internal {

class ExecutorImpl {
 public:
  static StatusOr<std::unique_ptr<ExecutorImpl>> Create(
      const ExecutorOptions& options, Executor* owner);
  ~ExecutorImpl();

  void Submit(TaskBase* task);
  Status Drive(DriveMode mode, TaskBase* until);  // num_workers == 0
  Status Shutdown();
  bool shutdown_done() {
    std::lock_guard<std::mutex> lock(shutdown_mu_);
    return shutdown_done_;
  }
  TimePoint Now() const;
  ExecutorStats Stats() const;

  Executor* owner() const { return owner_; }
  const ExecutorOptions& options() const { return options_; }
  int num_workers() const { return options_.num_workers; }
  IoBackend io_backend() const { return backend_; }
  bool virtual_time() const { return options_.clock == ClockKind::kVirtual; }
  Worker* worker(int i) const {
    return workers_[static_cast<std::size_t>(i)].get();
  }
  int num_worker_objects() const { return static_cast<int>(workers_.size()); }
  StackPool& stacks() { return stacks_; }
  TaskBlockPool& task_pool() { return task_pool_; }
  BlockingPool* blocking_pool() const { return blocking_.get(); }

  // Tasks submitted from outside the executor's fibers, oldest first.
  TaskBase* TakeInjected() { return inject_.TakeAll(); }
  bool inject_empty() const { return inject_.empty(); }
  bool AnyQueueNonEmpty() const;
  std::uint64_t LiveTasks() const;

  // Wake-up protocol (README.md): spinning workers, sleeping workers.
  bool TryStartSpinning();
  void StopSpinning(bool found_work);
  void NotifyOne();  // after a push: wake a sleeper unless someone spins
  // After a push to the calling worker's own queue. That worker runs the
  // task if nobody steals it, so the wake-up only buys parallelism: the
  // common cases (nobody parked, or somebody already looking) cost two plain
  // loads instead of the Dekker fence. A worker that parks in the same few
  // nanoseconds may miss this push; the pusher's next maintenance round
  // (every 32 ticks, and before it parks) wakes it if work is still queued.
  void NotifyAfterLocalPush() {
    if (num_sleeping_.load(std::memory_order_relaxed) == 0 ||
        num_spinning_.load(std::memory_order_relaxed) > 0) {
      return;
    }
    NotifyOne();
  }
  void AddSleeper(Worker* worker);
  void RemoveSleeper(Worker* worker);

  bool draining() const { return draining_.load(std::memory_order_seq_cst); }
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }
  void NotifyCoordinator();

 private:
  ExecutorImpl(const ExecutorOptions& options, Executor* owner,
               IoBackend backend);
  void RejectTask(TaskBase* task, const char* why);
  bool AllQuiescent() const;
  void WakeAll();

  const ExecutorOptions options_;
  Executor* const owner_;
  const IoBackend backend_;
  StackPool stacks_;
  TaskBlockPool task_pool_;  // outlives the workers' caches
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  std::unique_ptr<BlockingPool> blocking_;

  IntrusiveStack<TaskBase> inject_;
  alignas(64) std::atomic<std::uint64_t> foreign_spawned_{0};
  std::atomic<std::uint64_t> failed_{0};
  std::atomic<std::int64_t> submitters_{0};  // foreign Submit calls in progress
  std::atomic<bool> driving_{false};

  alignas(64) std::atomic<int> num_spinning_{0};
  std::atomic<int> num_sleeping_{0};
  std::mutex sleepers_mu_;
  std::vector<Worker*> sleepers_;

  std::atomic<bool> shutting_down_{false};  // rejects foreign spawns
  std::atomic<bool> draining_{false};       // workers report quiescence
  std::atomic<bool> stopping_{false};       // workers leave their loops
  std::mutex coordinator_mu_;
  std::condition_variable coordinator_cv_;
  std::mutex shutdown_mu_;
  bool shutdown_done_ = false;
  Status shutdown_status_;
};

}  // namespace rpa::runtime::internal
