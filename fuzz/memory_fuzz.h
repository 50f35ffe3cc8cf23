#pragma once

// The memory fuzzer's internals (fuzz/memory_fuzz*.cc). An input is a small
// program: five header bytes choose an allocator and a KV cache configuration,
// then each op byte drives one of two model-checked targets:
//
//   AllocatorProgram  a PageAllocator against a set of allocated ids;
//   KvCacheProgram    a KvCache against per-sequence token lists, with a
//                     signature written into every reserved token slot of
//                     every layer and read back after every step.
//
// Both check their invariants after every op and call Fail() (print, abort)
// on the first violation, which libFuzzer reports as a crash. Set
// RPA_FUZZ_TRACE=1 to print every op when replaying a reproducer.

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "byte_reader.h"

#include "rpa/memory/kv_cache.h"
#include "rpa/memory/page_allocator.h"
#include "rpa/memory/page_id.h"
#include "rpa/runtime/status.h"

// The checks run after every op; their branches are no feedback for libFuzzer
// (the library's own coverage is), so they skip the coverage instrumentation
// that would otherwise cost a good part of every run.
#if defined(__clang__)
#define RPA_FUZZ_NO_COVERAGE __attribute__((no_sanitize("coverage")))
#elif defined(__has_attribute)
#if __has_attribute(no_sanitize_coverage)
#define RPA_FUZZ_NO_COVERAGE __attribute__((no_sanitize_coverage))
#endif
#endif
#ifndef RPA_FUZZ_NO_COVERAGE
#define RPA_FUZZ_NO_COVERAGE
#endif

