// The Chrome trace (valid JSON, named tracks, X events where the work was)
// and determinism (identical runs give identical statistics and traces).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "device/device_test_util.h"
#include <nlohmann/json.hpp>

namespace rpa::device {
namespace {

using Json = nlohmann::json;
using testing_util::At;
using testing_util::MustPreset;
using testing_util::Ns;
using testing_util::SimulatedDevice;
using testing_util::Transfer;

std::vector<Json> EventsOf(const Json& trace, const std::string& phase) {
  std::vector<Json> out;
  for (const Json& e : trace.at("traceEvents")) {
    if (e.at("ph") == phase) out.push_back(e);
  }
  return out;
}

TEST(TraceTest, TraceIsJsonWithNamedTracksAndEvents) {
  SimulatedDevice sim(MustPreset("tpu7x"));
  std::byte* hbm = sim.Hbm(3'700'000, 1);
  const VmemBuffer buf = sim.Vmem(3'700'000, "kv");
  DmaSemaphore sem;
  sim.RunFiber([&] {
    ASSERT_TRUE(Transfer(sim.device(), DmaDirection::kHbmToVmem, hbm, buf, 0,
                         3'700'000, &sem, -1, "kv \"page\"\n0")
                    .ok());
    sem.Wait(3'700'000);
    const VmemAccess read{
        .buffer = buf, .offset = 0, .bytes = 64, .write = false};
    (void)sim->MatMul(8, 256, 256, {&read, 1}, {}, "qk");
    (void)sim->Vector(4096, {&read, 1}, {}, "softmax");
  });
  const std::string text = sim->TraceJson();
  Json trace;
  ASSERT_NO_THROW(trace = Json::parse(text)) << text;

  std::map<int, std::string> names;
  for (const Json& m : EventsOf(trace, "M")) {
    if (m.at("name") == "thread_name") {
      names[m.at("tid").get<int>()] =
          m.at("args").at("name").get<std::string>();
    }
  }
  EXPECT_EQ(names, (std::map<int, std::string>{{0, "DMA engine 0"},
                                               {1, "DMA engine 1"},
                                               {2, "DMA engine 2"},
                                               {3, "DMA engine 3"},
                                               {4, "matrix unit"},
                                               {5, "vector unit"}}));
  const std::vector<Json> x = EventsOf(trace, "X");
  ASSERT_EQ(x.size(), 3u);
  const Json& dma = x[0];
  EXPECT_EQ(dma.at("name"), "kv \"page\"\n0");  // escaped and back
  EXPECT_EQ(dma.at("tid"), 0);
  EXPECT_EQ(dma.at("pid"), 0);
  EXPECT_DOUBLE_EQ(dma.at("ts").get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(dma.at("dur").get<double>(), 2.02);  // microseconds
  EXPECT_EQ(dma.at("args").at("bytes"), 3'700'000);
  EXPECT_DOUBLE_EQ(dma.at("args").at("stream_start_us").get<double>(), 1.02);
  const Json& mm = x[1];
  EXPECT_EQ(mm.at("name"), "qk");
  EXPECT_EQ(mm.at("tid"), 4);
  EXPECT_DOUBLE_EQ(mm.at("ts").get<double>(), 2.02);
  const Json& vec = x[2];
  EXPECT_EQ(vec.at("name"), "softmax");
  EXPECT_EQ(vec.at("tid"), 5);
}

TEST(TraceTest, AnyLabelBytesGiveValidJson) {
  SimulatedDevice sim(MustPreset("v5e"));
  (void)sim->Vector(1, {}, {}, "caf\xc3\xa9 \\ \t\x01 bad:\xff\xc3 end");
  const Json trace = Json::parse(sim->TraceJson());
  const std::vector<Json> x = EventsOf(trace, "X");
  ASSERT_EQ(x.size(), 1u);
  // Valid UTF-8 and escapes survive; invalid bytes become U+FFFD.
  EXPECT_EQ(x[0].at("name"),
            "caf\xc3\xa9 \\ \t\x01 bad:\xef\xbf\xbd\xef\xbf\xbd end");
  EXPECT_EQ(trace.at("otherData").at("device"), "v5e");
}

TEST(TraceTest, RecordingCanBeOffOrCapped) {
  DeviceOptions off;
  off.record_trace = false;
  SimulatedDevice quiet(MustPreset("v5e"), off);
  (void)quiet->Vector(1, {});
  EXPECT_TRUE(EventsOf(Json::parse(quiet->TraceJson()), "X").empty());

  DeviceOptions capped;
  capped.max_trace_events = 3;
  SimulatedDevice sim(MustPreset("v5e"), capped);
  for (int i = 0; i < 10; ++i) (void)sim->Vector(1, {});
  const Json trace = Json::parse(sim->TraceJson());
  EXPECT_EQ(EventsOf(trace, "X").size(), 3u);
  EXPECT_EQ(trace.at("otherData").at("events_dropped"), 7);
}

// A pseudo-random workload: DMAs in both directions on any or fixed
// engines, compute ops with accesses (some racing), waits.
struct RunResult {
  DeviceStats stats;
  std::string trace;
  std::vector<std::string> races;
  std::int64_t end_ns = 0;
};

RunResult RunWorkload(std::uint64_t seed) {
  SimulatedDevice sim(MustPreset("v6e"));
  constexpr std::uint64_t kHbmBytes = 1 << 20;
  std::byte* hbm = sim.Hbm(kHbmBytes, 3);
  const VmemBuffer bufs[3] = {sim.Vmem(65536, "a"), sim.Vmem(65536, "b"),
                              sim.Vmem(65536, "c")};
  DmaSemaphore sem;
  std::mt19937_64 rng(seed);
  std::uint64_t outstanding = 0;
  sim.RunFiber([&] {
    for (int i = 0; i < 300; ++i) {
      const VmemBuffer& buf = bufs[rng() % 3];
      const std::uint64_t offset = (rng() % 64) * 1024;
      const std::uint64_t bytes = 1 + rng() % (65536 - offset);
      switch (rng() % 5) {
        case 0:
        case 1: {
          const auto engine = static_cast<int>(rng() % 5) - 1;
          const auto direction = rng() % 2 == 0 ? DmaDirection::kHbmToVmem
                                                : DmaDirection::kVmemToHbm;
          std::byte* at = hbm + rng() % (kHbmBytes - bytes);
          ASSERT_TRUE(Transfer(sim.device(), direction, at, buf, offset, bytes,
                               &sem, engine)
                          .ok());
          outstanding += bytes;
          break;
        }
        case 2: {
          const VmemAccess access{.buffer = buf,
                                  .offset = offset,
                                  .bytes = bytes,
                                  .write = rng() % 2 == 0};
          const std::uint64_t m = rng() % 300;
          const std::uint64_t k = rng() % 600;
          const std::uint64_t n = rng() % 600;
          const auto not_before = At(static_cast<std::int64_t>(rng() % 5000));
          (void)sim->MatMul(m, k, n, {&access, 1}, not_before);
          break;
        }
        case 3: {
          const VmemAccess access{
              .buffer = buf, .offset = offset, .bytes = bytes, .write = true};
          (void)sim->Vector(static_cast<double>(rng() % 100000), {&access, 1});
          break;
        }
        default:
          sim->WaitUntil(sim->Now() + runtime::Duration(rng() % 3000));
      }
    }
    sem.Wait(outstanding);
  });
  RunResult out;
  out.stats = sim->Stats();
  out.trace = sim->TraceJson();
  for (const RaceReport& r : sim->races()) {
    out.races.push_back(r.buffer + " " + std::to_string(r.offset) + " " +
                        std::to_string(r.bytes) + " " + r.what + " " +
                        std::to_string(Ns(r.time)));
  }
  out.end_ns = Ns(sim.executor().Now());
  return out;
}

void ExpectSameStats(const DeviceStats& a, const DeviceStats& b) {
  EXPECT_EQ(a.now, b.now);
  EXPECT_EQ(a.bytes_hbm_to_vmem, b.bytes_hbm_to_vmem);
  EXPECT_EQ(a.bytes_vmem_to_hbm, b.bytes_vmem_to_hbm);
  EXPECT_EQ(a.dma_transfers, b.dma_transfers);
  EXPECT_EQ(a.dma_chunks, b.dma_chunks);
  EXPECT_EQ(a.hbm_busy, b.hbm_busy);
  EXPECT_EQ(a.dma_engine_busy, b.dma_engine_busy);
  EXPECT_EQ(a.matrix_busy, b.matrix_busy);
  EXPECT_EQ(a.vector_busy, b.vector_busy);
  EXPECT_EQ(a.matrix_flops_charged, b.matrix_flops_charged);
  EXPECT_EQ(a.matrix_flops_useful, b.matrix_flops_useful);
  EXPECT_EQ(a.vector_ops, b.vector_ops);
  EXPECT_EQ(a.vmem_high_water_bytes, b.vmem_high_water_bytes);
  EXPECT_EQ(a.races, b.races);
}

TEST(DeterminismTest, IdenticalRunsGiveIdenticalStatsTraceAndRaces) {
  const RunResult first = RunWorkload(7);
  const RunResult second = RunWorkload(7);
  ExpectSameStats(first.stats, second.stats);
  EXPECT_EQ(first.trace, second.trace);
  EXPECT_EQ(first.races, second.races);
  EXPECT_EQ(first.end_ns, second.end_ns);
  // The workload did something (and a different one differs).
  EXPECT_GT(first.stats.dma_transfers, 50u);
  EXPECT_GT(first.stats.races, 0u);
  EXPECT_NE(RunWorkload(8).trace, first.trace);
  EXPECT_TRUE(Json::accept(first.trace));
}

}  // namespace
}  // namespace rpa::device
