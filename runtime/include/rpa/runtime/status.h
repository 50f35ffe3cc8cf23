#pragma once

// Status and StatusOr: how every rpa entry point reports a recoverable error.
//
// A Status is a code plus a message that names the offending field and its
// value ("page_size_tokens must be positive, got 0"). No exception crosses the
// public API: functions that can fail return [[nodiscard]] Status or
// StatusOr<T>.
//
// Thread-safety: values; a const Status may be read from any number of threads.
//
// Example:
//   rpa::StatusOr<int> ParsePort(std::string_view text);
//   auto port = ParsePort("80");
//   if (!port.ok()) return port.status();
//   Use(*port);

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>

#include "rpa/runtime/check.h"

namespace rpa {

enum class StatusCode : std::uint8_t {
  kOk = 0,
  kInvalidArgument,     // the caller passed a bad value; nothing changed
  kFailedPrecondition,  // the call is out of order for the object's state
  kNotFound,            // an id that names nothing (or no longer does)
  kResourceExhausted,   // out of pages, memory, slots; retry after freeing
  kUnavailable,         // a facility of the system is missing (io_uring, ...)
  kInternal,            // an invariant broke or the OS failed unexpectedly
};

// "INVALID_ARGUMENT" etc.
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message);
  Status(const Status& other)
      : error_(other.error_ != nullptr ? std::make_unique<Error>(*other.error_)
                                       : nullptr) {}
  Status& operator=(const Status& other) {
    if (this != &other) *this = Status(other);
    return *this;
  }
  // A moved-from Status is OK.
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;
  ~Status() = default;

  bool ok() const { return error_ == nullptr; }
  StatusCode code() const {
    return error_ != nullptr ? error_->code : StatusCode::kOk;
  }
  // Empty for OK.
  const std::string& message() const;

  // "INVALID_ARGUMENT: page_size_tokens must be positive, got 0", or "OK".
  std::string ToString() const;

  // Explicitly drops a status the caller decided not to act on.
  void IgnoreError() const {}

  friend bool operator==(const Status& a, const Status& b) {
    return a.code() == b.code() && a.message() == b.message();
  }

 private:
  struct Error {
    StatusCode code;
    std::string message;
  };
  // One pointer, null for OK: an OK status (the common case, carried by every
  // finished task) is built, moved and destroyed without touching memory
  // beyond it; an error owns its code and message on the heap.
  std::unique_ptr<Error> error_;
};

static_assert(sizeof(Status) == sizeof(void*),
              "an OK Status is one null pointer");

std::ostream& operator<<(std::ostream& os, const Status& status);

inline Status OkStatus() { return Status(); }
Status InvalidArgumentError(std::string message);
Status FailedPreconditionError(std::string message);
Status NotFoundError(std::string message);
Status ResourceExhaustedError(std::string message);
Status UnavailableError(std::string message);
Status InternalError(std::string message);

// Either a T or a non-OK Status. Accessing the value of an error is a bug
// (RPA_CHECK), so test ok() first.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const Status& status)
      : status_(status) {  // NOLINT: implicit by design
    RPA_CHECK_MSG(!status_.ok(),
                  "StatusOr constructed from an OK status without a value");
  }
  StatusOr(Status&& status) : status_(std::move(status)) {  // NOLINT
    RPA_CHECK_MSG(!status_.ok(),
                  "StatusOr constructed from an OK status without a value");
  }
  StatusOr(const T& value) : value_(value) {}        // NOLINT
  StatusOr(T&& value) : value_(std::move(value)) {}  // NOLINT

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

  T& value() & {
    CheckHasValue();
    return *value_;
  }
  const T& value() const& {
    CheckHasValue();
    return *value_;
  }
  T&& value() && {
    CheckHasValue();
    return std::move(*value_);
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  void CheckHasValue() const {
    RPA_CHECK_MSG(value_.has_value(), status_.ToString().c_str());
  }

  Status status_;
  std::optional<T> value_;
};

}  // namespace rpa

// Returns early from the enclosing function if `expr` (a Status) is not OK.
#define RPA_RETURN_IF_ERROR(expr)                      \
  do {                                                 \
    ::rpa::Status rpa_status_tmp_ = (expr);            \
    if (!rpa_status_tmp_.ok()) return rpa_status_tmp_; \
  } while (false)

#define RPA_STATUS_CONCAT_INNER_(a, b) a##b
#define RPA_STATUS_CONCAT_(a, b) RPA_STATUS_CONCAT_INNER_(a, b)

// `RPA_ASSIGN_OR_RETURN(auto x, MakeX());` declares x from a StatusOr, or
// returns its error.
#define RPA_ASSIGN_OR_RETURN(lhs, expr)                                        \
  RPA_ASSIGN_OR_RETURN_IMPL_(RPA_STATUS_CONCAT_(rpa_statusor_, __LINE__), lhs, \
                             expr)
#define RPA_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
