#include "rpa/scheduler/roofline.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

namespace rpa::scheduler {
namespace {

using ::testing::HasSubstr;

// Small and quick: the figures only have to be sane, not accurate.
RooflineOptions Quick(int threads) {
  return {.threads = threads,
          .buffer_bytes = std::size_t{8} << 20,
          .bandwidth_passes = 2,
          .fma_runs = 2,
          .fma_iterations = std::uint64_t{1} << 16};
}

TEST(RooflineTest, MeasuresPositiveFiniteFigures) {
  for (int threads : {1, 2}) {
    auto roof = MeasureHostRoofline(Quick(threads));
    ASSERT_TRUE(roof.ok()) << roof.status();
    EXPECT_EQ(roof->threads, threads);
    EXPECT_TRUE(std::isfinite(roof->read_bandwidth_bytes_per_s));
    EXPECT_TRUE(std::isfinite(roof->fma_peak_flops_per_s));
    // Anything slower than 100 MB/s or 100 MFLOP/s is a broken probe.
    EXPECT_GT(roof->read_bandwidth_bytes_per_s, 1e8);
    EXPECT_GT(roof->fma_peak_flops_per_s, 1e8);
  }
}

TEST(RooflineTest, RejectsBadOptions) {
  RooflineOptions options = Quick(1);
  options.threads = 0;
  auto roof = MeasureHostRoofline(options);
  ASSERT_FALSE(roof.ok());
  EXPECT_THAT(roof.status().message(), HasSubstr("threads"));
  options = Quick(1);
  options.buffer_bytes = 100;
  roof = MeasureHostRoofline(options);
  ASSERT_FALSE(roof.ok());
  EXPECT_THAT(roof.status().message(), HasSubstr("buffer_bytes"));
  options = Quick(1);
  options.bandwidth_passes = 0;
  EXPECT_FALSE(MeasureHostRoofline(options).ok());
  options = Quick(1);
  options.fma_runs = 0;
  EXPECT_FALSE(MeasureHostRoofline(options).ok());
}

TEST(RooflineTest, FmaPeakAloneMeasuresAndValidatesItsOptions) {
  auto peak = MeasureFmaPeak(Quick(2));
  ASSERT_TRUE(peak.ok()) << peak.status();
  EXPECT_TRUE(std::isfinite(*peak));
  EXPECT_GT(*peak, 1e8);
  RooflineOptions options = Quick(1);
  options.fma_runs = 0;
  auto bad = MeasureFmaPeak(options);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("fma_runs"));
  options = Quick(1);
  options.threads = 2000;
  bad = MeasureFmaPeak(options);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("2000"));
}

// The zmm peak is measured exactly when this CPU and build have AVX-512F,
// and is reported next to the AVX2 peak without replacing it.
TEST(RooflineTest, Avx512PeakIsMeasuredWhereTheCpuHasIt) {
  auto roof = MeasureHostRoofline(Quick(1));
  ASSERT_TRUE(roof.ok()) << roof.status();
  auto peak = MeasureAvx512FmaPeak(Quick(1));
  if (peak.ok()) {
    EXPECT_TRUE(std::isfinite(*peak));
    EXPECT_GT(*peak, 1e8);
    EXPECT_GT(roof->avx512_fma_peak_flops_per_s, 1e8);
  } else {
    EXPECT_EQ(peak.status().code(), StatusCode::kUnavailable);
    EXPECT_THAT(peak.status().message(), HasSubstr("AVX-512F"));
    EXPECT_EQ(roof->avx512_fma_peak_flops_per_s, 0);
  }
  // The floor keeps the AVX2 figure, measured as before.
  EXPECT_GT(roof->fma_peak_flops_per_s, 1e8);
  // Options are validated first, whatever the CPU.
  RooflineOptions options = Quick(1);
  options.fma_runs = 0;
  auto bad = MeasureAvx512FmaPeak(options);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("fma_runs"));
}