namespace rpa::memory::fuzz {

using ::rpa::fuzz::ByteReader;

// Records what the current op is (printed by Fail, and printed as it happens
// when RPA_FUZZ_TRACE is set). printf-style.
void Trace(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Prints the current op and the message to stderr, then aborts.
[[noreturn]] void Fail(const char* format, ...)
    __attribute__((format(printf, 1, 2)));

// Fails unless `status` has one of the codes; `what` names the call.
void ExpectCode(const Status& status, const char* what, StatusCode code);
void ExpectCode(const Status& status, const char* what, StatusCode code1,
                StatusCode code2);

// A 32-bit mixer (murmur3's finalizer), for content signatures.
std::uint32_t Mix32(std::uint32_t x);

inline unsigned long long IdBits(SequenceId id) {
  return static_cast<unsigned long long>(id);
}

// ASan shadow queries; false / nullptr without ASan.
bool IsPoisoned(const void* address);
bool RegionHasPoison(const void* address, std::size_t bytes);

// A second thread that runs one task at a time while the caller waits, so an
// allocator sees two threads (two thread caches, stealing, a cache released at
// thread exit) and the program stays sequential: the model remains exact.
class HelperThread {
 public:
  HelperThread();
  ~HelperThread();  // the thread exits (releasing its caches) and is joined
  HelperThread(const HelperThread&) = delete;
  HelperThread& operator=(const HelperThread&) = delete;

  // Runs `task` on the helper thread and returns when it is done.
  void Run(const std::function<void()>& task);

 private:
  void Loop();

  std::mutex mutex_;
  std::condition_variable wake_;
  const std::function<void()>* task_ = nullptr;  // guarded by mutex_
  bool quit_ = false;                            // guarded by mutex_
  std::thread thread_;
};

struct AllocatorConfig {
  std::uint32_t num_pages = 1;
  std::uint32_t thread_cache_pages = 0;
  std::uint32_t max_thread_caches = 64;
  bool with_memory = false;  // hand the allocator page memory (ASan poisoning)
  std::uint32_t num_planes = 1;
  // At the end, the helper thread (if any) exits after the allocator is gone.
  bool helper_outlives_allocator = false;
};

class AllocatorProgram {
 public:
  explicit AllocatorProgram(const AllocatorConfig& config);
  ~AllocatorProgram();
  AllocatorProgram(const AllocatorProgram&) = delete;
  AllocatorProgram& operator=(const AllocatorProgram&) = delete;

  void Step(ByteReader& in, std::uint8_t op);
  void CheckInvariants() const;
  // Frees everything left (checks the pages come back) before destruction.
  void FreeAll();

  // Bad options must be rejected by Create.
  static void ProbeBadOptions();

 private:
  struct Snapshot {
    PageAllocatorStats stats;
    std::vector<std::uint8_t> allocated;
  };
  Snapshot Take() const;
  void ExpectUnchanged(const Snapshot& before, const char* what) const;
  void ExpectRejected(const Status& status, const Snapshot& before,
                      const char* what) const;

  void Allocate();
  void AllocateN(std::uint32_t count);
  // The model decides whether the call must succeed or be rejected.
  void FreeOne(std::uint32_t page_index);
  void FreeMany(std::vector<PageId> pages);
  void OnAllocated(PageId page);
  void OnFreeing(PageId page) const;
  void OnFreed(PageId page) const;
  std::byte* PageStart(PageId page, std::uint32_t plane) const;
  std::vector<std::uint32_t> AllocatedIds() const;
  std::vector<std::uint32_t> FreeIds() const;
  std::uint32_t OutOfRangeId(ByteReader& in) const;

  AllocatorConfig config_;
  std::vector<std::uint64_t> memory_;  // the pages; outlives allocator_
  std::size_t page_bytes_ = 0;
  std::size_t plane_stride_bytes_ = 0;
  std::unique_ptr<PageAllocator> allocator_;
  // The model.
  std::vector<std::uint8_t> allocated_;
  std::vector<std::uint8_t> ever_allocated_;
  std::uint32_t used_ = 0;
  std::uint32_t high_water_ = 0;
  std::uint64_t stamp_ = 0;            // for page contents
  std::vector<std::uint64_t> stamps_;  // per allocated page
  std::unique_ptr<HelperThread> helper_;
  // Once a second thread has used the allocator, high_water_pages is only
  // promised within threads x thread_cache_pages of the peak.
  bool multi_thread_ = false;
};

class KvCacheProgram {
 public:
  explicit KvCacheProgram(const KvCacheConfig& config);

  void Step(ByteReader& in, std::uint8_t op);
  void CheckInvariants();
  // Frees every sequence (checks all pages come back).
  void FreeAll();

  // Bad configurations must be rejected by Create.
  static void ProbeBadConfigs(const KvCacheConfig& good);

 private:
  struct Sequence {
    SequenceId id;
    std::uint32_t uid;                  // the model's name, never reused
    std::vector<std::uint32_t> tokens;  // signature of each token written
  };
  struct Snapshot {
    std::vector<std::vector<PageId>> tables;  // by live_ index
    std::vector<std::uint32_t> lengths;
    std::vector<std::uint32_t> refcounts;  // by page, then a few bad ids
    KvCacheStats stats;
  };
  Snapshot Take() const;
  void ExpectUnchanged(const Snapshot& before, const char* what) const;
  // Every table but live_[skip] is as in `before` (live_ indices as then).
  void ExpectTablesUnchanged(const Snapshot& before, std::size_t skip,
                             const char* what) const;
  std::vector<PageId> Table(std::size_t index) const;

  void CreateSequence();
  void Reserve(std::size_t index, std::uint32_t num_tokens);
  void ReserveToBoundary(std::size_t index, std::uint8_t delta);
  void Fork(std::size_t index);
  void FreeSequence(std::size_t index);
  void BadIdOp(SequenceId id, std::uint8_t which, bool stale);
  void ExportGood(ByteReader& in);
  void ExportBad(ByteReader& in);
  void CheckExport(std::span<const std::size_t> indices,
                   std::uint32_t pages_per_sequence,
                   const BatchPageTable& out) const;
  void WriteTokens(const Sequence& seq, std::span<const PageId> table,
                   std::uint32_t from_token);
  void CheckContents(const Sequence& seq, std::span<const PageId> table) const;
  bool IsLive(SequenceId id) const;
  std::uint32_t PagesFor(std::uint64_t num_tokens) const;

  KvCacheConfig config_;
  std::unique_ptr<KvCache> cache_;
  std::vector<KvLayerView> layers_;
  std::vector<Sequence> live_;
  std::vector<SequenceId> stale_;
  std::uint32_t next_uid_ = 1;
  std::uint32_t high_water_ = 0;
  std::vector<std::uint8_t> ever_used_;
};

}  // namespace rpa::memory::fuzz
