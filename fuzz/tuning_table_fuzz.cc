// Invariant fuzzer of the tuning-table loader
// (scheduler/include/rpa/scheduler/tuning_table.h), the parser of a file
// the library loads at run time:
//   - Parse never crashes or throws on any bytes;
//   - an accepted table round-trips: Parse(ToJson()) gives the same JSON,
//     and Find on any key returns an entry of the table or nothing.
// Seeds: fuzz/corpus/tuning_table/ (a valid table and near misses).

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "rpa/scheduler/tuning_table.h"

namespace {

void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "tuning_table_fuzz: invariant violated: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto table = rpa::scheduler::TuningTable::Parse(text);
  if (!table.ok()) {
    Require(!table.status().message().empty(), "an error without a message");
    return 0;
  }
  const std::string json = table->ToJson();
  auto again = rpa::scheduler::TuningTable::Parse(json);
  Require(again.ok(), "ToJson output does not parse");
  Require(again->ToJson() == json, "ToJson does not round-trip");
  for (const rpa::scheduler::TuningEntry& e : table->entries()) {
    const rpa::scheduler::TuningEntry* found = table->Find(e.kernel, e.key);
    Require(found != nullptr, "an entry's own key finds nothing");
    Require(found >= table->entries().data() &&
                found < table->entries().data() + table->entries().size(),
            "Find returned a pointer outside the table");
    Require(found->key.max_q_len >= e.key.max_q_len &&
                found->key.max_kv_len >= e.key.max_kv_len,
            "Find returned an entry that does not cover the key");
  }
  return 0;
}
