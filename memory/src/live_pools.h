#pragma once

// LivePools, moved out of page_pool.h (which includes it): the registry behind
// PagePool's thread-exit hook and thread cache memo (memory/README.md, "Cache
// slots and threads").

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

namespace rpa::memory::internal {

// Process-wide registry of live pools, so a thread-exit hook never touches a
// destroyed pool. Ids are unique and never reused, which is also what lets a
// thread's cache memo keep stale entries safely. Slow paths only.
class LivePools {
 public:
  static std::uint64_t Register() {  // may throw std::bad_alloc
    State& s = Get();
    std::lock_guard<std::mutex> lock(s.mu);
    const std::uint64_t id = s.next_id;
    s.live.push_back(id);  // ids increase, so `live` stays sorted
    ++s.next_id;
    return id;
  }
  static void Unregister(std::uint64_t id) noexcept {
    State& s = Get();
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = std::lower_bound(s.live.begin(), s.live.end(), id);
    if (it != s.live.end() && *it == id) s.live.erase(it);
    s.num_unregistered.fetch_add(1, std::memory_order_relaxed);
  }
  // How many pools were ever destroyed: a thread memo full of live pools
  // need not be purged again until this changes.
  static std::uint64_t NumUnregistered() noexcept {
    return Get().num_unregistered.load(std::memory_order_relaxed);
  }
  static bool IsLive(std::uint64_t id) noexcept {
    return IfLive(id, [] {});
  }
  // Runs fn() under the registry lock if pool `id` is alive (so it cannot be
  // destroyed meanwhile); returns whether it ran.
  template <typename Fn>
  static bool IfLive(std::uint64_t id, Fn&& fn) noexcept {
    State& s = Get();
    std::lock_guard<std::mutex> lock(s.mu);
    if (!std::binary_search(s.live.begin(), s.live.end(), id)) return false;
    fn();
    return true;
  }

 private:
  struct State {
    std::mutex mu;
    std::vector<std::uint64_t> live;
    std::uint64_t next_id = 1;  // 0 means "no pool" in the thread memo
    std::atomic<std::uint64_t> num_unregistered{0};
  };
  static State& Get() noexcept {
    // Leaked on purpose: thread-exit hooks may run after static destructors.
    static State* const state = new State;
    return *state;
  }
};

}  // namespace rpa::memory::internal
