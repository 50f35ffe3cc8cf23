#include "rpa/runtime/file_io.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "executor_impl.h"
#include "worker.h"

#include "rpa/runtime/blocking.h"

namespace rpa::runtime {
namespace {

// One call moves at most 1 GiB (pread's and io_uring's length limits are
// near 2 GiB; the caller loops on short counts anyway).
constexpr std::size_t kMaxBytesPerCall = std::size_t{1} << 30;

StatusOr<std::size_t> ToResult(std::int64_t result, const char* op, int fd,
                               std::uint64_t offset) {
  if (result >= 0) return static_cast<std::size_t>(result);
  const int error = static_cast<int>(-result);
  std::string message = std::string(op) + "(fd=" + std::to_string(fd) +
                        ", offset=" + std::to_string(offset) +
                        "): " + std::strerror(error);
  switch (error) {
    case EBADF:
    case EINVAL:
    case EFAULT:
    case ESPIPE:
    case EISDIR:
      return InvalidArgumentError(std::move(message));
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
      return ResourceExhaustedError(std::move(message));
    default:
      return InternalError(std::move(message));
  }
}

std::int64_t PlainIo(bool write, int fd, void* buffer, std::size_t bytes,
                     std::uint64_t offset) {
  for (;;) {
    const ssize_t n =
        write ? ::pwrite(fd, buffer, bytes, static_cast<off_t>(offset))
              : ::pread(fd, buffer, bytes, static_cast<off_t>(offset));
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

StatusOr<std::size_t> DoIo(bool write, int fd, void* buffer, std::size_t bytes,
                           std::uint64_t offset) {
  const char* op = write ? "WriteAt" : "ReadAt";
  bytes = std::min(bytes, kMaxBytesPerCall);
  internal::Worker* worker = internal::Worker::Current();
  if (worker != nullptr && worker->in_fiber() &&
      !worker->executor()->virtual_time()) {
    if (worker->reactor()->supports_file_io()) {
      internal::ReactorOp request;
      request.kind = write ? internal::ReactorOp::Kind::kWrite
                           : internal::ReactorOp::Kind::kRead;
      request.fd = fd;
      request.buffer = buffer;
      request.bytes = static_cast<std::uint32_t>(bytes);
      request.offset = offset;
      return ToResult(worker->RunIo(&request), op, fd, offset);
    }
    // The kThreads backend: the blocking pool does the syscall.
    return ToResult(
        RunBlocking([&] { return PlainIo(write, fd, buffer, bytes, offset); }),
        op, fd, offset);
  }
  return ToResult(PlainIo(write, fd, buffer, bytes, offset), op, fd, offset);
}

}  // namespace

StatusOr<std::size_t> ReadAt(int fd, std::span<std::byte> buffer,
                             std::uint64_t offset) {
  return DoIo(/*write=*/false, fd, buffer.data(), buffer.size(), offset);
}

StatusOr<std::size_t> WriteAt(int fd, std::span<const std::byte> buffer,
                              std::uint64_t offset) {
  // pwrite takes a const buffer; the request struct is shared with reads.
  return DoIo(/*write=*/true, fd, const_cast<std::byte*>(buffer.data()),
              buffer.size(), offset);
}

}  // namespace rpa::runtime
