#pragma once

// TaskBlockCache and TaskBlockPool: where Task objects come from and go back
// to on workers, so that spawning does not pay for malloc and free.
//
// A task block is an `::operator new` block, aligned to a cache line, of one
// of a few size classes (64, 128, 192, 256 bytes; a bigger task uses `new`
// directly). Each worker keeps a cache of free blocks per class (an array, so
// taking one does not chase a pointer through a cold block); the executor
// keeps a pool that the caches overflow into and refill from in batches, so
// a worker that frees more tasks than it spawns (a thief: the last reference
// of a stolen task is often dropped there) hands them to the worker that
// spawns them without a malloc or a cross-thread free in between. Any thread
// may free a block (DeleteTaskBlock). A thread that is not a worker keeps a
// small ForeignTaskCache of its own (below) and spills beyond it to
// DeleteTaskBlock; so does a thread whose thread_locals are being destroyed.
// The pool is bounded (kPoolBlocks per class; beyond it blocks go back to
// malloc) and everything is released when the executor is destroyed.
//
// Thread-safety: a TaskBlockCache belongs to its worker's thread; the pool
// takes its own lock (a batch of kBatch blocks per acquisition).

#include <algorithm>
#include <array>
#include <cstddef>
#include <mutex>
#include <new>
#include <vector>

#include "rpa/runtime/int_math.h"

namespace rpa::runtime::internal {

inline constexpr std::size_t kTaskClassBytes = 64;  // and a cache line
inline constexpr std::size_t kNumTaskClasses = 4;   // up to 256 bytes

// The size class of a block of `bytes`, or kNumTaskClasses if it has none.
inline std::size_t TaskClassOf(std::size_t bytes) {
  const std::size_t c = DivideRoundUp(bytes, kTaskClassBytes);
  return c == 0 ? 0 : (c <= kNumTaskClasses ? c - 1 : kNumTaskClasses);
}
inline std::size_t TaskClassBytes(std::size_t task_class) {
  return (task_class + 1) * kTaskClassBytes;
}

// Task blocks are whole cache lines: two tasks never share a line, so the
// completion of a task on one worker does not stall a neighbour's on another
// (malloc's 16-byte alignment would put parts of two blocks on one line).
inline void* NewTaskBlock(std::size_t task_class) {
  return ::operator new (TaskClassBytes(task_class),
                         std::align_val_t{kTaskClassBytes});
}
inline void DeleteTaskBlock(void* block) {
  ::operator delete (block, std::align_val_t{kTaskClassBytes});
}

class TaskBlockPool {
 public:
  static constexpr std::size_t kPoolBlocks = 1 << 16;  // per class

  TaskBlockPool() = default;
  TaskBlockPool(const TaskBlockPool&) = delete;
  TaskBlockPool& operator=(const TaskBlockPool&) = delete;
  ~TaskBlockPool() {
    for (std::size_t c = 0; c < kNumTaskClasses; ++c) {
      for (void* block : classes_[c].blocks) DeleteTaskBlock(block);
    }
  }

  // Moves up to `max` blocks of `task_class` into `out`; returns how many.
  std::size_t Take(std::size_t task_class, void** out, std::size_t max) {
    Class& c = classes_[task_class];
    std::lock_guard<std::mutex> lock(c.mu);
    std::size_t n = std::min(max, c.blocks.size());
    const std::size_t from = c.blocks.size() - n;
    for (std::size_t i = 0; i < n; ++i) out[i] = c.blocks[from + i];
    c.blocks.resize(from);
    return n;
  }
  // Takes `n` blocks of `task_class`, freeing those beyond the bound.
  void Give(std::size_t task_class, void* const* blocks, std::size_t n) {
    Class& c = classes_[task_class];
    std::size_t kept = 0;
    {
      std::lock_guard<std::mutex> lock(c.mu);
      kept = std::min(n, kPoolBlocks - std::min(kPoolBlocks, c.blocks.size()));
      c.blocks.insert(c.blocks.end(), blocks, blocks + kept);
    }
    for (std::size_t i = kept; i < n; ++i) DeleteTaskBlock(blocks[i]);
  }

