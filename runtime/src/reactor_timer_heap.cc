// TimerHeapReactor: the kThreads fallback and the virtual clock.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <vector>

#include "reactor.h"
#include "worker.h"

#include "rpa/runtime/check.h"

namespace rpa::runtime::internal {
namespace {

class TimerHeapReactor final : public Reactor {
 public:
  TimerHeapReactor(Worker* worker, bool virtual_time)
      : worker_(worker), virtual_time_(virtual_time) {}

  TimePoint Now() const override {
    if (!virtual_time_) return Clock::now();
    return TimePoint(Duration(virtual_now_ns_.load(std::memory_order_acquire)));
  }

  bool TryAdd(ReactorOp* op) override {
    RPA_CHECK_MSG(op->kind == ReactorOp::Kind::kTimer,
                  "file I/O goes to the blocking pool");
    heap_.push_back({op->deadline, next_sequence_++, op});
    std::push_heap(heap_.begin(), heap_.end(), Later);
    return true;
  }
  void WaitForSlot(Fiber*) override {
    RPA_CHECK_MSG(false, "a timer heap is never full");
  }
  bool supports_file_io() const override { return false; }

  // Fires every timer whose deadline has passed, earliest first; equal
  // deadlines in the order they were armed (the sequence number).
  bool Poll() override {
    if (heap_.empty()) return false;
    const TimePoint now = Now();
    bool fired = false;
    while (!heap_.empty() && heap_.front().deadline <= now) {
      std::pop_heap(heap_.begin(), heap_.end(), Later);
      ReactorOp* op = heap_.back().op;
      heap_.pop_back();
      worker_->MakeReady(op->fiber);
      fired = true;
    }
    return fired;
  }

  void Park() override {
    std::unique_lock<std::mutex> lock(mu_);
    if (virtual_time_ || heap_.empty()) {
      cv_.wait(lock, [&] { return notified_; });
    } else {
      cv_.wait_until(lock, heap_.front().deadline, [&] { return notified_; });
    }
    notified_ = false;
  }

  void Wake() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      notified_ = true;
    }
    cv_.notify_one();
  }

  std::size_t pending() const override { return heap_.size(); }

  bool AdvanceToNextTimer() override {
    if (!virtual_time_ || heap_.empty()) return false;
    const auto deadline_ns = heap_.front().deadline.time_since_epoch().count();
    if (deadline_ns > virtual_now_ns_.load(std::memory_order_relaxed)) {
      virtual_now_ns_.store(deadline_ns, std::memory_order_release);
    }
    return Poll();
  }

 private:
  struct Timer {
    TimePoint deadline;
    std::uint64_t sequence;
    ReactorOp* op;
  };
  static bool Later(const Timer& a, const Timer& b) {
    return a.deadline != b.deadline ? a.deadline > b.deadline
                                    : a.sequence > b.sequence;
  }

  Worker* const worker_;
  const bool virtual_time_;
  std::atomic<Duration::rep> virtual_now_ns_{0};
  std::vector<Timer> heap_;  // owner only
  std::uint64_t next_sequence_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool notified_ = false;
};

}  // namespace

std::unique_ptr<Reactor> CreateTimerHeapReactor(Worker* worker,
                                                bool virtual_time) {
  return std::make_unique<TimerHeapReactor>(worker, virtual_time);
}

}  // namespace rpa::runtime::internal
