#include "rpa/scheduler/npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <system_error>
#include <utility>

#include "npy_header.h"

namespace rpa::scheduler {
namespace {

constexpr std::size_t kAlignmentBytes = 64;
constexpr std::size_t kPageBytes = 4096;  // the alignment from this size up

std::string OsError(int error) {
  return std::generic_category().message(error);
}

}  // namespace

std::string_view NpyDtypeDescr(NpyDtype dtype) {
  switch (dtype) {
    case NpyDtype::kF32:
      return "<f4";
    case NpyDtype::kF16:
      return "<f2";
    case NpyDtype::kU16:
      return "<u2";
    case NpyDtype::kI32:
      return "<i4";
  }
  return "?";
}

std::size_t NpyDtypeBytes(NpyDtype dtype) {
  return dtype == NpyDtype::kF16 || dtype == NpyDtype::kU16 ? 2 : 4;
}

void NpyArray::FreeDeleter::operator()(std::byte* p) const { std::free(p); }

void NpyArray::CheckElementBytes(std::size_t element_bytes) const {
  RPA_CHECK_MSG(element_bytes == NpyDtypeBytes(dtype_),
                "NpyArray::Values<T>: sizeof(T) does not match the dtype");
}

StatusOr<NpyArray> NpyArray::Create(NpyDtype dtype,
                                    std::vector<std::uint64_t> shape) {
  if (shape.size() > kMaxNpyDims) {
    return InvalidArgumentError(
        "npy shape has " + std::to_string(shape.size()) +
        " dimensions, more than " + std::to_string(kMaxNpyDims));
  }
  auto bytes = internal::NpyShapeBytes(shape, NpyDtypeBytes(dtype));
  if (!bytes.has_value()) {
    return InvalidArgumentError("npy shape " + internal::FormatShape(shape) +
                                " is too large");
  }
  NpyArray array;
  array.dtype_ = dtype;
  array.shape_ = std::move(shape);
  array.num_elements_ = static_cast<std::size_t>(*bytes / NpyDtypeBytes(dtype));
  // Rounded up to the alignment as aligned_alloc requires; at least one line.
  const std::size_t alignment =
      *bytes >= kPageBytes ? kPageBytes : kAlignmentBytes;
  std::size_t alloc_bytes =
      (static_cast<std::size_t>(*bytes) + alignment) / alignment * alignment;
  auto* raw =
      static_cast<std::byte*>(std::aligned_alloc(alignment, alloc_bytes));
  if (raw == nullptr) {
    return ResourceExhaustedError("npy array of " + std::to_string(*bytes) +
                                  " bytes: out of memory");
  }
  std::memset(raw, 0, alloc_bytes);
  array.data_.reset(raw);
  return array;
}

std::string NpyArray::ShapeString() const {
  return internal::FormatShape(shape_);
}

StatusOr<NpyArray> ParseNpy(std::span<const std::byte> bytes,
                            std::string_view name) {
  RPA_ASSIGN_OR_RETURN(internal::NpyHeader header,
                       internal::ParseNpyHeader(bytes, name));
  std::uint64_t available = bytes.size() - header.data_offset;
  if (available != header.data_bytes) {
    return internal::DataSizeError(name, header, available);
  }
  RPA_ASSIGN_OR_RETURN(NpyArray array,
                       NpyArray::Create(header.dtype, std::move(header.shape)));
  if (array.num_bytes() > 0) {
    std::memcpy(array.data(), bytes.data() + header.data_offset,
                array.num_bytes());
  }
  return array;
}

StatusOr<NpyArray> ReadNpyFile(const std::filesystem::path& path,
                               std::uint64_t max_file_bytes) {
  const std::string name = path.string();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return InvalidArgumentError(name + ": cannot open: " + OsError(errno));
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  // Reads exactly `size` bytes at `offset`, or says why not.
  auto read_at = [&](std::byte* out, std::size_t size,
                     std::uint64_t offset) -> Status {
    std::size_t done = 0;
    while (done < size) {
      ssize_t n = ::pread(fd, out + done, size - done,
                          static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0)
        return InvalidArgumentError(name + ": read failed: " + OsError(errno));
      if (n == 0)
        return InvalidArgumentError(name + ": file shrank while reading");
      done += static_cast<std::size_t>(n);
    }
    return OkStatus();
  };
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    return InvalidArgumentError(name + ": cannot stat: " + OsError(errno));
  }
  if (!S_ISREG(info.st_mode)) {
    return InvalidArgumentError(name + ": not a regular file");
  }
  auto file_bytes = static_cast<std::uint64_t>(info.st_size);
  if (file_bytes > max_file_bytes) {
    return InvalidArgumentError(
        name + ": file size " + std::to_string(file_bytes) +
        " bytes exceeds the limit of " + std::to_string(max_file_bytes));
  }
  // The preamble, then the header it announces (at most 4 GiB by the
  // format, never more than the file holds), then the data straight into
  // the aligned array: a large cache is read once, not copied.
  std::vector<std::byte> head(static_cast<std::size_t>(
      std::min<std::uint64_t>(file_bytes, internal::kNpyPreambleMaxBytes)));
  RPA_RETURN_IF_ERROR(read_at(head.data(), head.size(), 0));
  RPA_ASSIGN_OR_RETURN(std::uint64_t header_end,
                       internal::NpyHeaderEnd(head, file_bytes, name));
  head.resize(static_cast<std::size_t>(header_end));
  RPA_RETURN_IF_ERROR(read_at(head.data(), head.size(), 0));
  RPA_ASSIGN_OR_RETURN(internal::NpyHeader header,
                       internal::ParseNpyHeader(head, name));
  std::uint64_t available = file_bytes - header.data_offset;
  if (available != header.data_bytes) {
    return internal::DataSizeError(name, header, available);
  }
  RPA_ASSIGN_OR_RETURN(NpyArray array,
                       NpyArray::Create(header.dtype, std::move(header.shape)));
  RPA_RETURN_IF_ERROR(
      read_at(array.data(), array.num_bytes(), header.data_offset));
  return array;
}

