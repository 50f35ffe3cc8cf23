#include "worker.h"

#include <string>
#include <thread>
#include <utility>

#include "executor_impl.h"

#include "rpa/runtime/check.h"
#include "rpa/runtime/this_fiber.h"

namespace rpa::runtime::internal {
Worker::Worker(ExecutorImpl* executor, int index)
    : executor_(executor),
      index_(index),
      task_cache_(&executor->task_pool()),
      rng_(std::uint64_t{0x9e3779b97f4a7c15} *
           static_cast<std::uint64_t>(index + 1)) {}

Worker::~Worker() {
  while (Fiber* fiber = idle_.PopFront()) DestroyFiber(fiber);
  RPA_CHECK_MSG(all_fibers_ == nullptr,
                "a worker was destroyed with fibers still blocked");
}

Status Worker::Init() {
  if (executor_->virtual_time()) {
    reactor_ = CreateTimerHeapReactor(this, /*virtual_time=*/true);
  } else if (executor_->io_backend() == IoBackend::kIoUring) {
    RPA_ASSIGN_OR_RETURN(
        reactor_, CreateUringReactor(this, executor_->options().ring_entries));
  } else {
    reactor_ = CreateTimerHeapReactor(this, /*virtual_time=*/false);
  }
  return OkStatus();
}

// ---- fibers -----------------------------------------------------------------

void Worker::FiberEntry(void* arg) {
  auto* worker = static_cast<Worker*>(arg);
  worker->RunPostSwitch();
  worker->Loop();
}

Fiber* Worker::TakeIdleFiber() {
  if (Fiber* fiber = idle_.PopFront()) {
    --num_idle_;
    return fiber;
  }
  auto* fiber = new Fiber(&executor_->stacks(), &Worker::FiberEntry, this);
  fiber->worker = this;
  fiber->all_next = all_fibers_;
  if (all_fibers_ != nullptr) all_fibers_->all_prev = fiber;
  all_fibers_ = fiber;
  fibers.Add();
  return fiber;
}

void Worker::DestroyFiber(Fiber* fiber) {
  if (fiber->all_prev != nullptr) {
    fiber->all_prev->all_next = fiber->all_next;
  } else {
    all_fibers_ = fiber->all_next;
  }
  if (fiber->all_next != nullptr) fiber->all_next->all_prev = fiber->all_prev;
  delete fiber;
  fibers.Sub();
}

void Worker::Switch(Fiber* to) {
  Fiber* from = current_;
  to->state = Fiber::State::kRunning;
  current_ = to;
  from->SwitchTo(to);
  RunPostSwitch();
}

// The running loop fiber parks itself in the idle list and switches to `to`.
void Worker::SwitchAndIdle(Fiber* to) {
  Fiber* self = current_;
  if (num_idle_ >= kMaxIdleFibers) {
    DestroyFiber(
        idle_.PopFront());  // keep the pool bounded; idle fibers hold nothing
    --num_idle_;
  }
  self->state = Fiber::State::kIdle;
  idle_.PushBack(self);
  ++num_idle_;
  Switch(to);
}

void Worker::RunPostSwitch() {
  PostSwitch action = std::exchange(post_switch_, PostSwitch{});
  if (action.unlock != nullptr) action.unlock->unlock();
  if (action.blocking_job != nullptr)
    executor_->blocking_pool()->Submit(action.blocking_job);
}

// ---- the scheduling loop ----------------------------------------------------

void Worker::Loop() {
  for (;;) {
    if (ShouldLeaveLoop()) {
      leave_loop_ = false;
      SwitchAndIdle(thread_fiber_.get());
      continue;
    }
    if (++tick_ % kMaintainEvery == 0) Maintain();
    if (Fiber* fiber = NextReady()) {
      SwitchAndIdle(fiber);
      continue;
    }
    if (TaskBase* task = NextTask()) {
      RunTask(task);
      continue;
    }
    if (!ready_.empty()) {
      // NextReady deferred to tasks that were stolen before we got to them.
      SwitchAndIdle(ready_.PopFront());
      continue;
    }
    if (Maintain()) continue;
    if (executor_->num_workers() == 0) {
      IdleDriver();
    } else {
      Idle();
    }
  }
}

bool Worker::ShouldLeaveLoop() {
  if (executor_->num_workers() > 0) return executor_->stopping();
  if (leave_loop_) return true;
  switch (drive_mode_) {
    case DriveMode::kJoin:
      return drive_until_->done();
    case DriveMode::kRun:
    case DriveMode::kShutdown:
      return executor_->LiveTasks() == 0;
    case DriveMode::kUntilIdle:
      return false;
  }
  return false;
}

bool Worker::HasTaskHint() const {
  return slot_.load(std::memory_order_relaxed) != nullptr ||
         !queue_.empty_hint() || !executor_->inject_empty();
}

// Ready fibers go first (they hold resources and were waiting), but after
// kMaxReadyStreak of them in a row a queued task gets a turn.
Fiber* Worker::NextReady() {
  if (ready_.empty()) return nullptr;
  if (ready_streak_ >= kMaxReadyStreak && HasTaskHint()) {
    ready_streak_ = 0;
    return nullptr;
  }
  ++ready_streak_;
  return ready_.PopFront();
}

// The next task to run, started. Stale entries (tasks their joiner claimed
// and ran inline while they were still queued) are dropped on the way,
// releasing the entry's reference: they are not work, so they do not use up
// the turn the loop gives tasks before it goes back to the ready fibers.
// Otherwise a fiber that spawns a batch, yields and joins the batch inline
// would leave stale entries faster than one-per-turn pops them.
TaskBase* Worker::NextTask() {
  ready_streak_ = 0;
  // Foreign submissions get a turn even when the local queue never empties.
  bool inject_turn = tick_ % 61 == 0;
  for (;;) {
    TaskBase* task = NextEntry(inject_turn);
    if (task == nullptr) return nullptr;
    // Spawned here: the only other claimer is its joiner, on this thread.
    if (task->home == this ? task->TryStartOnHomeThread() : task->TryStart())
      return task;
    task->Unref();  // stale: its joiner ran it
    inject_turn = false;
  }
}

// The next queue entry, stale or not: slot/queue, inject stack, steal.
TaskBase* Worker::NextEntry(bool inject_turn) {
  if (inject_turn) {
    if (TaskBase* task = TakeFromInjectQueue()) return task;
  }
  if (slot_.load(std::memory_order_relaxed) != nullptr) {
    TaskBase* newest = slot_.exchange(nullptr, std::memory_order_acquire);
    if (queue_.empty_hint()) {
      if (newest != nullptr) return newest;  // the only task: FIFO trivially
    } else if (newest != nullptr) {
      queue_.Push(newest);  // behind the older ones
    }
  }
  if (TaskBase* task = queue_.Take()) return task;
  if (TaskBase* task = TakeFromInjectQueue()) return task;
  return Steal();
}

// Moves the whole batch of foreign submissions into this worker's queue
// (where other workers can steal them) and takes the oldest.
TaskBase* Worker::TakeFromInjectQueue() {
  TaskBase* batch = executor_->TakeInjected();
  if (batch == nullptr) return nullptr;
  if (TaskBase* newest = slot_.exchange(nullptr, std::memory_order_acquire))
    queue_.Push(newest);
  while (batch != nullptr) {
    TaskBase* next = batch->next;
    batch->next = nullptr;
    queue_.Push(batch);
    batch = next;
  }
  return queue_.Take();
}

TaskBase* Worker::Steal() {
  const int n = executor_->num_workers();
  if (n < 2) return nullptr;
  rng_ ^= rng_ << 13;
  rng_ ^= rng_ >> 7;
  rng_ ^= rng_ << 17;
  const int start = static_cast<int>(rng_ % static_cast<std::uint64_t>(n));
  for (int i = 0; i < n; ++i) {
    const int victim = (start + i) % n;
    if (victim == index_) continue;
    std::size_t stolen = 0;
    if (TaskBase* task = executor_->worker(victim)->StealInto(this, &stolen)) {
      steals.Add(stolen);
      return task;
    }
  }
  return nullptr;
}

// `task` was started by NextTask.
void Worker::RunTask(TaskBase* task) {
  Fiber* self = current_;
  TaskBase* outer = self->task;
  task->outer = outer;
  task->runner_holds_ref = true;
  self->task = task;
  task->Run();  // drops the entry's reference: `task` may be gone
  // Same fiber, same worker: a started task never migrates.
  self->task = outer;
  completed.Add();
}

void Worker::RunInline(TaskBase* task, bool with_entry) {
  Fiber* self = current_;
  task->outer = self->task;
  task->runner_holds_ref = with_entry;
  self->task = task;
  if (with_entry) {
    task->RunAsJoinerWithEntry();
  } else {
    task->RunAsJoinerWithoutEntry();
  }
  self->task = task->outer;
  completed.Add();
}

bool Worker::Maintain() {
  bool progress = DrainInbox();
  if (reactor_->Poll()) progress = true;
  // Repairs a wake-up that a local push missed (NotifyAfterLocalPush): our
  // queue still has tasks and a worker sleeps while nobody looks.
  if (executor_->num_workers() > 1 && !queue_.empty_hint())
    executor_->NotifyAfterLocalPush();
  return progress;
}

bool Worker::DrainInbox() {
  Fiber* fiber = inbox_.TakeAll();
  if (fiber == nullptr) return false;
  while (fiber != nullptr) {
    Fiber* next = fiber->next;
    MakeReady(fiber);
    fiber = next;
  }
  return true;
}

// ---- waking and suspending --------------------------------------------------

void Worker::MakeReady(Fiber* fiber) {
  RPA_DCHECK(fiber->state == Fiber::State::kBlocked);
  fiber->state = Fiber::State::kReady;
  blocked.Sub();
  ready_.PushBack(fiber);
}

void Worker::Schedule(Fiber* fiber) {
  if (tls_current_ == this) {
    MakeReady(fiber);
    return;
  }
  inbox_.Push(fiber);  // seq_cst: then look for a parked owner (Dekker pair)
  Unpark();
}

void Worker::Unpark() {
  if (parked_.load(std::memory_order_seq_cst) &&
      parked_.exchange(false, std::memory_order_seq_cst)) {
    reactor_->Wake();
  }
}

void Worker::Suspend(PostSwitch action) {
  RPA_DCHECK(in_fiber());
  Fiber* self = current_;
  self->state = Fiber::State::kBlocked;
  blocked.Add();
  Fiber* next = ready_.PopFront();
  if (next == nullptr)
    next = TakeIdleFiber();  // the worker keeps going on another fiber
  post_switch_ = action;
  Switch(next);
}

void Worker::Yield() {
  Fiber* self = current_;
  if (++tick_ % kMaintainEvery == 0 || ready_.empty()) Maintain();
  const bool tasks = HasTaskHint();
  if (!ready_.empty() && !(ready_streak_ >= kMaxReadyStreak && tasks)) {
    ++ready_streak_;
    self->state = Fiber::State::kReady;
    ready_.PushBack(self);
    Switch(ready_.PopFront());
    return;
  }
  if (tasks) {
    // A loop fiber runs the next task before anything ready (us included).
    ready_streak_ = kMaxReadyStreak;
    self->state = Fiber::State::kReady;
    ready_.PushBack(self);
    Switch(TakeIdleFiber());
  }
}

void Worker::SleepUntil(TimePoint deadline) {
  if (deadline <= reactor_->Now()) {
    Yield();
    return;
  }
  ReactorOp op;
  op.kind = ReactorOp::Kind::kTimer;
  op.deadline = deadline;
  op.fiber = current_;
  RunIo(&op);
}

std::int32_t Worker::RunIo(ReactorOp* op) {
  op->fiber = current_;
  while (!reactor_->TryAdd(op)) {  // the ring is full: back-pressure
    reactor_->WaitForSlot(current_);
    Suspend({});
  }
  // Completions are harvested by this thread only, so nothing can resume us
  // before we are switched out.
  Suspend({});
  return op->result;
}

// ---- entry points -----------------------------------------------------------

void Worker::ThreadMain() {
  tls_current_ = this;
  thread_fiber_ = std::make_unique<Fiber>();
  current_ = thread_fiber_.get();
  Switch(TakeIdleFiber());
  // The loop saw stopping() and switched back here.
  current_ = nullptr;
  thread_fiber_.reset();
  tls_current_ = nullptr;
}

Status Worker::Drive(DriveMode mode, TaskBase* until) {
  RPA_CHECK(tls_current_ == nullptr);
  tls_current_ = this;
  thread_fiber_ = std::make_unique<Fiber>();
  current_ = thread_fiber_.get();
  drive_mode_ = mode;
  drive_until_ = until;
  drive_status_ = OkStatus();
  leave_loop_ = false;
  Switch(TakeIdleFiber());
  current_ = nullptr;
  thread_fiber_.reset();
  tls_current_ = nullptr;
  return std::exchange(drive_status_, OkStatus());
}

// ---- shutdown ---------------------------------------------------------------

std::uint64_t Worker::AbandonBlockedFibers() {
  std::uint64_t failed = 0;
  Fiber* fiber = all_fibers_;
  while (fiber != nullptr) {
    Fiber* next = fiber->all_next;
    if (fiber->state == Fiber::State::kBlocked) {
      if (Waiter* waiter = fiber->waiter;
          waiter != nullptr && waiter->queue != nullptr) {
        SpinLockGuard guard(*waiter->queue->lock());
        waiter->queue->Remove(waiter);
      }
      for (TaskBase* task = fiber->task; task != nullptr;) {
        TaskBase* outer = task->outer;
        task->Fail(FailedPreconditionError(
                       "the executor shut down while the task was blocked"),
                   /*release=*/task->runner_holds_ref);
        ++failed;
        task = outer;
      }
      blocked.Sub();
      DestroyFiber(fiber);
    }
    fiber = next;
  }
  return failed;
}

}  // namespace rpa::runtime::internal

