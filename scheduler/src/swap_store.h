#pragma once

// SwapStore: the engine's swap file and the I/O that moves a preempted
// request's KV pages to it and back (scheduler/README.md, "The engine").
//
// File: one per engine, created at the first swap-out in the configured
// directory with O_TMPFILE (or mkstemp + unlink where the filesystem lacks
// it), so it never outlives the process. Space is handed out in extents of
// whole pages (first fit over a sorted free list, neighbours merged on free);
// an extent of n pages holds n pages of every layer, layer-major:
//   layer l, page i of the request -> offset + (l * n + i) * page_bytes.
// Runs of consecutive page ids (common: the allocator hands out runs) are one
// read or write.
//
// Jobs: Start() spawns one task per layer on the executor; each issues its
// layer's reads or writes through runtime::ReadAt / WriteAt (io_uring from a
// fiber), so the I/O of a job overlaps the kernels the engine runs meanwhile.
// Wait() joins a job's tasks and returns its first error. The pages must not
// be written (write job) or read (read job) by anyone else until Wait.
//
// Thread-safety: Start / Wait / extent calls from the engine only (one at a
// time); the tasks share only the job's atomics and the fault injector (under
// a mutex).

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "rpa/memory/kv_cache.h"
#include "rpa/runtime/executor.h"
#include "rpa/runtime/join_handle.h"
#include "rpa/runtime/status.h"
#include "rpa/scheduler/engine.h"

namespace rpa::scheduler::internal {

struct SwapExtent {
  std::uint64_t offset_bytes = 0;
  std::uint32_t num_pages = 0;  // 0: no extent
};

class SwapStore;

class SwapJob {
 public:
  bool is_write() const { return is_write_; }
  const SwapExtent& extent() const { return extent_; }
  std::uint64_t bytes() const { return bytes_; }  // every layer

 private:
  friend class SwapStore;
  bool is_write_ = false;
  SwapExtent extent_;
  std::uint64_t bytes_ = 0;
  std::vector<memory::PageId> pages_;
  std::vector<runtime::JoinHandle<void>> tasks_;
  std::mutex error_mutex_;
  Status first_error_;
};

class SwapStore {
 public:
  SwapStore(std::filesystem::path directory, std::uint64_t max_bytes,
            SwapFaultInjector injector, const memory::KvCache* cache,
            runtime::Executor* executor);
  ~SwapStore();  // closes the file (jobs must have been waited for)
  SwapStore(const SwapStore&) = delete;
  SwapStore& operator=(const SwapStore&) = delete;

  // An extent of num_pages pages. ResourceExhausted past max_bytes;
  // Unavailable / Internal if the file cannot be created.
  StatusOr<SwapExtent> Allocate(std::uint32_t num_pages);
  void Free(SwapExtent extent);

  // Starts moving `pages` (every layer) to (write) or from (read) `extent`.
  StatusOr<std::unique_ptr<SwapJob>> Start(
      bool is_write, SwapExtent extent, std::span<const memory::PageId> pages);
  // Joins the job's tasks; its first I/O error, or OK.
  Status Wait(SwapJob& job);

  std::uint64_t file_bytes() const { return file_end_bytes_; }

 private:
  Status OpenFile();
  void RunLayer(SwapJob* job, std::uint32_t layer);
  Status Transfer(bool is_write, std::byte* memory, std::size_t bytes,
                  std::uint64_t offset);

  const std::filesystem::path directory_;
  const std::uint64_t max_bytes_;
  const SwapFaultInjector injector_;
  const memory::KvCache* cache_;
  runtime::Executor* executor_;
  const std::size_t page_bytes_;
  const std::uint32_t num_layers_;
  int fd_ = -1;
  std::uint64_t file_end_bytes_ = 0;
  std::vector<SwapExtent> free_;  // sorted by offset, merged
  std::mutex injector_mutex_;
  std::uint64_t next_io_index_ = 0;  // under injector_mutex_
};

}  // namespace rpa::scheduler::internal
