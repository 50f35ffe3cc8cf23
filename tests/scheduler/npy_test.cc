#include "rpa/scheduler/npy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace rpa::scheduler {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

std::vector<std::byte> Bytes(std::string_view text) {
  std::vector<std::byte> out(text.size());
  if (!text.empty()) std::memcpy(out.data(), text.data(), text.size());
  return out;
}

// A .npy file with the given version and header dict (padded as NumPy does)
// followed by `data_bytes` bytes of data.
std::vector<std::byte> MakeFile(std::string dict, std::size_t data_bytes,
                                int major = 1, int minor = 0) {
  std::size_t length_bytes = major == 1 ? 2 : 4;
  std::size_t preamble = 8 + length_bytes;
  const std::size_t padded = (preamble + dict.size() + 1 + 63) / 64 * 64;
  dict.append(padded - preamble - dict.size() - 1, ' ');
  dict.push_back('\n');
  std::string file = "\x93NUMPY";
  file += static_cast<char>(major);
  file += static_cast<char>(minor);
  for (std::size_t i = 0; i < length_bytes; ++i) {
    file += static_cast<char>((dict.size() >> (8 * i)) & 0xFF);
  }
  file += dict;
  file.append(data_bytes, '\x01');
  return Bytes(file);
}

std::string Dict(std::string_view descr, std::string_view fortran,
                 std::string_view shape) {
  return "{'descr': '" + std::string(descr) +
         "', 'fortran_order': " + std::string(fortran) +
         ", 'shape': " + std::string(shape) + ", }";
}

Status ParseError(const std::vector<std::byte>& file) {
  auto parsed = ParseNpy(file, "x.npy");
  EXPECT_FALSE(parsed.ok());
  return parsed.ok() ? OkStatus() : parsed.status();
}

TEST(NpyArrayTest, LargeArraysArePageAligned) {
  auto small = NpyArray::Create(NpyDtype::kF32, {15});
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(small->data()) % 64, 0U);
  // A cache of 2 pages x 16 tokens x 16 heads x 128 dims f16: 4 KiB rows.
  auto cache = NpyArray::Create(NpyDtype::kF16, {2, 16, 16, 128});
  ASSERT_TRUE(cache.ok());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(cache->data()) % 4096, 0U);
}

TEST(NpyTest, RoundTripEveryDtypeAndRank) {
  const std::vector<std::vector<std::uint64_t>> shapes = {
      {}, {0}, {3}, {2, 3, 4}, {1, 2, 1, 5}};
  for (NpyDtype dtype :
       {NpyDtype::kF32, NpyDtype::kF16, NpyDtype::kU16, NpyDtype::kI32}) {
    for (const auto& shape : shapes) {
      auto array = NpyArray::Create(dtype, shape);
      ASSERT_TRUE(array.ok()) << array.status();
      for (std::size_t i = 0; i < array->num_bytes(); ++i) {
        array->data()[i] = static_cast<std::byte>(i * 37 + 11);
      }
      auto file = SerializeNpy(dtype, shape, array->bytes());
      ASSERT_TRUE(file.ok()) << file.status();
      // Header: version 1.0, data 64-byte aligned, ends in '\n'.
      EXPECT_EQ(static_cast<int>((*file)[6]), 1);
      const std::size_t header_end =
          10 + (static_cast<std::size_t>((*file)[8]) |
                static_cast<std::size_t>((*file)[9]) << 8);
      EXPECT_EQ(header_end % 64, 0U);
      EXPECT_EQ(static_cast<char>((*file)[header_end - 1]), '\n');
      auto parsed = ParseNpy(*file, "round.npy");
      ASSERT_TRUE(parsed.ok()) << parsed.status();
      EXPECT_EQ(parsed->dtype(), dtype);
      EXPECT_EQ(parsed->shape(), shape);
      ASSERT_EQ(parsed->num_bytes(), array->num_bytes());
      EXPECT_EQ(std::memcmp(parsed->data(), array->data(), array->num_bytes()),
                0);
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(parsed->data()) % 64, 0U);
    }
  }
}

TEST(NpyTest, ParsesWhatNumPyWrites) {
  // np.save of np.arange(6, dtype='<i4').reshape(2, 3), byte for byte.
  std::string header =
      "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }";
  header.append(118 - header.size() - 1, ' ');
  header += '\n';
  std::string file = std::string("\x93NUMPY\x01\x00", 8) + "\x76" +
                     std::string(1, '\0') + header;
  for (std::int32_t i = 0; i < 6; ++i) {
    file.append(reinterpret_cast<const char*>(&i), 4);
  }
  auto parsed = ParseNpy(Bytes(file), "arange.npy");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->shape(), (std::vector<std::uint64_t>{2, 3}));
  auto values = parsed->Values<std::int32_t>();
  EXPECT_EQ(std::vector<std::int32_t>(values.begin(), values.end()),
            (std::vector<std::int32_t>{0, 1, 2, 3, 4, 5}));
}

