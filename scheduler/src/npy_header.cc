#include "npy_header.h"

#include <cstring>
#include <string>
#include <utility>

namespace rpa::scheduler::internal {
namespace {

constexpr std::uint64_t kMaxArrayBytes = std::uint64_t{1} << 62;

std::string Prefix(std::string_view name) { return std::string(name) + ": "; }

// A recursive-descent reader of the one Python literal NumPy writes:
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// Strings in single or double quotes without escapes, True / False, and
// tuples of non-negative integers (a trailing 'L' as Python 2 wrote it is
// accepted). Anything else is an error naming the offset.
class HeaderReader {
 public:
  HeaderReader(std::string_view text, std::string_view name)
      : text_(text), name_(name) {}

  StatusOr<NpyHeader> Read() {
    std::optional<std::string> descr;
    std::optional<bool> fortran_order;
    std::optional<std::vector<std::uint64_t>> shape;
    SkipSpace();
    if (!Consume('{')) return Error("header does not start with '{'");
    while (true) {
      SkipSpace();
      if (Consume('}')) break;
      RPA_ASSIGN_OR_RETURN(std::string key, ReadString("a key"));
      SkipSpace();
      if (!Consume(':')) return Error("expected ':' after key '" + key + "'");
      SkipSpace();
      if (key == "descr") {
        if (descr.has_value()) return Error("duplicate key 'descr'");
        RPA_ASSIGN_OR_RETURN(descr, ReadString("the value of 'descr'"));
      } else if (key == "fortran_order") {
        if (fortran_order.has_value())
          return Error("duplicate key 'fortran_order'");
        RPA_ASSIGN_OR_RETURN(fortran_order, ReadBool("fortran_order"));
      } else if (key == "shape") {
        if (shape.has_value()) return Error("duplicate key 'shape'");
        RPA_ASSIGN_OR_RETURN(shape, ReadShape());
      } else {
        return Error("unknown header key '" + key + "'");
      }
      SkipSpace();
      if (Consume(',')) continue;
      if (Consume('}')) break;
      return Error("expected ',' or '}' after the value of '" + key + "'");
    }
    SkipSpace();
    if (pos_ != text_.size())
      return Error("unexpected text after the header dict");
    if (!descr.has_value()) return Error("header has no 'descr'");
    if (!fortran_order.has_value())
      return Error("header has no 'fortran_order'");
    if (!shape.has_value()) return Error("header has no 'shape'");
    if (*fortran_order) {
      return InvalidArgumentError(
          Prefix(name_) +
          "header field 'fortran_order' is True; only C "
          "order (False) is supported");
    }
    NpyHeader header;
    RPA_ASSIGN_OR_RETURN(header.dtype, ParseDescr(*descr));
    header.shape = std::move(*shape);
    auto bytes = NpyShapeBytes(header.shape, NpyDtypeBytes(header.dtype));
    if (!bytes.has_value()) {
      return InvalidArgumentError(Prefix(name_) + "header field 'shape' " +
                                  FormatShape(header.shape) + " of '" + *descr +
                                  "' exceeds 2^62 bytes");
    }
    header.data_bytes = *bytes;
    return header;
  }

 private:
  Status Error(const std::string& what) const {
    return InvalidArgumentError(Prefix(name_) + "malformed header at offset " +
                                std::to_string(pos_) + ": " + what);
  }

  void SkipSpace() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' ||
            text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool Consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool ConsumeWord(std::string_view word) {
    if (text_.substr(pos_, word.size()) == word) {
      pos_ += word.size();
      return true;
    }
    return false;
  }

  StatusOr<std::string> ReadString(const std::string& what) {
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) {
      return Error("expected a quoted string for " + what);
    }
    char quote = text_[pos_++];
    std::size_t begin = pos_;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      char c = text_[pos_];
      if (c == '\\' || c < 0x20 || c > 0x7E) {
        return Error("unsupported character in a string");
      }
      ++pos_;
    }
    if (pos_ >= text_.size()) return Error("unterminated string");
    std::string value(text_.substr(begin, pos_ - begin));
    ++pos_;
    return value;
  }

  StatusOr<bool> ReadBool(const std::string& key) {
    if (ConsumeWord("True")) return true;
    if (ConsumeWord("False")) return false;
    return Error("header field '" + key + "' must be True or False");
  }