TEST(ReadBandwidthProbeTest, PassesReuseOneBuffer) {
  for (int threads : {1, 3}) {
    // 1 MiB + 100 bytes: each thread's slice is rounded down to 256 bytes.
    auto probe =
        ReadBandwidthProbe::Create(threads, (std::size_t{1} << 20) + 100);
    ASSERT_TRUE(probe.ok()) << probe.status();
    EXPECT_EQ(probe->threads(), threads);
    EXPECT_LE(probe->buffer_bytes(), (std::size_t{1} << 20) + 100);
    EXPECT_GT(probe->buffer_bytes(), (std::size_t{1} << 20) - 256 * 3);
    EXPECT_EQ(probe->buffer_bytes() % (256 * static_cast<std::size_t>(threads)),
              0U);
    for (int pass = 0; pass < 3; ++pass) {
      auto bandwidth = probe->MeasurePass();
      ASSERT_TRUE(bandwidth.ok()) << bandwidth.status();
      EXPECT_TRUE(std::isfinite(*bandwidth));
      EXPECT_GT(*bandwidth, 1e8);
    }
  }
}

TEST(ReadBandwidthProbeTest, RooflineOnAProbeUsesItsThreads) {
  auto probe = ReadBandwidthProbe::Create(2, std::size_t{8} << 20);
  ASSERT_TRUE(probe.ok()) << probe.status();
  auto roof = MeasureHostRoofline(*probe, Quick(1));  // threads: the probe's
  ASSERT_TRUE(roof.ok()) << roof.status();
  EXPECT_EQ(roof->threads, 2);
  EXPECT_GT(roof->read_bandwidth_bytes_per_s, 1e8);
  EXPECT_GT(roof->fma_peak_flops_per_s, 1e8);
  RooflineOptions options = Quick(1);
  options.bandwidth_passes = 0;
  roof = MeasureHostRoofline(*probe, options);
  ASSERT_FALSE(roof.ok());
  EXPECT_THAT(roof.status().message(), HasSubstr("bandwidth_passes"));
}

TEST(ReadBandwidthProbeTest, RejectsBadArguments) {
  auto probe = ReadBandwidthProbe::Create(0, std::size_t{1} << 20);
  ASSERT_FALSE(probe.ok());
  EXPECT_THAT(probe.status().message(), HasSubstr("threads"));
  probe = ReadBandwidthProbe::Create(1025, std::size_t{1} << 20);
  ASSERT_FALSE(probe.ok());
  EXPECT_THAT(probe.status().message(), HasSubstr("1025"));
  probe = ReadBandwidthProbe::Create(1, 1000);
  ASSERT_FALSE(probe.ok());
  EXPECT_THAT(probe.status().message(), HasSubstr("buffer_bytes"));
}

TEST(RooflineTest, FloorIsTheSlowerOfMemoryAndCompute) {
  HostRoofline roof{.read_bandwidth_bytes_per_s = 10e9,
                    .fma_peak_flops_per_s = 100e9};
  attention::BatchCost memory_bound;
  memory_bound.cached_kv_read_bytes = 1'000'000'000;  // 0.1 s
  memory_bound.flops = 1e9;                           // 0.01 s
  EXPECT_DOUBLE_EQ(RooflineFloorSeconds(memory_bound, roof), 0.1);
  EXPECT_DOUBLE_EQ(RooflinePercent(memory_bound, roof, 0.2), 50.0);
  EXPECT_DOUBLE_EQ(GigabytesPerSecond(memory_bound, 0.2), 5.0);
  EXPECT_DOUBLE_EQ(GigaflopsPerSecond(memory_bound, 0.2), 5.0);
  attention::BatchCost compute_bound;
  compute_bound.q_bytes = 1'000'000;  // 0.1 ms
  compute_bound.flops = 50e9;         // 0.5 s
  EXPECT_DOUBLE_EQ(RooflineFloorSeconds(compute_bound, roof), 0.5);
  EXPECT_DOUBLE_EQ(RooflinePercent(compute_bound, roof, 0.5), 100.0);
  EXPECT_EQ(RooflinePercent(compute_bound, roof, 0), 0.0);
  EXPECT_EQ(RooflineFloorSeconds(attention::BatchCost{}, roof), 0.0);
}

}  // namespace
}  // namespace rpa::scheduler