TEST(NpyTest, AcceptsVersions2And3AndLiteralVariants) {
  for (int major : {2, 3}) {
    auto parsed =
        ParseNpy(MakeFile(Dict("<f2", "False", "(4,)"), 8, major), "v.npy");
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(parsed->dtype(), NpyDtype::kF16);
    EXPECT_EQ(parsed->shape(), (std::vector<std::uint64_t>{4}));
  }
  // Double quotes, other key order, no trailing comma, Python 2 longs.
  auto parsed = ParseNpy(
      MakeFile(
          "{\"shape\": (2L, 2L), \"fortran_order\": False, \"descr\": \"<u2\"}",
          8),
      "v.npy");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->dtype(), NpyDtype::kU16);
}

TEST(NpyTest, RejectsBadMagicAndVersions) {
  EXPECT_THAT(ParseError(Bytes("NUMPY not really")).message(),
              AllOf(HasSubstr("x.npy"), HasSubstr("magic")));
  EXPECT_THAT(ParseError(Bytes("")).message(), HasSubstr("magic"));
  EXPECT_THAT(
      ParseError(MakeFile(Dict("<f4", "False", "(1,)"), 4, 4)).message(),
      AllOf(HasSubstr("x.npy"), HasSubstr("version 4.0")));
  EXPECT_THAT(
      ParseError(MakeFile(Dict("<f4", "False", "(1,)"), 4, 1, 1)).message(),
      HasSubstr("version 1.1"));
  EXPECT_THAT(ParseError(Bytes("\x93NUMPY\x02")).message(), HasSubstr("magic"));
  EXPECT_THAT(
      ParseError(Bytes(std::string("\x93NUMPY\x02\x00\x01", 9))).message(),
      HasSubstr("truncated"));
}

TEST(NpyTest, RejectsHeaderPastTheEnd) {
  std::vector<std::byte> file = MakeFile(Dict("<f4", "False", "(1,)"), 4);
  file.resize(40);
  EXPECT_THAT(ParseError(file).message(),
              AllOf(HasSubstr("x.npy"), HasSubstr("truncated"),
                    HasSubstr("header_len")));
}

TEST(NpyTest, RejectsFortranOrder) {
  EXPECT_THAT(
      ParseError(MakeFile(Dict("<f4", "True", "(2, 2)"), 16)).message(),
      AllOf(HasSubstr("x.npy"), HasSubstr("fortran_order"), HasSubstr("True")));
}

TEST(NpyTest, RejectsBigEndianAndOtherDtypes) {
  EXPECT_THAT(ParseError(MakeFile(Dict(">f4", "False", "(1,)"), 4)).message(),
              AllOf(HasSubstr("x.npy"), HasSubstr("'descr'"),
                    HasSubstr("big-endian"), HasSubstr(">f4")));
  for (const char* descr : {"<f8", "|u1", "<i8", "=f4", "|b1", "<c8", ""}) {
    EXPECT_THAT(ParseError(MakeFile(Dict(descr, "False", "(1,)"), 8)).message(),
                AllOf(HasSubstr("'descr'"), HasSubstr("unsupported dtype")))
        << descr;
  }
}

TEST(NpyTest, RejectsMalformedHeaders) {
  struct Bad {
    std::string dict;
    std::string expect;
  };
  const Bad cases[] = {
      {"['descr', '<f4']", "does not start with '{'"},
      {"{'descr': '<f4', 'fortran_order': False}", "no 'shape'"},
      {"{'fortran_order': False, 'shape': (1,)}", "no 'descr'"},
      {"{'descr': '<f4', 'shape': (1,)}", "no 'fortran_order'"},
      {Dict("<f4", "False", "(1,)") + "x", "unexpected text"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': "
       "(1,)}",
       "duplicate key 'descr'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}",
       "unknown header key 'extra'"},
      {Dict("<f4", "0", "(1,)"), "must be True or False"},
      {Dict("<f4", "False", "[1]"), "must be a tuple"},
      {Dict("<f4", "False", "(-1,)"), "non-negative integers"},
      {Dict("<f4", "False", "(1.5,)"), "expected ',' or ')'"},
      {Dict("<f4", "False", "(1,"), "'shape'"},
      {"{'descr': '<f4", "string"},
      {"{'de\\scr': '<f4'}", "unsupported character"},
      {"{descr: '<f4'}", "quoted string"},
      {"{'descr' '<f4'}", "expected ':'"},
  };
  for (const Bad& bad : cases) {
    std::string message = ParseError(MakeFile(bad.dict, 4)).message();
    EXPECT_THAT(message, AllOf(HasSubstr("x.npy"), HasSubstr(bad.expect)))
        << bad.dict;
  }
}

