// Device: compute reservations on the matrix and vector units (list
// scheduling in issue order per unit) and WaitUntil.

#include <algorithm>
#include <cmath>

#include "device_impl.h"
#include "fmt/format.h"

#include "rpa/runtime/check.h"
#include "rpa/runtime/executor.h"
#include "rpa/runtime/this_fiber.h"

namespace rpa::device::internal {
namespace {

// Rounded up to a multiple of `to`, in double (m, k, n may be anything).
double PadTo(std::uint64_t value, std::uint64_t to) {
  return std::ceil(static_cast<double>(value) / static_cast<double>(to)) *
         static_cast<double>(to);
}

constexpr std::uint64_t kSublanes = 8;

}  // namespace

void DeviceImpl::CheckAccesses(std::span<const VmemAccess> accesses,
                               std::string_view label) const {
  for (const VmemAccess& access : accesses) {
    const Buffer* buffer = FindBuffer(access.buffer);
    if (buffer == nullptr) {
      const std::string message = fmt::format(
          "compute op \"{}\" accesses VMEM buffer id {}, which is not "
          "allocated",
          label, access.buffer.id);
      rpa::internal::CheckFailed(__FILE__, __LINE__, "buffer allocated",
                                 message.c_str());
    }
    if (access.offset > buffer->bytes ||
        access.bytes > buffer->bytes - access.offset) {
      const std::string message = fmt::format(
          "compute op \"{}\" accesses [{}, {} + {}) outside VMEM buffer "
          "\"{}\" of {} bytes",
          label, access.offset, access.offset, access.bytes, buffer->name,
          buffer->bytes);
      rpa::internal::CheckFailed(__FILE__, __LINE__, "access inside buffer",
                                 message.c_str());
    }
  }
}

ComputeOp DeviceImpl::Reserve(Unit unit, std::int64_t duration_ns,
                              runtime::TimePoint not_before) {
  std::int64_t& free_ns =
      unit == Unit::kMatrix ? matrix_free_ns_ : vector_free_ns_;
  const std::int64_t not_before_ns =
      std::chrono::duration_cast<runtime::Duration>(
          not_before.time_since_epoch())
          .count();
  const std::int64_t start = std::max({NowNs(), not_before_ns, free_ns});
  RPA_CHECK_MSG(duration_ns <= INT64_MAX - start,
                "simulated time overflows int64 nanoseconds");
  const std::int64_t end = start + duration_ns;
  free_ns = end;
  runtime::Duration& busy =
      unit == Unit::kMatrix ? stats_.matrix_busy : stats_.vector_busy;
  busy += runtime::Duration(duration_ns);
  return ComputeOp{.start = runtime::TimePoint(runtime::Duration(start)),
                   .end = runtime::TimePoint(runtime::Duration(end))};
}

ComputeOp DeviceImpl::MatMul(std::uint64_t m, std::uint64_t k, std::uint64_t n,
                             std::span<const VmemAccess> accesses,
                             runtime::TimePoint not_before,
                             std::string_view label) {
  Sync();
  CheckAccesses(accesses, label);
  const bool empty = m == 0 || k == 0 || n == 0;
  const double charged = empty ? 0.0
                               : 2.0 * PadTo(m, kSublanes) *
                                     PadTo(k, spec_.mxu_tile) *
                                     PadTo(n, spec_.mxu_tile);
  const double useful = 2.0 * static_cast<double>(m) * static_cast<double>(k) *
                        static_cast<double>(n);
  const std::int64_t duration_ns =
      empty ? 0
            : std::max<std::int64_t>(
                  1, CeilNs(charged * 1e9 / spec_.matrix_peak_flops));
  const ComputeOp op = Reserve(Unit::kMatrix, duration_ns, not_before);
  const std::int64_t start_ns = op.start.time_since_epoch().count();
  const std::int64_t end_ns = op.end.time_since_epoch().count();
  races_.OnOpIssued(accesses, label, NowNs(), end_ns);
  stats_.matrix_flops_charged += charged;
  stats_.matrix_flops_useful += useful;
  trace_.AddMatMul(start_ns, end_ns, label, m, k, n, charged);
  return op;
}

ComputeOp DeviceImpl::Vector(double ops, std::span<const VmemAccess> accesses,
                             runtime::TimePoint not_before,
                             std::string_view label) {
  RPA_CHECK_MSG(std::isfinite(ops) && ops >= 0,
                "Device::Vector: ops must be finite and >= 0");
  Sync();
  CheckAccesses(accesses, label);
  const std::int64_t duration_ns =
      ops == 0 ? 0
               : std::max<std::int64_t>(
                     1, CeilNs(ops * 1e9 / spec_.vector_ops_per_s()));
  const ComputeOp op = Reserve(Unit::kVector, duration_ns, not_before);
  const std::int64_t start_ns = op.start.time_since_epoch().count();
  const std::int64_t end_ns = op.end.time_since_epoch().count();
  races_.OnOpIssued(accesses, label, NowNs(), end_ns);
  stats_.vector_ops += ops;
  trace_.AddVector(start_ns, end_ns, label, ops);
  return op;
}

void DeviceImpl::WaitUntil(runtime::TimePoint t) {
  RPA_CHECK_MSG(runtime::Executor::Current() == executor_,
                "Device::WaitUntil must be called from a fiber of the "
                "device's executor");
  Sync();
  if (t <= executor_->Now()) return;
  runtime::this_fiber::SleepUntil(t);
  Sync();  // what lands at t is in place when WaitUntil returns
}

}  // namespace rpa::device::internal
