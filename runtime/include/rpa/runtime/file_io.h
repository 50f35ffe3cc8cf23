#pragma once

// ReadAt / WriteAt: positional file I/O that suspends the fiber, not the
// worker (used to swap KV pages to disk).
//
// In a fiber on the io_uring backend the request is an SQE on the worker's
// ring, submitted with the others of the same scheduling round; the fiber
// resumes when its CQE arrives. When the ring has as many operations in
// flight as its completion queue holds, the fiber waits for a slot
// (back-pressure, not an error). On the kThreads backend the request runs on
// the blocking pool. In virtual time and outside fibers it is a plain
// pread/pwrite on the calling thread (virtual time does not advance).
//
// Like pread/pwrite, one call may transfer fewer bytes than asked (at end of
// file, or above 2 GiB per call): the count is returned, 0 at end of file.
// Errors: InvalidArgument (bad fd, buffer or offset: EBADF, EINVAL, EFAULT),
// ResourceExhausted (ENOSPC, EDQUOT, ENOMEM), Internal (other errno), each
// naming the fd, offset and errno text.
//
// Thread-safety: any thread or fiber; concurrent calls on one fd are as safe
// as concurrent pread/pwrite.
// Memory ordering: the buffer's bytes are those of the completed operation
// when the call returns.
//
// Example:
//   StatusOr<std::size_t> n = WriteAt(fd, std::as_bytes(std::span(page)),
//   page_offset);

#include <cstddef>
#include <cstdint>
#include <span>

#include "rpa/runtime/status.h"

namespace rpa::runtime {

StatusOr<std::size_t> ReadAt(int fd, std::span<std::byte> buffer,
                             std::uint64_t offset);
StatusOr<std::size_t> WriteAt(int fd, std::span<const std::byte> buffer,
                              std::uint64_t offset);

}  // namespace rpa::runtime
