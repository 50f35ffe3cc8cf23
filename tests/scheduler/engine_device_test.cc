// The engine on a simulated TPU target (attention::RunOnDevice): the same
// tokens, KV and outputs as on the host, plus simulated time, MBU and MFU.

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "scheduler/engine_test_util.h"

#include "rpa/scheduler/engine.h"

namespace rpa::scheduler {
namespace {

using namespace ::rpa::scheduler::testing_util;  // NOLINT: test helpers

std::vector<TestRequest> SmallWorkload() {
  std::vector<TestRequest> requests;
  for (std::uint32_t i = 0; i < 4; ++i) {
    requests.push_back({.id = 20 + i,
                        .prompt = Prompt(6 + 5 * i, 70 + i),
                        .max_new = 4,
                        .add_at_step = static_cast<int>(i)});
  }
  return requests;
}

TEST(EngineDeviceTest, SimulatedTargetMatchesTheHost) {
  EngineOptions host = TinyOptions();
  host.model.storage = memory::StorageType::kBf16;
  EngineOptions device = host;
  device.target = "tpu7x";
  const RunResult a = Driver::Run(host, SmallWorkload());
  const RunResult b = Driver::Run(device, SmallWorkload());
  ASSERT_EQ(a.failure, "");
  ASSERT_EQ(b.failure, "");
  EXPECT_EQ(CompareTokensAndKv(a, b), "");
  EXPECT_EQ(CompareOutputs(a, b), "");
  EXPECT_FALSE(a.stats.simulated);
  EXPECT_EQ(a.stats.simulated_us, 0.0);
  EXPECT_TRUE(b.stats.simulated);
  EXPECT_GT(b.stats.simulated_us, 0.0);
  EXPECT_GT(b.stats.last_step_simulated_us, 0.0);
  EXPECT_LE(b.stats.last_step_simulated_us, b.stats.simulated_us);
  EXPECT_GT(b.stats.simulated_bytes, 0.0);
  EXPECT_GT(b.stats.simulated_flops, 0.0);
  EXPECT_GT(b.stats.mbu, 0.0);
  EXPECT_LE(b.stats.mbu, 1.0);
  EXPECT_GT(b.stats.mfu, 0.0);
  EXPECT_LE(b.stats.mfu, 1.0);
}

TEST(EngineDeviceTest, TargetFromADeviceJsonFile) {
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() /
      ("rpa_engine_device_test_" + std::to_string(::getpid()) + ".json");
  {
    std::ofstream file(path);
    file << R"({"base": "v5e", "num_dma_engines": 2})";
  }
  EngineOptions options = TinyOptions();
  options.target = path.string();
  const RunResult run = Driver::Run(options, SmallWorkload());
  std::filesystem::remove(path);
  ASSERT_EQ(run.failure, "");
  EXPECT_TRUE(run.stats.simulated);
  EXPECT_GT(run.stats.simulated_us, 0.0);
}

TEST(EngineDeviceTest, UnknownTargetIsNotFound) {
  EngineOptions options = TinyOptions();
  options.target = "tpu99";
  auto engine = Engine::Create(options);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), StatusCode::kNotFound);
  EXPECT_NE(engine.status().message().find("tpu7x"), std::string::npos)
      << engine.status();
}

}  // namespace
}  // namespace rpa::scheduler
