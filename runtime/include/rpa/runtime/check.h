#pragma once

// Checks for bugs (not for bad input: that is a Status).
//
//   RPA_CHECK(cond)            always on; prints file:line and the condition,
//   aborts. RPA_CHECK_MSG(cond, msg)   the same with a message (const char*).
//   RPA_DCHECK(cond)           on in debug and sanitizer builds, compiled out
//   in release
//                              (the condition is still type-checked, never
//                              evaluated).
//
// Thread-safety: may be used from any thread; the failure path writes one line
// to stderr and calls std::abort().

#include "rpa/runtime/sanitizers.h"

namespace rpa::internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* condition,
                              const char* message);
}  // namespace rpa::internal

#define RPA_CHECK(cond)                                                 \
  do {                                                                  \
    if (__builtin_expect(!(cond), 0)) {                                 \
      ::rpa::internal::CheckFailed(__FILE__, __LINE__, #cond, nullptr); \
    }                                                                   \
  } while (false)

#define RPA_CHECK_MSG(cond, msg)                                      \
  do {                                                                \
    if (__builtin_expect(!(cond), 0)) {                               \
      ::rpa::internal::CheckFailed(__FILE__, __LINE__, #cond, (msg)); \
    }                                                                 \
  } while (false)

#if !defined(NDEBUG) || RPA_SANITIZER_BUILD
#define RPA_DCHECK_IS_ON 1
#define RPA_DCHECK(cond) RPA_CHECK(cond)
#else
#define RPA_DCHECK_IS_ON 0
#define RPA_DCHECK(cond) \
  do {                   \
    if (false) {         \
      (void)(cond);      \
    }                    \
  } while (false)
#endif
