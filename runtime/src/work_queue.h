#pragma once

// WorkQueue<T*>: a worker's run queue of tasks that have not started.
//
// Chase-Lev's growable circular array ("Dynamic Circular Work-Stealing
// Deque", SPAA'05; C11 orderings after Le et al., PPoPP'13) with one change:
// the owner takes from the top too, like thieves, instead of popping the
// bottom. So a worker starts its tasks in FIFO order (tasks spawned from one
// fiber start in spawn order on one worker, which the ordering tests and the
// virtual clock's determinism rely on), and the owner/thief race on the last
// element, together with Chase-Lev's seq_cst fence in pop, disappears: every
// take is one CAS on `top`, uncontended when nobody steals.
//
//   Push (owner only):  write slot[bottom]; release; bottom = bottom + 1.
//                       Grows (doubles) when full: copies [top, bottom) into a
//                       new array, publishes it (release) before bottom.
//   Take (any thread):  t = top (acquire); b = bottom (acquire); t < b ?
//                       read slot[t] from the current array, CAS top t -> t+1.
//   StealHalf (thief):  the same with n = ceil((b - t) / 2) items: copy them
//                       into the thief's own queue (unpublished), CAS top
//                       t -> t+n, publish. Sound only because every taker
//                       advances top by CAS (see StealHalf).
//
// Why a taker that wins the CAS read a valid item: while top <= t the owner
// never writes physical slot t mod size again (it grows instead of writing
// slot b with b - top >= size - 1), and an old array is never written after a
// grow, so reading through a stale array pointer sees the same item. Retired
// arrays are kept until the queue dies (thieves may still read them); they
// total less than the live array.
//
// Thread-safety: Push by the owner only; Take, TakeIfOldest and the size hint
// from any thread; StealHalf from any thread that owns `dst`. Memory ordering:
// Push's item is visible to the Take (or StealHalf) that returns it (slot
// write -> release store of bottom -> acquire load of bottom -> slot read);
// items a steal pushes to `dst` are published by dst's release store of its
// bottom, as a Push's.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "rpa/runtime/check.h"
#include "rpa/runtime/internal/atomic_traits.h"

namespace rpa::runtime::internal {

template <typename T, template <typename> class Atom = std::atomic>
class WorkQueue {
  static_assert(std::is_pointer_v<T>, "WorkQueue holds pointers");

 public:
  explicit WorkQueue(std::size_t initial_capacity = 256) {
    std::size_t capacity = 2;
    while (capacity < initial_capacity) capacity *= 2;
    auto array = std::make_unique<Array>(capacity);
    array_.store(array.get(), std::memory_order_relaxed);
    arrays_.push_back(std::move(array));
  }
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  void Push(T item) {
    const std::int64_t b = bottom_.load(std::memory_order_relaxed);
    Array* array = Reserve(b, 1);
    array->Put(b, item);
    bottom_.store(b + 1, std::memory_order_release);
  }

  // The oldest item, or nullptr when empty. Retries when it loses a race, so
  // nullptr really means "was empty at some point during the call".
  T Take() {
    for (;;) {
      std::int64_t t = top_.load(std::memory_order_acquire);
      const std::int64_t b = bottom_.load(std::memory_order_acquire);
      if (t >= b) return nullptr;
      Array* array = array_.load(std::memory_order_acquire);
      T item = array->Get(t);
      if (top_.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst,
                                       std::memory_order_relaxed)) {
        return item;
      }
    }
  }

  // Takes `item` if it is the oldest item (a joiner taking back the task it
  // waits for, so that no stale entry is left behind). Any thread.
  bool TakeIfOldest(T item) {
    std::int64_t t = top_.load(std::memory_order_acquire);
    const std::int64_t b = bottom_.load(std::memory_order_acquire);
    if (t >= b) return false;
    Array* array = array_.load(std::memory_order_acquire);
    if (array->Get(t) != item) return false;
    return top_.compare_exchange_strong(t, t + 1, std::memory_order_seq_cst,
                                        std::memory_order_relaxed);
  }

  // Steals half of the items (rounded up, at most `max_items`) in one CAS of
  // `top`: the oldest is returned, the others are pushed to `dst`, which must
  // be owned by the caller (Go's runqgrab). nullptr when empty; `*stolen` is
  // the number of items taken.
  //
  // The items are copied into dst's free slots before the CAS (unpublished:
  // dst's bottom moves only after it succeeds), from the slots [t, t + n)
  // that the CAS then claims; a lost race retries and overwrites the copies.
  // Valid for the same reason as Take: while top <= t the owner writes no
  // slot of [t, t + n) and retired arrays are never written. And n may come
  // from a stale bottom only because nobody removes items at the bottom:
  // with Chase-Lev's CAS-free owner pop, items the owner popped after we read
  // bottom could fall inside [t, t + n) (crossbeam's LIFO deque steals its
  // batches one CAS per item for this reason).
  T StealHalf(WorkQueue& dst, std::size_t max_items, std::size_t* stolen) {
    *stolen = 0;
    for (;;) {
      std::int64_t t = top_.load(std::memory_order_acquire);
      const std::int64_t b = bottom_.load(std::memory_order_acquire);
      if (t >= b) return nullptr;
      std::int64_t n = b - t;
      n -= n / 2;
      n = std::min(n, static_cast<std::int64_t>(max_items));
      Array* array = array_.load(std::memory_order_acquire);
      const std::int64_t db = dst.bottom_.load(std::memory_order_relaxed);
      Array* dst_array = dst.Reserve(db, n - 1);
      for (std::int64_t i = 1; i < n; ++i)
        dst_array->Put(db + i - 1, array->Get(t + i));
      T oldest = array->Get(t);
      if (top_.compare_exchange_strong(t, t + n, std::memory_order_seq_cst,
                                       std::memory_order_relaxed)) {
        if (n > 1) dst.bottom_.store(db + n - 1, std::memory_order_release);
        *stolen = static_cast<std::size_t>(n);
        return oldest;
      }
    }
  }

