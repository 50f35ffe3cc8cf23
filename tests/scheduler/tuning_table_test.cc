#include "rpa/scheduler/tuning_table.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace rpa::scheduler {
namespace {

using attention::KernelKind;

constexpr const char* kValid = R"({
  "format": "rpa-tuning-table", "version": 1, "target": "tpu7x",
  "generated_by": "test",
  "entries": [
    {"kernel": "decode", "storage": "bf16", "head_dim": 128, "q_per_kv": 4,
     "page_size": 16, "max_q_len": 1, "max_kv_len": 2048,
     "q_tokens_per_block": 1, "kv_tokens_per_block": 1024,
     "compute_kv_tokens": 512, "time_us": 10.5},
    {"kernel": "decode", "storage": "bf16", "head_dim": 128, "q_per_kv": 4,
     "page_size": 16, "max_q_len": 1, "max_kv_len": 8192,
     "q_tokens_per_block": 1, "kv_tokens_per_block": 2048,
     "compute_kv_tokens": 512, "time_us": 40},
    {"kernel": "prefill", "storage": "bf16", "head_dim": 128, "q_per_kv": 4,
     "page_size": 16, "max_q_len": 2048, "max_kv_len": 2048,
     "q_tokens_per_block": 256, "kv_tokens_per_block": 512,
     "compute_kv_tokens": 256}
  ]})";

TuningKey DecodeKey(std::uint32_t kv_len) {
  return {.storage = memory::StorageType::kBf16,
          .head_dim = 128,
          .q_per_kv = 4,
          .page_size = 16,
          .max_q_len = 1,
          .max_kv_len = kv_len};
}

TEST(TuningTableTest, ParsesAndRoundTrips) {
  auto table = TuningTable::Parse(kValid);
  ASSERT_TRUE(table.ok()) << table.status().ToString();
  EXPECT_EQ(table->target(), "tpu7x");
  EXPECT_EQ(table->generated_by(), "test");
  ASSERT_EQ(table->entries().size(), 3U);
  EXPECT_DOUBLE_EQ(table->entries()[0].time_us, 10.5);
  auto again = TuningTable::Parse(table->ToJson());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->ToJson(), table->ToJson());
}

TEST(TuningTableTest, FindPicksTheSmallestCoveringEntryThenTheLargest) {
  auto table = TuningTable::Parse(kValid);
  ASSERT_TRUE(table.ok());
  const TuningEntry* e = table->Find(KernelKind::kDecode, DecodeKey(100));
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->kv_tokens_per_block, 1024U);
  e = table->Find(KernelKind::kDecode, DecodeKey(4096));
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->kv_tokens_per_block, 2048U);
  // Longer than every entry: the nearest (largest) tuned shape.
  e = table->Find(KernelKind::kDecode, DecodeKey(100000));
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->key.max_kv_len, 8192U);
  // No exact match on the geometry: nothing.
  TuningKey other = DecodeKey(100);
  other.head_dim = 64;
  EXPECT_EQ(table->Find(KernelKind::kDecode, other), nullptr);
  EXPECT_EQ(table->Find(KernelKind::kMixed, DecodeKey(100)), nullptr);
}

struct BadCase {
  const char* name;
  std::string text;
  const char* expected;  // substring of the message
};

std::string WithEntry(const std::string& entry) {
  return std::string(R"({"format": "rpa-tuning-table", "version": 1,
    "target": "host", "entries": [)") +
         entry + "]}";
}

const char* kGoodEntry =
    R"({"kernel": "prefill", "storage": "f16", "head_dim": 64, "q_per_kv": 1,
        "page_size": 8, "max_q_len": 64, "max_kv_len": 64,
        "q_tokens_per_block": 32, "kv_tokens_per_block": 64,
        "compute_kv_tokens": 0})";