// The this_fiber entry points live in this file so that the yield path
// (this_fiber::Yield -> Worker::Yield -> Switch -> jump) compiles into one
// function: see Fiber::SwitchTo on why frames matter.
namespace rpa::runtime::this_fiber {
namespace {

internal::Worker* FiberWorker() {
  internal::Worker* worker = internal::Worker::Current();
  return worker != nullptr && worker->in_fiber() ? worker : nullptr;
}

}  // namespace

bool InFiber() { return FiberWorker() != nullptr; }

void Yield() {
  if (internal::Worker* worker = FiberWorker()) {
    worker->Yield();
  } else {
    std::this_thread::yield();
  }
}

void SleepFor(Duration duration) {
  if (internal::Worker* worker = FiberWorker()) {
    worker->SleepUntil(worker->reactor()->Now() + duration);
  } else if (duration > Duration::zero()) {
    std::this_thread::sleep_for(duration);
  }
}

void SleepUntil(TimePoint deadline) {
  if (internal::Worker* worker = FiberWorker()) {
    worker->SleepUntil(deadline);
  } else {
    std::this_thread::sleep_until(deadline);
  }
}

TimePoint Now() {
  if (internal::Worker* worker = FiberWorker()) return worker->reactor()->Now();
  return Clock::now();
}

int WorkerIndex() {
  internal::Worker* worker = FiberWorker();
  return worker != nullptr ? worker->index() : -1;
}

}  // namespace rpa::runtime::this_fiber