  // Racy size (exact when quiescent).
  std::size_t size_hint() const {
    const std::int64_t b = bottom_.load(std::memory_order_acquire);
    const std::int64_t t = top_.load(std::memory_order_acquire);
    return b > t ? static_cast<std::size_t>(b - t) : 0;
  }
  bool empty_hint() const { return size_hint() == 0; }

 private:
  struct Array {
    explicit Array(std::size_t cap)
        : capacity(cap), mask(cap - 1), slots(new Atom<T>[cap]) {}
    T Get(std::int64_t i) const {
      return slots[static_cast<std::size_t>(i) & mask].load(
          std::memory_order_relaxed);
    }
    void Put(std::int64_t i, T item) {
      slots[static_cast<std::size_t>(i) & mask].store(
          item, std::memory_order_relaxed);
    }
    const std::size_t capacity;
    const std::size_t mask;
    std::unique_ptr<Atom<T>[]> slots;
  };

  // Owner: the live array, grown if needed so that the slots [b, b + n) can
  // be written without overwriting one that a taker may still read.
  Array* Reserve(std::int64_t b, std::int64_t n) {
    Array* array = array_.load(std::memory_order_relaxed);
    const std::int64_t t = top_.load(std::memory_order_acquire);
    while (b + n - t > static_cast<std::int64_t>(array->capacity) - 1)
      array = Grow(array, t, b);
    return array;
  }

  Array* Grow(Array* old, std::int64_t t, std::int64_t b) {
    auto bigger = std::make_unique<Array>(old->capacity * 2);
    for (std::int64_t i = t; i < b; ++i) bigger->Put(i, old->Get(i));
    Array* raw = bigger.get();
    arrays_.push_back(std::move(bigger));
    array_.store(raw, std::memory_order_release);
    return raw;
  }

  alignas(64) Atom<std::int64_t> top_{0};
  alignas(64) Atom<std::int64_t> bottom_{0};
  Atom<Array*> array_{nullptr};
  std::vector<std::unique_ptr<Array>> arrays_;  // owner only; the last is live
};

// An intrusive lock-free stack of nodes with a `next` member, emptied all at
// once (Treiber push, exchange pop-all: no ABA, since nothing pops singly).
// Used as a worker's inbox (fibers woken by other threads: many producers, the
// owner consumes) and as the executor's queue of tasks from foreign threads
// (any worker takes the whole batch).
//
// A node's `next` must be null when it is pushed (every consumer resets it
// when the node leaves a list). Pushing onto an empty stack then leaves the
// node untouched: a worker's blocked fiber stays in that worker's cache
// instead of travelling to the waker's core and back (a cross-worker channel
// hand-off is a few cache-line transfers; this was one of them).
//
// Thread-safety: Push and TakeAll from any thread.
// Memory ordering: Push is seq_cst (it is the "publish" half of the wake-up
// protocol's Dekker pair: push, then look for a sleeping consumer); TakeAll
// acquires, so a node's contents are visible to whoever takes it.
template <typename Node, template <typename> class Atom = std::atomic>
class IntrusiveStack {
 public:
  void Push(Node* node) {
    __builtin_prefetch(&head_, 1);  // read, then CAS: fetch it owned at once
    RPA_DCHECK(node->next == nullptr);
    Node* head = head_.load(std::memory_order_relaxed);
    bool linked = false;  // node->next was written by an earlier attempt
    do {
      if (head != nullptr || linked) {
        node->next = head;
        linked = true;
      }
    } while (!head_.compare_exchange_weak(head, node, std::memory_order_seq_cst,
                                          std::memory_order_relaxed));
  }
  // Every node, oldest first (nullptr-terminated through `next`).
  Node* TakeAll() {
    if (head_.load(std::memory_order_relaxed) == nullptr) return nullptr;
    Node* node = head_.exchange(nullptr, std::memory_order_acquire);
    Node* fifo = nullptr;
    while (node != nullptr) {
      Node* next = node->next;
      node->next = fifo;
      fifo = node;
      node = next;
    }
    return fifo;
  }
  bool empty() const {
    return head_.load(std::memory_order_seq_cst) == nullptr;
  }

 private:
  Atom<Node*> head_{nullptr};
};

}  // namespace rpa::runtime::internal