TEST(TuningTableTest, CorruptInputIsAnErrorNamingTheProblem) {
  std::string good = kGoodEntry;
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    s.replace(s.find(from), from.size(), to);
    return WithEntry(s);
  };
  const BadCase cases[] = {
      {"not json", "{\"format\": ", "not valid JSON"},
      {"array", "[]", "must be an object"},
      {"format",
       R"({"format": "x", "version": 1, "target": "h", "entries": []})",
       "format"},
      {"version", R"({"format": "rpa-tuning-table", "version": 2,
         "target": "h", "entries": []})",
       "version"},
      {"unknown top key", R"({"format": "rpa-tuning-table", "version": 1,
         "target": "h", "entries": [], "extra": 1})",
       "unknown key \"extra\""},
      {"entries not array", R"({"format": "rpa-tuning-table", "version": 1,
         "target": "h", "entries": {}})",
       "entries"},
      {"kernel", replace("\"prefill\"", "\"fast\""),
       "entries[0]: unknown kernel"},
      {"storage", replace("\"f16\"", "\"fp8\""), "entries[0]: unknown storage"},
      {"zero head_dim", replace("\"head_dim\": 64", "\"head_dim\": 0"),
       "\"head_dim\""},
      {"negative", replace("\"page_size\": 8", "\"page_size\": -8"),
       "negative"},
      {"string number", replace("\"max_q_len\": 64", "\"max_q_len\": \"64\""),
       "must be an integer"},
      {"missing key", replace("\"max_kv_len\": 64,", ""),
       "missing \"max_kv_len\""},
      {"unknown entry key", replace("\"q_per_kv\"", "\"q_per_k\""),
       "unknown key \"q_per_k\""},
      {"decode with q_len",
       WithEntry(std::string(kGoodEntry)
                     .replace(std::string(kGoodEntry).find("\"prefill\""), 9,
                              "\"decode\"")),
       "max_q_len 1"},
  };
  for (const BadCase& c : cases) {
    auto table = TuningTable::Parse(c.text);
    ASSERT_FALSE(table.ok()) << c.name;
    EXPECT_EQ(table.status().code(), StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(table.status().message().find(c.expected), std::string::npos)
        << c.name << ": " << table.status().message();
  }
}

TEST(TuningTableTest, SaveAndLoadAFile) {
  auto table = TuningTable::Parse(kValid);
  ASSERT_TRUE(table.ok());
  const auto dir = std::filesystem::temp_directory_path() /
                   ("rpa_tuning_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(table->Save(dir / "t.json").ok());
  auto loaded = TuningTable::Load(dir / "t.json");
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->ToJson(), table->ToJson());

  EXPECT_EQ(TuningTable::Load(dir / "missing.json").status().code(),
            StatusCode::kNotFound);
  { std::ofstream(dir / "corrupt.json") << "{\"format\": \"rpa-tuning-t"; }
  auto corrupt = TuningTable::Load(dir / "corrupt.json");
  ASSERT_FALSE(corrupt.ok());
  EXPECT_EQ(corrupt.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(corrupt.status().message().find("corrupt.json"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(TuningTableTest, ShippedTablesParseAndNameTheirTarget) {
  for (const char* target : {"host", "v5e", "v6e", "tpu7x"}) {
    TuningTable table = TuningTable::Shipped(target);  // RPA_CHECKs validity
    EXPECT_EQ(table.target(), target);
    // Each shipped table is the unedited output of a full `rpa tune`.
    EXPECT_FALSE(table.entries().empty()) << target;
    EXPECT_EQ(table.generated_by().rfind(
                  std::string("rpa tune --target ") + target, 0),
              0U)
        << table.generated_by();
    EXPECT_EQ(table.generated_by().find("--quick"), std::string::npos);
    for (const attention::KernelKind kernel :
         {attention::KernelKind::kDecode, attention::KernelKind::kPrefill,
          attention::KernelKind::kMixed}) {
      const TuningKey key{.storage = memory::StorageType::kBf16,
                          .head_dim = 128,
                          .q_per_kv = 4,
                          .page_size = 16,
                          .max_q_len = 1,
                          .max_kv_len = 1024};
      EXPECT_NE(table.Find(kernel, key), nullptr)
          << target << " " << attention::KernelKindName(kernel);
    }
  }
  EXPECT_TRUE(TuningTable::Shipped("no-such-target").entries().empty());
}

}  // namespace
}  // namespace rpa::scheduler
