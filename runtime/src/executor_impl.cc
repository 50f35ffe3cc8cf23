#include "executor_impl.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include "rpa/runtime/check.h"

namespace rpa::runtime::internal {
namespace {

bool IsPowerOfTwo(std::uint32_t x) { return x != 0 && (x & (x - 1)) == 0; }

Status Validate(const ExecutorOptions& o) {
  if (o.num_workers < 0 || o.num_workers > 256) {
    return InvalidArgumentError("num_workers must be in [0, 256], got " +
                                std::to_string(o.num_workers));
  }
  if (o.stack_bytes < 16 * 1024 || o.stack_bytes > (std::size_t{1} << 30)) {
    return InvalidArgumentError("stack_bytes must be in [16 KiB, 1 GiB], got " +
                                std::to_string(o.stack_bytes));
  }
  if (o.clock == ClockKind::kVirtual && o.num_workers != 0) {
    return InvalidArgumentError(
        "clock kVirtual requires num_workers == 0, got " +
        std::to_string(o.num_workers));
  }
  if (!IsPowerOfTwo(o.ring_entries) || o.ring_entries < 4 ||
      o.ring_entries > 32768) {
    return InvalidArgumentError(
        "ring_entries must be a power of two in [4, 32768], got " +
        std::to_string(o.ring_entries));
  }
  if (o.blocking_threads < 0 || o.blocking_threads > 64) {
    return InvalidArgumentError("blocking_threads must be in [0, 64], got " +
                                std::to_string(o.blocking_threads));
  }
  if (o.spin < Duration::zero() || o.spin > std::chrono::seconds(1)) {
    return InvalidArgumentError("spin must be in [0, 1 s], got " +
                                std::to_string(o.spin.count()) + " ns");
  }
  return OkStatus();
}

StatusOr<IoBackend> ChooseBackend(const ExecutorOptions& o) {
  if (o.clock == ClockKind::kVirtual || o.io_backend == IoBackend::kThreads) {
    return IoBackend::kThreads;
  }
  Status probe = ProbeIoUring();
  if (probe.ok()) return IoBackend::kIoUring;
  if (o.io_backend == IoBackend::kIoUring) return probe;
  static std::once_flag said_once;
  std::call_once(said_once, [&] {
    std::fprintf(
        stderr,
        "rpa::runtime: io_uring is unavailable (%s); using the thread-based "
        "fallback (condition variables, timer heap, blocking-pool file I/O)\n",
        probe.message().c_str());
  });
  return IoBackend::kThreads;
}

}  // namespace

ExecutorImpl::ExecutorImpl(const ExecutorOptions& options, Executor* owner,
                           IoBackend backend)
    : options_(options),
      owner_(owner),
      backend_(backend),
      stacks_(options.stack_bytes) {}

StatusOr<std::unique_ptr<ExecutorImpl>> ExecutorImpl::Create(
    const ExecutorOptions& options, Executor* owner) {
  RPA_RETURN_IF_ERROR(Validate(options));
  RPA_ASSIGN_OR_RETURN(IoBackend backend, ChooseBackend(options));
  std::unique_ptr<ExecutorImpl> impl(new ExecutorImpl(options, owner, backend));
  const int num_objects = std::max(1, options.num_workers);
  for (int i = 0; i < num_objects; ++i) {
    impl->workers_.push_back(std::make_unique<Worker>(impl.get(), i));
    RPA_RETURN_IF_ERROR(impl->workers_.back()->Init());
  }
  int pool_threads = options.blocking_threads;
  if (backend == IoBackend::kThreads && options.clock == ClockKind::kReal) {
    pool_threads = std::max(pool_threads, 1);  // file I/O needs it
  }
  if (pool_threads > 0)
    impl->blocking_ = std::make_unique<BlockingPool>(pool_threads);
  for (int i = 0; i < options.num_workers; ++i) {
    Worker* worker = impl->workers_[static_cast<std::size_t>(i)].get();
    impl->threads_.emplace_back([worker] { worker->ThreadMain(); });
  }
  return impl;
}

ExecutorImpl::~ExecutorImpl() {
  RPA_CHECK_MSG(threads_.empty(), "ExecutorImpl destroyed before Shutdown");
  blocking_.reset();
  workers_.clear();
}

// ---- submission -------------------------------------------------------------

void ExecutorImpl::RejectTask(TaskBase* task, const char* why) {
  RPA_CHECK(task->TryStart());
  task->Fail(FailedPreconditionError(why), /*release=*/true);
  failed_.fetch_add(1, std::memory_order_relaxed);
}

void ExecutorImpl::Submit(TaskBase* task) {
  task->executor = this;
  Worker* current = Worker::Current();
  if (current != nullptr && current->executor() == this) {
    task->home = current;
    current->spawned.Add();
    current->Push(task);
    if (num_workers() > 1) NotifyAfterLocalPush();
    return;
  }
  // A foreign thread (or another executor's fiber). The submitter count and
  // the shutting_down_ flag are a Dekker pair with Shutdown(): either we see
  // the flag and reject, or Shutdown waits for our push before its final sweep.
  submitters_.fetch_add(1, std::memory_order_seq_cst);
  if (shutting_down_.load(std::memory_order_seq_cst)) {
    submitters_.fetch_sub(1, std::memory_order_seq_cst);
    foreign_spawned_.fetch_add(
        1, std::memory_order_release);  // counted, then failed
    RejectTask(task, "the executor is shut down; the task did not run");
    return;
  }
  foreign_spawned_.fetch_add(1, std::memory_order_release);
  inject_.Push(task);
  if (num_workers() == 0) {
    workers_[0]->Unpark();
  } else {
    NotifyOne();
  }
  submitters_.fetch_sub(1, std::memory_order_seq_cst);
}

bool ExecutorImpl::AnyQueueNonEmpty() const {
  for (const auto& worker : workers_) {
    if (!worker->queue_empty()) return true;
  }
  return false;
}

// Completed counters are read before spawned ones: a zero then means that at
// one instant every spawned task had completed (completions never outrun
// spawns), and with foreign spawns cut off nothing can spawn more.
std::uint64_t ExecutorImpl::LiveTasks() const {
  std::uint64_t completed = failed_.load(std::memory_order_acquire);
  for (const auto& worker : workers_) completed += worker->completed.Get();
  std::uint64_t spawned = foreign_spawned_.load(std::memory_order_acquire);
  for (const auto& worker : workers_) spawned += worker->spawned.Get();
  return spawned >= completed ? spawned - completed : 0;
}

// ---- the wake-up protocol ---------------------------------------------------

bool ExecutorImpl::TryStartSpinning() {
  // At most half the workers search at once (at least one): more would only
  // contend on the victims' queues.
  const int limit = std::max(1, num_workers() / 2);
  if (num_spinning_.load(std::memory_order_relaxed) >= limit) return false;
  num_spinning_.fetch_add(1, std::memory_order_seq_cst);
  return true;
}

void ExecutorImpl::StopSpinning(bool found_work) {
  const int before = num_spinning_.fetch_sub(1, std::memory_order_seq_cst);
  // The last searcher that found work hands the search on, in case there is
  // more (the spawner skipped waking anyone because we were spinning).
  if (found_work && before == 1 && (AnyQueueNonEmpty() || !inject_empty()))
    NotifyOne();
}

void ExecutorImpl::NotifyOne() {
  SeqCstFence();
  if (num_spinning_.load(std::memory_order_seq_cst) > 0) return;
  if (num_sleeping_.load(std::memory_order_seq_cst) == 0) return;
  Worker* sleeper = nullptr;
  {
    std::lock_guard<std::mutex> lock(sleepers_mu_);
    if (sleepers_.empty()) return;
    sleeper = sleepers_.back();
    sleepers_.pop_back();
    num_sleeping_.fetch_sub(1, std::memory_order_seq_cst);
  }
  sleeper->Unpark();
}

void ExecutorImpl::AddSleeper(Worker* worker) {
  std::lock_guard<std::mutex> lock(sleepers_mu_);
  sleepers_.push_back(worker);
  num_sleeping_.fetch_add(1, std::memory_order_seq_cst);
}

void ExecutorImpl::RemoveSleeper(Worker* worker) {
  std::lock_guard<std::mutex> lock(sleepers_mu_);
  auto it = std::find(sleepers_.begin(), sleepers_.end(), worker);
  if (it != sleepers_.end()) {
    sleepers_.erase(it);
    num_sleeping_.fetch_sub(1, std::memory_order_seq_cst);
  }
}

void ExecutorImpl::WakeAll() {
  for (const auto& worker : workers_) worker->Unpark();
}

void ExecutorImpl::NotifyCoordinator() {
  { std::lock_guard<std::mutex> lock(coordinator_mu_); }
  coordinator_cv_.notify_all();
}

// Every worker parked with nothing in flight, and nothing queued anywhere,
// with no worker having woken in between (epochs unchanged).
bool ExecutorImpl::AllQuiescent() const {
  std::vector<std::uint64_t> epochs;
  epochs.reserve(workers_.size());
  for (const auto& worker : workers_) epochs.push_back(worker->epoch());
  for (const auto& worker : workers_) {
    if (!worker->quiescent()) return false;
  }
  if (!inject_.empty()) return false;
  for (const auto& worker : workers_) {
    if (!worker->inbox_empty() || !worker->queue_empty()) return false;
  }
  for (std::size_t i = 0; i < workers_.size(); ++i) {
    if (workers_[i]->epoch() != epochs[i]) return false;
  }
  return true;
}

// ---- running and stopping ---------------------------------------------------

Status ExecutorImpl::Drive(DriveMode mode, TaskBase* until) {
  if (num_workers() != 0) {
    return FailedPreconditionError(
        "Run/RunUntilIdle need num_workers == 0, got " +
        std::to_string(num_workers()));
  }
  if (Worker::Current() != nullptr) {
    return FailedPreconditionError(
        "Run/RunUntilIdle called from inside a fiber");
  }
  if (driving_.exchange(true, std::memory_order_acquire)) {
    if (until != nullptr) {  // a Join from a second thread: wait for the driver
      until->WaitDone();
      return OkStatus();
    }
    return FailedPreconditionError(
        "the executor is already being run by another thread");
  }
  Status status = workers_[0]->Drive(mode, until);
  driving_.store(false, std::memory_order_release);
  return status;
}

Status ExecutorImpl::Shutdown() {
  if (Worker::Current() != nullptr && Worker::Current()->executor() == this) {
    return FailedPreconditionError(
        "Shutdown() called from a fiber of the executor");
  }
  std::lock_guard<std::mutex> once(shutdown_mu_);
  if (shutdown_done_) return shutdown_status_;
  shutting_down_.store(true, std::memory_order_seq_cst);
  while (submitters_.load(std::memory_order_seq_cst) != 0)
    std::this_thread::yield();

  if (num_workers() == 0) {
    Status status = Drive(DriveMode::kShutdown, nullptr);
    if (!status.ok()) return status;  // being run by another thread right now
  } else {
    draining_.store(true, std::memory_order_seq_cst);
    WakeAll();
    std::unique_lock<std::mutex> lock(coordinator_mu_);
    while (LiveTasks() != 0 && !AllQuiescent()) {
      coordinator_cv_.wait_for(lock, std::chrono::milliseconds(1));
    }
    lock.unlock();
    stopping_.store(true, std::memory_order_release);
    for (const auto& worker : workers_) {
      worker->Unpark();
      worker->reactor()->Wake();
    }
    for (std::thread& thread : threads_) thread.join();
    threads_.clear();
  }

  // Single-threaded from here on.
  std::uint64_t never_ran = 0;
  for (TaskBase* task = inject_.TakeAll(); task != nullptr;) {
    TaskBase* next = task->next;
    task->next = nullptr;
    RejectTask(task, "the executor shut down before the task ran");
    ++never_ran;
    task = next;
  }
  for (const auto& worker : workers_) {
    while (TaskBase* task = worker->TakeLeftoverTask()) {
      if (task->TryStart()) {
        task->Fail(FailedPreconditionError(
                       "the executor shut down before the task ran"),
                   /*release=*/true);
        failed_.fetch_add(1, std::memory_order_relaxed);
        ++never_ran;
      } else {
        task->Unref();  // stale: its joiner ran it
      }
    }
  }
  std::uint64_t blocked = 0;
  for (const auto& worker : workers_) blocked += worker->AbandonBlockedFibers();
  failed_.fetch_add(blocked, std::memory_order_relaxed);
  blocking_.reset();

  shutdown_done_ = true;
  if (blocked != 0 || never_ran != 0) {
    shutdown_status_ =
        FailedPreconditionError("shutdown: " + std::to_string(blocked) +
                                " tasks never finished (blocked), " +
                                std::to_string(never_ran) + " never ran");
  }
  return shutdown_status_;
}

TimePoint ExecutorImpl::Now() const {
  return virtual_time() ? workers_[0]->reactor()->Now() : Clock::now();
}

ExecutorStats ExecutorImpl::Stats() const {
  ExecutorStats stats;
  stats.tasks_spawned = foreign_spawned_.load(std::memory_order_acquire);
  stats.tasks_failed_at_shutdown = failed_.load(std::memory_order_acquire);
  for (const auto& worker : workers_) {
    stats.tasks_spawned += worker->spawned.Get();
    stats.tasks_completed += worker->completed.Get();
    stats.steals += worker->steals.Get();
    stats.fibers += worker->fibers.Get();
    stats.blocked_fibers += worker->blocked.Get();
    stats.parks += worker->parks.Get();
    stats.queued_tasks += worker->queued_hint();
  }
  return stats;
}

}  // namespace rpa::runtime::internal
