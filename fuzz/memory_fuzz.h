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

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "rpa/memory/kv_cache.h"
#include "rpa/memory/page_allocator.h"
#include "rpa/memory/page_id.h"
#include "rpa/runtime/status.h"

namespace rpa::memory::fuzz {

// Reads the input front to back; past the end every read yields zeros, so any
// byte string is a valid program.
class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  bool empty() const { return pos_ >= size_; }
  std::uint8_t U8() { return pos_ < size_ ? data_[pos_++] : std::uint8_t{0}; }
  std::uint32_t U32() {
    std::uint32_t value = 0;
    for (int i = 0; i < 4; ++i) value = (value << 8) | U8();
    return value;
  }
  std::uint64_t U64() {
    const std::uint64_t high = U32();
    return (high << 32) | U32();
  }
  // A value in [0, n) (0 when n is 0); one byte when n <= 256, two otherwise.
  std::uint32_t Below(std::uint32_t n) {
    if (n <= 1) return 0;
    if (n <= 256) return U8() % n;
    const std::uint32_t value = (std::uint32_t{U8()} << 8) | U8();
    return value % n;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

// Records what the current op is (printed by Fail, and printed as it happens
// when RPA_FUZZ_TRACE is set). printf-style.
void Trace(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Prints the current op and the message to stderr, then aborts.
[[noreturn]] void Fail(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Fails unless `status` has one of the codes; `what` names the call.
void ExpectCode(const Status& status, const char* what, StatusCode code);
void ExpectCode(const Status& status, const char* what, StatusCode code1, StatusCode code2);

// A 32-bit mixer (murmur3's finalizer), for content signatures.
std::uint32_t Mix32(std::uint32_t x);

inline unsigned long long IdBits(SequenceId id) { return static_cast<unsigned long long>(id); }

// ASan shadow queries; false / nullptr without ASan.
bool IsPoisoned(const void* address);
bool RegionHasPoison(const void* address, std::size_t bytes);

struct AllocatorConfig {
  std::uint32_t num_pages = 1;
  std::uint32_t thread_cache_pages = 0;
  std::uint32_t max_thread_caches = 64;
  bool with_memory = false;  // hand the allocator page memory (ASan poisoning)
  std::uint32_t num_planes = 1;
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
    std::vector<bool> allocated;
  };
  Snapshot Take() const;
  void ExpectUnchanged(const Snapshot& before, const char* what) const;
  void ExpectRejected(const Status& status, const Snapshot& before, const char* what) const;

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
  std::vector<bool> allocated_;
  std::vector<bool> ever_allocated_;
  std::uint32_t used_ = 0;
  std::uint32_t high_water_ = 0;
  std::uint64_t stamp_ = 0;             // for page contents
  std::vector<std::uint64_t> stamps_;  // per allocated page
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
  void ExpectTablesUnchanged(const Snapshot& before, std::size_t skip, const char* what) const;
  std::vector<PageId> Table(std::size_t index) const;

  void CreateSequence();
  void Reserve(std::size_t index, std::uint32_t num_tokens);
  void ReserveToBoundary(std::size_t index, std::uint8_t delta);
  void Fork(std::size_t index);
  void FreeSequence(std::size_t index);
  void BadIdOp(SequenceId id, std::uint8_t which, bool stale);
  void ExportGood(ByteReader& in);
  void ExportBad(ByteReader& in);
  void CheckExport(std::span<const std::size_t> indices, std::uint32_t pages_per_sequence,
                   const BatchPageTable& out) const;
  void WriteTokens(const Sequence& seq, std::span<const PageId> table, std::uint32_t from_token);
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
  std::vector<bool> ever_used_;
};

}  // namespace rpa::memory::fuzz
