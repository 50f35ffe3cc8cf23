#pragma once

// GoogleTest printers for the library's enums that tests use as parameters
// (StorageType). Without them GoogleTest prints a parameter as its raw bytes,
// and gtest_discover_tests puts that dump (padding included) into every ctest
// name, so the names of parameterised tests changed from build to build.
// Each test's own parameter structs get a PrintTo next to their definition.

#include <ostream>

#include "rpa/memory/storage_type.h"

namespace rpa::memory {
inline void PrintTo(StorageType type, std::ostream* os) {
  *os << StorageTypeName(type);
}
}  // namespace rpa::memory
