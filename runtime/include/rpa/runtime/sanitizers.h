#pragma once

// Sanitizer detection and the annotations rpa uses, as no-ops when the
// sanitizer is absent.
//
//   RPA_HAS_ASAN / RPA_HAS_TSAN   1 when built with that sanitizer.
//   RPA_SANITIZER_BUILD           1 when any sanitizer is on (ASan, TSan, or
//                                 RPA_SANITIZE set in CMake, which also covers
//                                 UBSan).
//   RPA_ASAN_POISON(addr, bytes) / RPA_ASAN_UNPOISON(addr, bytes)
//                                 mark memory unusable / usable for ASan
//                                 (recycled KV pages).
//   RPA_ASAN_IS_POISONED(addr)    1 if the byte at addr is poisoned (tests).
//
// Thread-safety: the annotations write ASan's shadow memory; callers must own
// the memory they annotate.

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RPA_HAS_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define RPA_HAS_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(RPA_HAS_ASAN)
#define RPA_HAS_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__) && !defined(RPA_HAS_TSAN)
#define RPA_HAS_TSAN 1
#endif
#ifndef RPA_HAS_ASAN
#define RPA_HAS_ASAN 0
#endif
#ifndef RPA_HAS_TSAN
#define RPA_HAS_TSAN 0
#endif

// RPA_SANITIZE_BUILD_DEFINE is set by CMake when RPA_SANITIZE is non-empty
// (UBSan has no feature macro).
#if RPA_HAS_ASAN || RPA_HAS_TSAN || defined(RPA_SANITIZE_BUILD_DEFINE)
#define RPA_SANITIZER_BUILD 1
#else
#define RPA_SANITIZER_BUILD 0
#endif

#if RPA_HAS_ASAN
#include <sanitizer/asan_interface.h>
#define RPA_ASAN_POISON(addr, bytes) \
  __asan_poison_memory_region((addr), (bytes))
#define RPA_ASAN_UNPOISON(addr, bytes) \
  __asan_unpoison_memory_region((addr), (bytes))
#define RPA_ASAN_IS_POISONED(addr) __asan_address_is_poisoned(addr)
#else
#define RPA_ASAN_POISON(addr, bytes) ((void)(addr), (void)(bytes))
#define RPA_ASAN_UNPOISON(addr, bytes) ((void)(addr), (void)(bytes))
#define RPA_ASAN_IS_POISONED(addr) ((void)(addr), 0)
#endif
