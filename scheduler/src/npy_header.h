#pragma once

// The .npy header grammar, shared by ParseNpy and ReadNpyFile. Private to
// scheduler/.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rpa/runtime/status.h"
#include "rpa/scheduler/npy.h"

namespace rpa::scheduler::internal {

inline constexpr char kNpyMagic[] = "\x93NUMPY";
inline constexpr std::size_t kNpyMagicBytes = 6;
// Magic, version (2 bytes) and header_len (2 bytes in 1.0, 4 in 2.0 / 3.0).
inline constexpr std::size_t kNpyPreambleMaxBytes = kNpyMagicBytes + 2 + 4;

struct NpyHeader {
  NpyDtype dtype = NpyDtype::kF32;
  std::vector<std::uint64_t> shape;
  std::uint64_t data_offset = 0;  // first byte after the header
  std::uint64_t data_bytes = 0;   // product(shape) * element bytes
};

// product(shape) * element_bytes, or nullopt past 2^62 bytes.
std::optional<std::uint64_t> NpyShapeBytes(std::span<const std::uint64_t> shape,
                                           std::size_t element_bytes);
// "[2, 16, 8]".
std::string FormatShape(std::span<const std::uint64_t> shape);

// From the first min(file size, kNpyPreambleMaxBytes) bytes: where the header
// ends (= where the data starts). Checks magic and version.
StatusOr<std::uint64_t> NpyHeaderEnd(std::span<const std::byte> preamble,
                                     std::uint64_t file_bytes,
                                     std::string_view name);

// Parses preamble and header from `bytes` (which must hold at least the
// header; the data may follow). Does not look at the data.
StatusOr<NpyHeader> ParseNpyHeader(std::span<const std::byte> bytes,
                                   std::string_view name);

// "<name>: data is truncated: ..." or "...: N trailing bytes after the data".
Status DataSizeError(std::string_view name, const NpyHeader& header,
                     std::uint64_t available_bytes);

// The header bytes (preamble included) of an array of data_bytes bytes.
StatusOr<std::vector<std::byte>> SerializeNpyHeader(
    NpyDtype dtype, std::span<const std::uint64_t> shape,
    std::size_t data_bytes);

// The two halves of WriteFileAtomically: the concatenation of `parts` is
// written and flushed to a new temporary file next to `path` (returned; on
// error nothing is left behind), then renamed over `path` (on error the
// temporary is removed).
StatusOr<std::filesystem::path> WriteTempFile(
    const std::filesystem::path& path,
    std::span<const std::span<const std::byte>> parts);
Status CommitTempFile(const std::filesystem::path& temp,
                      const std::filesystem::path& path);

// WriteTempFile + CommitTempFile.
Status WriteFileAtomically(const std::filesystem::path& path,
                           std::span<const std::span<const std::byte>> parts);

}  // namespace rpa::scheduler::internal