 private:
  struct Class {
    std::mutex mu;
    std::vector<void*> blocks;
  };
  std::array<Class, kNumTaskClasses> classes_;
};

class TaskBlockCache {
 public:
  static constexpr std::size_t kCapacity = 512;  // blocks per class
  static constexpr std::size_t kBatch = kCapacity / 2;

  explicit TaskBlockCache(TaskBlockPool* pool) : pool_(pool) {}
  TaskBlockCache(const TaskBlockCache&) = delete;
  TaskBlockCache& operator=(const TaskBlockCache&) = delete;
  ~TaskBlockCache() {
    for (std::size_t c = 0; c < kNumTaskClasses; ++c) {
      for (std::size_t i = 0; i < classes_[c].size; ++i)
        DeleteTaskBlock(classes_[c].blocks[i]);
    }
  }

  // A block of `task_class` (< kNumTaskClasses).
  void* Allocate(std::size_t task_class) {
    Class& c = classes_[task_class];
    if (c.size == 0) {
      c.size = pool_->Take(task_class, c.blocks.data(), kBatch);
      if (c.size == 0) return NewTaskBlock(task_class);
    }
    return c.blocks[--c.size];
  }
  void Free(std::size_t task_class, void* block) {
    Class& c = classes_[task_class];
    if (c.size == kCapacity) {
      // The upper half goes: no shifting of what stays.
      c.size -= kBatch;
      pool_->Give(task_class, c.blocks.data() + c.size, kBatch);
    }
    c.blocks[c.size++] = block;
  }

 private:
  struct Class {
    std::size_t size = 0;
    std::array<void*, kCapacity> blocks;
  };
  TaskBlockPool* const pool_;
  std::array<Class, kNumTaskClasses> classes_;
};

// ForeignTaskCache: the block cache of a thread that is not a worker (an
// embedding service's thread that spawns tasks and joins them, e.g. a
// serving loop calling attention::Run with an executor). Its tasks' last
// reference is usually dropped by its own Join, on this thread, so their
// blocks come back here and the next spawn reuses them instead of calling
// malloc. A block freed elsewhere (a worker dropped the last reference) goes
// to that worker's cache; this cache then simply allocates a new one.
// Bounded (kCapacity per class; beyond it blocks go back to malloc).
//
// Thread-safety: one per thread (thread_local in executor.cc); never shared.
// The blocks travel between threads only inside tasks, whose reference
// counts order the accesses.
class ForeignTaskCache {
 public:
  static constexpr std::size_t kCapacity = 64;  // blocks per class

  ForeignTaskCache() = default;
  ForeignTaskCache(const ForeignTaskCache&) = delete;
  ForeignTaskCache& operator=(const ForeignTaskCache&) = delete;
  ~ForeignTaskCache() {
    for (std::size_t c = 0; c < kNumTaskClasses; ++c) {
      for (std::size_t i = 0; i < classes_[c].size; ++i)
        DeleteTaskBlock(classes_[c].blocks[i]);
    }
  }

  void* Allocate(std::size_t task_class) {
    Class& c = classes_[task_class];
    if (c.size == 0) return NewTaskBlock(task_class);
    return c.blocks[--c.size];
  }
  void Free(std::size_t task_class, void* block) {
    Class& c = classes_[task_class];
    if (c.size == kCapacity) {
      DeleteTaskBlock(block);
      return;
    }
    c.blocks[c.size++] = block;
  }

 private:
  struct Class {
    std::size_t size = 0;
    std::array<void*, kCapacity> blocks;
  };
  std::array<Class, kNumTaskClasses> classes_;
};

}  // namespace rpa::runtime::internal
