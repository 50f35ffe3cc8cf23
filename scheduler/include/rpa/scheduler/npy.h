#pragma once

// NumPy .npy files (format versions 1.0, 2.0 and 3.0), the interchange format
// of shared/SPEC.md section 5.
//
// Only what SPEC section 5 needs is accepted: dtypes '<f4' (f32), '<f2'
// (f16), '<u2' (bf16 bits) and '<i4' (int32), C order, little-endian. The
// header is a Python dict literal with exactly the keys 'descr',
// 'fortran_order' and 'shape'. Everything else is InvalidArgument with a
// message naming the file (the `name` argument) and the field: fortran_order
// True, big-endian or other dtypes, a malformed header, a shape with more
// than kMaxNpyDims dimensions or whose byte size overflows, data shorter
// ("truncated") or longer than the shape says.
//
// The parser reads untrusted bytes (fuzz/npy_fuzz.cc): it never reads past
// the given span and never allocates more than the input's size.
//
// Writing goes through a temporary file in the destination's directory that
// is renamed over the destination, so a reader (or a crash) never sees a
// partial file.
//
// Thread-safety: functions on distinct values and paths may run concurrently.
//
// Example:
//   RPA_ASSIGN_OR_RETURN(NpyArray q, ReadNpyFile("case/q.npy"));
//   if (q.dtype() != NpyDtype::kF32) return InvalidArgumentError("...");
//   std::span<const float> values = q.Values<float>();

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rpa/runtime/status.h"

namespace rpa::scheduler {

enum class NpyDtype : std::uint8_t {
  kF32,  // '<f4'
  kF16,  // '<f2'
  kU16,  // '<u2' (SPEC section 5 stores bf16 bits this way)
  kI32,  // '<i4'
};

inline constexpr std::size_t kMaxNpyDims =
    32;  // NumPy's own limit (NPY_MAXDIMS)

// "<f4", "<f2", "<u2", "<i4".
std::string_view NpyDtypeDescr(NpyDtype dtype);
std::size_t NpyDtypeBytes(NpyDtype dtype);

// An owned array: dtype, shape and the raw little-endian elements in an
// aligned buffer, so that a cache loaded from a file can be handed to the
// kernels as it is: 64-byte aligned, and page (4 KiB) aligned from 4 KiB up,
// as memory::KvCache's region is (a cache token row of 4 KiB then sits in
// one OS page, not across two: the decode kernel streams it about 6 %
// faster).
class NpyArray {
 public:
  NpyArray() = default;
  // Zero-filled; InvalidArgument if the byte size overflows.
  static StatusOr<NpyArray> Create(NpyDtype dtype,
                                   std::vector<std::uint64_t> shape);

  NpyDtype dtype() const { return dtype_; }
  const std::vector<std::uint64_t>& shape() const { return shape_; }
  std::size_t num_elements() const { return num_elements_; }
  std::size_t num_bytes() const {
    return num_elements_ * NpyDtypeBytes(dtype_);
  }
  std::byte* data() { return data_.get(); }
  const std::byte* data() const { return data_.get(); }
  std::span<std::byte> bytes() { return {data_.get(), num_bytes()}; }
  std::span<const std::byte> bytes() const {
    return {data_.get(), num_bytes()};
  }

  // The elements as T (float for kF32, std::uint16_t for kF16 / kU16,
  // std::int32_t for kI32); the caller checks dtype() first (RPA_CHECK).
  template <typename T>
  std::span<T> Values() {
    CheckElementBytes(sizeof(T));
    return {reinterpret_cast<T*>(data_.get()), num_elements_};
  }
  template <typename T>
  std::span<const T> Values() const {
    CheckElementBytes(sizeof(T));
    return {reinterpret_cast<const T*>(data_.get()), num_elements_};
  }

  // "[2, 16, 8]".
  std::string ShapeString() const;

 private:
  struct FreeDeleter {
    void operator()(std::byte* p) const;
  };
  void CheckElementBytes(std::size_t element_bytes) const;

  NpyDtype dtype_ = NpyDtype::kF32;
  std::vector<std::uint64_t> shape_;
  std::size_t num_elements_ = 0;
  std::unique_ptr<std::byte, FreeDeleter> data_;
};

// Parses a whole .npy file held in `bytes`. `name` (usually the path) starts
// every error message: "q.npy: header field 'fortran_order' is True; only C
// order is supported".
StatusOr<NpyArray> ParseNpy(std::span<const std::byte> bytes,
                            std::string_view name);

// Reads and parses `path`; a missing or unreadable file is InvalidArgument
// naming it. Files larger than max_file_bytes are rejected before reading.
StatusOr<NpyArray> ReadNpyFile(const std::filesystem::path& path,
                               std::uint64_t max_file_bytes = std::uint64_t{1}
                                                              << 40);

// The .npy bytes (format 1.0 when the header fits in 65535 bytes, else 2.0;
// header padded to a multiple of 64 bytes as NumPy does) of an array with
// this dtype and shape; `data` must hold exactly product(shape) elements.
StatusOr<std::vector<std::byte>> SerializeNpy(
    NpyDtype dtype, std::span<const std::uint64_t> shape,
    std::span<const std::byte> data);

// Writes `bytes` to `path` atomically: a temporary file next to it is
// written, flushed and renamed over `path`. On error the temporary is removed
// and `path` is unchanged. InvalidArgument / Internal name the path and the
// OS error.
Status WriteFileAtomically(const std::filesystem::path& path,
                           std::span<const std::byte> bytes);

// SerializeNpy + WriteFileAtomically.
Status WriteNpyFile(const std::filesystem::path& path, const NpyArray& array);

}  // namespace rpa::scheduler
