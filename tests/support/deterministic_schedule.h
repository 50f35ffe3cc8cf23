#pragma once

// DeterministicSchedule and DeterministicAtomic: run lock-free code under a
// seeded, reproducible interleaving (after folly's DeterministicSchedule).
//
// Code under test is templated on its atomic type; the test instantiates it
// with DeterministicAtomic. Run() starts one real std::thread per body, but
// only one of them runs at a time: every operation of a DeterministicAtomic
// (and every AtomicTraits fence, through DeterministicAtomic::ThreadFence) is
// a scheduling point where the running thread asks the schedule which thread
// runs next, picked by a seeded RNG. So a seed names one interleaving, a
// failure replays exactly, and many seeds explore many interleavings,
// including the rare ones a stress test hits once a week.
//
// What it explores: interleavings of sequentially consistent executions
// (every operation is performed seq_cst, whatever order the code passes).
// Weak-memory reorderings are TSan's and the orderings' proofs' business.
// compare_exchange_weak fails spuriously now and then (seeded), to exercise
// retry loops.
//
// Rules for bodies: deterministic given the schedule (seed your own RNG from
// the seed and the thread index), never block on anything another body holds
// across a scheduling point, and report failures rather than abort (record
// them; check after Run).
//
// Thread-safety: Run() is called from one (non-participant) thread; the
// static members are called by participants. Operations from threads that
// are not in a schedule (setup and checks in the test's main thread) are
// performed directly.
//
// Example:
//   DeterministicSchedule schedule(seed);
//   Stack<DeterministicAtomic> stack;
//   schedule.Run({[&] { stack.Push(1); }, [&] { stack.Pop(); }});

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

namespace rpa::test {

class DeterministicSchedule {
 public:
  struct Options {
    // Chance, at a scheduling point, of switching to another runnable thread
    // (picked uniformly). 100 switches at every point.
    int switch_percent = 50;
    // Chance that a compare_exchange_weak fails spuriously.
    int spurious_failure_percent = 10;
  };

  explicit DeterministicSchedule(std::uint64_t seed)
      : DeterministicSchedule(seed, Options()) {}
  DeterministicSchedule(std::uint64_t seed, Options options)
      : options_(options), rng_(seed) {}
  DeterministicSchedule(const DeterministicSchedule&) = delete;
  DeterministicSchedule& operator=(const DeterministicSchedule&) = delete;

  // Runs every body on its own thread, one thread at a time, and returns
  // when all have finished.
  void Run(std::vector<std::function<void()>> bodies) {
    const std::size_t n = bodies.size();
    {
      std::lock_guard<std::mutex> lock(mu_);
      runnable_.assign(n, true);
      wake_.clear();
      for (std::size_t i = 0; i < n; ++i)
        wake_.push_back(std::make_unique<std::condition_variable>());
      running_ = kNobody;
    }
    std::vector<std::thread> threads;
    threads.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      threads.emplace_back([this, i, body = std::move(bodies[i])] {
        {
          std::unique_lock<std::mutex> lock(mu_);
          wake_[i]->wait(lock, [&] { return running_ == i; });
        }
        tls_schedule_ = this;
        tls_index_ = i;
        body();
        tls_schedule_ = nullptr;
        std::lock_guard<std::mutex> lock(mu_);
        runnable_[i] = false;
        Hand(PickLocked(i, /*force_switch=*/true));
      });
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      Hand(PickLocked(kNobody, /*force_switch=*/true));
    }
    for (std::thread& thread : threads) thread.join();
  }

  // A scheduling point: may hand the processor to another participant.
  // No-op outside a schedule.
  static void Point() {
    DeterministicSchedule* schedule = tls_schedule_;
    if (schedule != nullptr) schedule->Yield(tls_index_);
  }

  // Whether a compare_exchange_weak should fail spuriously now.
  static bool SpuriousFailure() {
    DeterministicSchedule* schedule = tls_schedule_;
    if (schedule == nullptr) return false;
    std::lock_guard<std::mutex> lock(schedule->mu_);
    return schedule->Percent() < schedule->options_.spurious_failure_percent;
  }

  // Scheduling points so far, and a hash of which thread ran at each: equal
  // for equal seeds (the schedule is deterministic).
  std::uint64_t num_points() const {
    std::lock_guard<std::mutex> lock(mu_);
    return num_points_;
  }
  std::uint64_t trace_hash() const {
    std::lock_guard<std::mutex> lock(mu_);
    return trace_hash_;
  }

