#pragma once
// The tuning tables shipped with the library: scheduler/tuning/<target>.json,
// compiled in at configure time (scheduler/CMakeLists.txt generates
// shipped_tuning_tables.cc in the build tree).
#include <span>
#include <string_view>

namespace rpa::scheduler::internal {

struct ShippedTable {
  std::string_view target;  // the file's stem: "tpu7x", "host", ...
  std::string_view json;    // the file's text
};

std::span<const ShippedTable> ShippedTables();

}  // namespace rpa::scheduler::internal