StatusOr<std::vector<std::byte>> SerializeNpy(
    NpyDtype dtype, std::span<const std::uint64_t> shape,
    std::span<const std::byte> data) {
  RPA_ASSIGN_OR_RETURN(std::vector<std::byte> out,
                       internal::SerializeNpyHeader(dtype, shape, data.size()));
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

Status WriteFileAtomically(const std::filesystem::path& path,
                           std::span<const std::byte> bytes) {
  const std::span<const std::byte> parts[] = {bytes};
  return internal::WriteFileAtomically(path, parts);
}

namespace internal {

StatusOr<std::filesystem::path> WriteTempFile(
    const std::filesystem::path& path,
    std::span<const std::span<const std::byte>> parts) {
  static std::atomic<std::uint64_t> counter{0};
  const std::string name = path.string();
  std::filesystem::path temp = path;
  temp += ".tmp." + std::to_string(::getpid()) + "." +
          std::to_string(counter.fetch_add(1, std::memory_order_relaxed));
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    return InvalidArgumentError(name + ": cannot create " + temp.string() +
                                ": " + OsError(errno));
  }
  auto fail = [&](const std::string& what, int error) {
    ::close(fd);
    ::unlink(temp.c_str());
    return InternalError(name + ": " + what + ": " + OsError(error));
  };
  for (std::span<const std::byte> bytes : parts) {
    std::size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return fail("write failed", errno);
      done += static_cast<std::size_t>(n);
    }
  }
  // Flushed before the rename so that after a crash the name holds either
  // the old file or the whole new one.
  if (::fsync(fd) != 0) return fail("fsync failed", errno);
  if (::close(fd) != 0) {
    int error = errno;
    ::unlink(temp.c_str());
    return InternalError(name + ": close failed: " + OsError(error));
  }
  return temp;
}

Status CommitTempFile(const std::filesystem::path& temp,
                      const std::filesystem::path& path) {
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    int error = errno;
    ::unlink(temp.c_str());
    return InternalError(path.string() + ": rename from " + temp.string() +
                         " failed: " + OsError(error));
  }
  return OkStatus();
}

Status WriteFileAtomically(const std::filesystem::path& path,
                           std::span<const std::span<const std::byte>> parts) {
  RPA_ASSIGN_OR_RETURN(std::filesystem::path temp, WriteTempFile(path, parts));
  return CommitTempFile(temp, path);
}

StatusOr<std::vector<std::byte>> SerializeNpyHeader(
    NpyDtype dtype, std::span<const std::uint64_t> shape,
    std::size_t data_bytes) {
  std::vector<std::uint64_t> dims(shape.begin(), shape.end());
  auto bytes = NpyShapeBytes(dims, NpyDtypeBytes(dtype));
  if (!bytes.has_value() || dims.size() > kMaxNpyDims) {
    return InvalidArgumentError("npy shape " + FormatShape(dims) +
                                " is too large");
  }
  if (*bytes != data_bytes) {
    return InvalidArgumentError("npy data has " + std::to_string(data_bytes) +
                                " bytes but shape " + FormatShape(dims) +
                                " of '" + std::string(NpyDtypeDescr(dtype)) +
                                "' needs " + std::to_string(*bytes));
  }
  std::string dict = "{'descr': '" + std::string(NpyDtypeDescr(dtype)) +
                     "', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) dict += ", ";
    dict += std::to_string(dims[i]);
  }
  if (dims.size() == 1) dict += ",";
  dict += "), }";
  // Version 1.0 holds a header of up to 65535 bytes; 2.0 beyond. Padded with
  // spaces and ended by '\n' so that the data starts 64-byte aligned, as
  // NumPy writes it.
  std::size_t length_bytes = 2;
  std::uint8_t major = 1;
  if (dict.size() + 1 + 64 > 0xFFFF) {
    length_bytes = 4;
    major = 2;
  }
  std::size_t preamble = 6 + 2 + length_bytes;
  std::size_t total = (preamble + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - preamble - dict.size() - 1, ' ');
  dict += '\n';
  std::vector<std::byte> out;
  out.reserve(total);
  for (char c : std::string_view(kNpyMagic, kNpyMagicBytes)) {
    out.push_back(static_cast<std::byte>(c));
  }
  out.push_back(static_cast<std::byte>(major));
  out.push_back(std::byte{0});
  std::size_t header_len = dict.size();
  for (std::size_t i = 0; i < length_bytes; ++i) {
    out.push_back(static_cast<std::byte>((header_len >> (8 * i)) & 0xFF));
  }
  for (char c : dict) out.push_back(static_cast<std::byte>(c));
  return out;
}

}  // namespace internal

Status WriteNpyFile(const std::filesystem::path& path, const NpyArray& array) {
  // Header and data are written from where they are: a 1 GiB cache is not
  // copied into a serialisation buffer first.
  RPA_ASSIGN_OR_RETURN(std::vector<std::byte> header,
                       internal::SerializeNpyHeader(
                           array.dtype(), array.shape(), array.num_bytes()));
  const std::span<const std::byte> parts[] = {header, array.bytes()};
  return internal::WriteFileAtomically(path, parts);
}

}  // namespace rpa::scheduler