 private:
  static constexpr std::size_t kNobody = ~std::size_t{0};

  int Percent() { return static_cast<int>(rng_() % 100); }

  void Yield(std::size_t me) {
    std::unique_lock<std::mutex> lock(mu_);
    ++num_points_;
    trace_hash_ = (trace_hash_ ^ (me + 1)) * 0x100000001b3ull;
    const std::size_t next = PickLocked(me, /*force_switch=*/false);
    if (next == me) return;
    Hand(next);
    wake_[me]->wait(lock, [&] { return running_ == me; });
  }

  // The next thread to run: `me` unless the RNG says switch (or me cannot run).
  std::size_t PickLocked(std::size_t me, bool force_switch) {
    std::vector<std::size_t> others;
    for (std::size_t i = 0; i < runnable_.size(); ++i) {
      if (runnable_[i] && i != me) others.push_back(i);
    }
    if (others.empty()) return me != kNobody && runnable_[me] ? me : kNobody;
    if (!force_switch && Percent() >= options_.switch_percent) return me;
    return others[rng_() % others.size()];
  }

  void Hand(std::size_t next) {
    running_ = next;
    if (next != kNobody) wake_[next]->notify_one();
  }

  const Options options_;
  mutable std::mutex mu_;
  std::mt19937_64 rng_;
  std::vector<bool> runnable_;
  std::vector<std::unique_ptr<std::condition_variable>> wake_;
  std::size_t running_ = kNobody;
  std::uint64_t num_points_ = 0;
  std::uint64_t trace_hash_ = 0xcbf29ce484222325ull;

  static inline thread_local DeterministicSchedule* tls_schedule_ = nullptr;
  static inline thread_local std::size_t tls_index_ = 0;
};

// A std::atomic<T> look-alike whose every operation is a scheduling point.
template <typename T>
class DeterministicAtomic {
 public:
  DeterministicAtomic() noexcept : value_() {}
  constexpr DeterministicAtomic(T value) noexcept
      : value_(value) {}  // NOLINT: like std::atomic
  DeterministicAtomic(const DeterministicAtomic&) = delete;
  DeterministicAtomic& operator=(const DeterministicAtomic&) = delete;

  // The AtomicTraits fence hook: a scheduling point. No real fence is
  // needed: only one thread runs at a time and every operation is seq_cst.
  static void ThreadFence(std::memory_order) noexcept {
    DeterministicSchedule::Point();
  }

  T load(std::memory_order = std::memory_order_seq_cst) const noexcept {
    DeterministicSchedule::Point();
    return value_.load();
  }
  void store(T value, std::memory_order = std::memory_order_seq_cst) noexcept {
    DeterministicSchedule::Point();
    value_.store(value);
  }
  T exchange(T value, std::memory_order = std::memory_order_seq_cst) noexcept {
    DeterministicSchedule::Point();
    return value_.exchange(value);
  }
  bool compare_exchange_strong(T& expected, T desired, std::memory_order,
                               std::memory_order) noexcept {
    DeterministicSchedule::Point();
    return value_.compare_exchange_strong(expected, desired);
  }
  bool compare_exchange_strong(
      T& expected, T desired,
      std::memory_order order = std::memory_order_seq_cst) noexcept {
    return compare_exchange_strong(expected, desired, order, order);
  }
  bool compare_exchange_weak(T& expected, T desired, std::memory_order,
                             std::memory_order) noexcept {
    DeterministicSchedule::Point();
    if (DeterministicSchedule::SpuriousFailure()) {
      expected = value_.load();
      return false;
    }
    return value_.compare_exchange_strong(expected, desired);
  }
  bool compare_exchange_weak(
      T& expected, T desired,
      std::memory_order order = std::memory_order_seq_cst) noexcept {
    return compare_exchange_weak(expected, desired, order, order);
  }
  T fetch_add(T delta, std::memory_order = std::memory_order_seq_cst) noexcept
      requires std::is_integral_v<T> {
    DeterministicSchedule::Point();
    return value_.fetch_add(delta);
  }
  T fetch_sub(T delta, std::memory_order = std::memory_order_seq_cst) noexcept
      requires std::is_integral_v<T> {
    DeterministicSchedule::Point();
    return value_.fetch_sub(delta);
  }

 private:
  std::atomic<T> value_;
};

}  // namespace rpa::test
