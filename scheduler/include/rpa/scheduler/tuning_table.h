#pragma once
// TuningTable: the block sizes the selector uses, per target and shape class,
// as produced by `rpa tune --target T` (a search over candidate block sizes,
// timed by simulation for a device preset and by measurement on the host).
//
// File format (JSON, written by ToJson, read by Parse / Load):
//   {
//     "format": "rpa-tuning-table", "version": 1,
//     "target": "tpu7x",              // "host" or a device name
//     "generated_by": "rpa tune --target tpu7x",
//     "entries": [
//       {"kernel": "decode", "storage": "bf16", "head_dim": 128,
//        "q_per_kv": 4, "page_size": 16, "max_q_len": 1,
//        "max_kv_len": 4096,
//        "q_tokens_per_block": 1, "kv_tokens_per_block": 2048,
//        "compute_kv_tokens": 512, "time_us": 123.4},
//       ...
//     ]
//   }
// An entry covers batches of its kernel, storage, head_dim, q_per_kv (Hq /
// Hkv) and page_size whose longest q_len <= max_q_len and longest kv_len <=
// max_kv_len. kv_tokens_per_block is in tokens (a multiple of page_size on a
// device). time_us is the tuning run's figure for its representative shape
// (informational).
//
// Lookup (Find): among entries matching kernel, storage, head_dim, q_per_kv
// and page_size exactly, the one with the smallest (max_q_len, max_kv_len)
// that covers the batch; if none covers it, the matching entry with the
// largest bounds (the nearest tuned shape); if nothing matches exactly,
// nullptr (the selector's fallback rule applies).
//
// Errors: Parse / Load return InvalidArgument naming the entry index and the
// key for anything malformed (corrupt JSON, missing or mistyped keys, zero
// sizes, unknown kernel or storage names, wrong format or version); NotFound
// for a missing file. Never a crash.
//
// Thread-safety: immutable after construction; any number of readers.
// Memory ordering: none.
//
// Example:
//   RPA_ASSIGN_OR_RETURN(TuningTable table, TuningTable::Load("t.json"));
//   const TuningEntry* e = table.Find(KernelKind::kDecode, key);
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "rpa/attention/plan.h"
#include "rpa/memory/storage_type.h"
#include "rpa/runtime/status.h"

namespace rpa::scheduler {

// What an entry is keyed on, for one kernel range of a batch.
struct TuningKey {
  memory::StorageType storage = memory::StorageType::kBf16;
  std::uint32_t head_dim = 0;
  std::uint32_t q_per_kv = 0;  // Hq / Hkv
  std::uint32_t page_size = 0;
  std::uint32_t max_q_len = 0;   // longest q_len in the range
  std::uint32_t max_kv_len = 0;  // longest kv_len in the range
};

struct TuningEntry {
  attention::KernelKind kernel = attention::KernelKind::kDecode;
  TuningKey key;
  std::uint32_t q_tokens_per_block = 0;
  std::uint32_t kv_tokens_per_block = 0;
  std::uint32_t compute_kv_tokens = 0;  // device only (0 on the host)
  double time_us = 0;
};

class TuningTable {
 public:
  TuningTable() = default;
  TuningTable(std::string target, std::vector<TuningEntry> entries,
              std::string generated_by = {});

  static StatusOr<TuningTable> Parse(std::string_view json_text);
  static StatusOr<TuningTable> Load(const std::filesystem::path& file);
  // The table shipped with the library for `target` ("host", "v5e", "v6e",
  // "tpu7x"), compiled in from scheduler/tuning/<target>.json; an empty table
  // for a target without one.
  static TuningTable Shipped(std::string_view target);

  std::string ToJson() const;
  // Writes atomically (temporary file + rename). Unavailable on I/O errors.
  Status Save(const std::filesystem::path& file) const;

  const TuningEntry* Find(attention::KernelKind kernel,
                          const TuningKey& key) const;

  const std::string& target() const { return target_; }
  const std::vector<TuningEntry>& entries() const { return entries_; }
  const std::string& generated_by() const { return generated_by_; }

 private:
  std::string target_;
  std::vector<TuningEntry> entries_;
  std::string generated_by_;
};

}  // namespace rpa::scheduler