  StatusOr<std::vector<std::uint64_t>> ReadShape() {
    if (!Consume('(')) return Error("header field 'shape' must be a tuple");
    std::vector<std::uint64_t> dims;
    while (true) {
      SkipSpace();
      if (Consume(')')) break;
      if (pos_ >= text_.size() || text_[pos_] < '0' || text_[pos_] > '9') {
        return Error("header field 'shape' must hold non-negative integers");
      }
      std::uint64_t value = 0;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
        auto digit = static_cast<std::uint64_t>(text_[pos_] - '0');
        if (value > (kMaxArrayBytes - digit) / 10) {
          return InvalidArgumentError(Prefix(name_) +
                                      "header field 'shape' has a dimension "
                                      "larger than 2^62");
        }
        value = value * 10 + digit;
        ++pos_;
      }
      Consume('L');
      if (dims.size() == kMaxNpyDims) {
        return InvalidArgumentError(
            Prefix(name_) + "header field 'shape' has more than " +
            std::to_string(kMaxNpyDims) + " dimensions");
      }
      dims.push_back(value);
      SkipSpace();
      if (Consume(',')) continue;
      if (Consume(')')) break;
      return Error("expected ',' or ')' in 'shape'");
    }
    return dims;
  }

  StatusOr<NpyDtype> ParseDescr(const std::string& descr) const {
    if (descr == "<f4") return NpyDtype::kF32;
    if (descr == "<f2") return NpyDtype::kF16;
    if (descr == "<u2") return NpyDtype::kU16;
    if (descr == "<i4") return NpyDtype::kI32;
    std::string why = "unsupported dtype";
    if (!descr.empty() && descr[0] == '>') why = "big-endian dtype";
    return InvalidArgumentError(Prefix(name_) + "header field 'descr' is '" +
                                descr + "' (" + why +
                                "); supported: '<f4', '<f2', '<u2', '<i4'");
  }

  std::string_view text_;
  std::string_view name_;
  std::size_t pos_ = 0;
};

std::uint64_t LoadLittleEndian(std::span<const std::byte> bytes) {
  std::uint64_t value = 0;
  for (std::size_t i = bytes.size(); i-- > 0;) {
    value = (value << 8) | static_cast<std::uint64_t>(bytes[i]);
  }
  return value;
}

}  // namespace

std::optional<std::uint64_t> NpyShapeBytes(std::span<const std::uint64_t> shape,
                                           std::size_t element_bytes) {
  std::uint64_t bytes = element_bytes;
  for (std::uint64_t dim : shape) {
    if (dim != 0 && bytes > kMaxArrayBytes / dim) return std::nullopt;
    bytes *= dim;
  }
  return bytes;
}

std::string FormatShape(std::span<const std::uint64_t> shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

StatusOr<std::uint64_t> NpyHeaderEnd(std::span<const std::byte> preamble,
                                     std::uint64_t file_bytes,
                                     std::string_view name) {
  if (preamble.size() < kNpyMagicBytes + 2 ||
      std::memcmp(preamble.data(), kNpyMagic, kNpyMagicBytes) != 0) {
    return InvalidArgumentError(Prefix(name) +
                                "not a .npy file (no \\x93NUMPY magic)");
  }
  auto major = static_cast<unsigned>(preamble[kNpyMagicBytes]);
  auto minor = static_cast<unsigned>(preamble[kNpyMagicBytes + 1]);
  if ((major < 1 || major > 3) || minor != 0) {
    return InvalidArgumentError(
        Prefix(name) + "unsupported format version " + std::to_string(major) +
        "." + std::to_string(minor) + " (supported: 1.0, 2.0, 3.0)");
  }
  std::size_t length_bytes = major == 1 ? 2 : 4;
  std::size_t preamble_bytes = kNpyMagicBytes + 2 + length_bytes;
  if (preamble.size() < preamble_bytes) {
    return InvalidArgumentError(Prefix(name) +
                                "truncated: the file ends inside the preamble");
  }
  std::uint64_t header_len =
      LoadLittleEndian(preamble.subspan(kNpyMagicBytes + 2, length_bytes));
  std::uint64_t end = preamble_bytes + header_len;
  if (end > file_bytes) {
    return InvalidArgumentError(Prefix(name) + "truncated: header_len " +
                                std::to_string(header_len) + " runs past the " +
                                std::to_string(file_bytes) + "-byte file");
  }
  return end;
}

StatusOr<NpyHeader> ParseNpyHeader(std::span<const std::byte> bytes,
                                   std::string_view name) {
  RPA_ASSIGN_OR_RETURN(std::uint64_t end,
                       NpyHeaderEnd(bytes, bytes.size(), name));
  std::size_t length_bytes =
      static_cast<unsigned>(bytes[kNpyMagicBytes]) == 1 ? 2 : 4;
  std::size_t begin = kNpyMagicBytes + 2 + length_bytes;
  std::string_view text(reinterpret_cast<const char*>(bytes.data()) + begin,
                        static_cast<std::size_t>(end) - begin);
  RPA_ASSIGN_OR_RETURN(NpyHeader header, HeaderReader(text, name).Read());
  header.data_offset = end;
  return header;
}

Status DataSizeError(std::string_view name, const NpyHeader& header,
                     std::uint64_t available_bytes) {
  std::string what = "shape " + FormatShape(header.shape) + " of '" +
                     std::string(NpyDtypeDescr(header.dtype)) + "' needs " +
                     std::to_string(header.data_bytes) +
                     " data bytes, the file has " +
                     std::to_string(available_bytes);
  if (available_bytes < header.data_bytes) {
    return InvalidArgumentError(Prefix(name) + "data is truncated: " + what);
  }
  return InvalidArgumentError(Prefix(name) +
                              "trailing bytes after the data: " + what);
}

}  // namespace rpa::scheduler::internal