TEST(NpyTest, RejectsAbsurdShapes) {
  std::string many = "(";
  for (int i = 0; i < 33; ++i) many += "1, ";
  many += ")";
  EXPECT_THAT(
      ParseError(MakeFile(Dict("<f4", "False", many), 4)).message(),
      AllOf(HasSubstr("'shape'"), HasSubstr("more than 32 dimensions")));
  EXPECT_THAT(
      ParseError(
          MakeFile(Dict("<f4", "False", "(1099511627776, 1099511627776)"), 4))
          .message(),
      AllOf(HasSubstr("'shape'"), HasSubstr("exceeds 2^62 bytes")));
  EXPECT_THAT(
      ParseError(
          MakeFile(Dict("<f4", "False", "(99999999999999999999999,)"), 4))
          .message(),
      AllOf(HasSubstr("'shape'"), HasSubstr("larger than 2^62")));
  // A large but representable shape with no data: truncated, and nothing
  // of that size is allocated.
  EXPECT_THAT(
      ParseError(MakeFile(Dict("<f4", "False", "(1000000000000,)"), 4))
          .message(),
      AllOf(HasSubstr("data is truncated"), HasSubstr("4000000000000")));
}

TEST(NpyTest, RejectsTruncatedAndTrailingData) {
  EXPECT_THAT(
      ParseError(MakeFile(Dict("<f4", "False", "(2, 3)"), 23)).message(),
      AllOf(HasSubstr("x.npy"), HasSubstr("data is truncated"),
            HasSubstr("needs 24"), HasSubstr("has 23")));
  EXPECT_THAT(ParseError(MakeFile(Dict("<i4", "False", "(2,)"), 9)).message(),
              AllOf(HasSubstr("trailing bytes"), HasSubstr("has 9")));
}

TEST(NpyTest, SerializeRejectsWrongDataSize) {
  std::vector<std::byte> data(10);
  const std::uint64_t shape[] = {3};
  auto file = SerializeNpy(NpyDtype::kF32, shape, data);
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(file.status().message(), HasSubstr("needs 12"));
}

class NpyFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("npy_file_test_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::vector<std::string> Listing() const {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
      names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }
  std::filesystem::path dir_;
};

TEST_F(NpyFileTest, WriteThenReadLeavesNoTemporaries) {
  auto array = NpyArray::Create(NpyDtype::kF32, {4, 5});
  ASSERT_TRUE(array.ok());
  auto values = array->Values<float>();
  for (std::size_t i = 0; i < values.size(); ++i)
    values[i] = static_cast<float>(i) * 0.5F;
  ASSERT_TRUE(WriteNpyFile(dir_ / "a.npy", *array).ok());
  // Overwriting is atomic too.
  ASSERT_TRUE(WriteNpyFile(dir_ / "a.npy", *array).ok());
  EXPECT_EQ(Listing(), std::vector<std::string>{"a.npy"});
  auto read = ReadNpyFile(dir_ / "a.npy");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->shape(), array->shape());
  EXPECT_EQ(std::memcmp(read->data(), array->data(), array->num_bytes()), 0);
}

TEST_F(NpyFileTest, ReadErrorsNameThePath) {
  auto missing = ReadNpyFile(dir_ / "missing.npy");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(),
              AllOf(HasSubstr("missing.npy"), HasSubstr("cannot open")));
  auto directory = ReadNpyFile(dir_);
  ASSERT_FALSE(directory.ok());
  EXPECT_THAT(directory.status().message(), HasSubstr("not a regular file"));

  std::vector<std::byte> file = MakeFile(Dict("<f4", "False", "(8,)"), 31);
  {
    std::ofstream out(dir_ / "short.npy", std::ios::binary);
    out.write(reinterpret_cast<const char*>(file.data()),
              static_cast<std::streamsize>(file.size()));
  }
  auto truncated = ReadNpyFile(dir_ / "short.npy");
  ASSERT_FALSE(truncated.ok());
  EXPECT_THAT(truncated.status().message(),
              AllOf(HasSubstr("short.npy"), HasSubstr("data is truncated")));
  auto too_big = ReadNpyFile(dir_ / "short.npy", 16);
  ASSERT_FALSE(too_big.ok());
  EXPECT_THAT(too_big.status().message(), HasSubstr("exceeds the limit"));
}

TEST_F(NpyFileTest, WriteIntoMissingDirectoryFailsCleanly) {
  auto array = NpyArray::Create(NpyDtype::kI32, {2});
  ASSERT_TRUE(array.ok());
  Status status = WriteNpyFile(dir_ / "no" / "such" / "a.npy", *array);
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("a.npy"));
  EXPECT_TRUE(Listing().empty());
}

}  // namespace
}  // namespace rpa::scheduler
