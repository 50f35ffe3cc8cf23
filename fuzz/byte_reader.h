#pragma once

// ByteReader: the fuzz harnesses' view of libFuzzer's input as a stream of
// small integers. Reading past the end yields zeros, so every input decodes
// to some case and the harness never has to reject one for being short.
//
// Thread-safety: none (one reader per input).

#include <cstddef>
#include <cstdint>

namespace rpa::fuzz {

class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size)
      : data_(data), size_(size) {}

  bool empty() const { return pos_ >= size_; }
  std::uint8_t U8() { return pos_ < size_ ? data_[pos_++] : std::uint8_t{0}; }
  std::uint32_t U32() {
    std::uint32_t value = 0;
    for (int i = 0; i < 4; ++i) value = (value << 8) | U8();
    return value;
  }
  std::uint64_t U64() {
    const std::uint64_t high = U32();
    return (high << 32) | U32();
  }
  // A value in [0, n) (0 when n is 0); one byte when n <= 256, two otherwise.
  std::uint32_t Below(std::uint32_t n) {
    if (n <= 1) return 0;
    if (n <= 256) return U8() % n;
    const std::uint32_t value = (std::uint32_t{U8()} << 8) | U8();
    return value % n;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

}  // namespace rpa::fuzz
