#include "rpa/scheduler/roofline.h"

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "roofline_kernels.h"

#include "rpa/runtime/int_math.h"

namespace rpa::scheduler {
namespace internal {

std::uint64_t ReadSumPortable(const std::uint64_t* data, std::size_t count) {
  // Integer adds in four chains: the compiler vectorises them with SSE2.
  std::uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  for (std::size_t i = 0; i < count; i += 4) {
    a0 += data[i];
    a1 += data[i + 1];
    a2 += data[i + 2];
    a3 += data[i + 3];
  }
  return a0 + a1 + a2 + a3;
}

float FmaChainsPortable(std::uint64_t iterations, float seed) {
  float c[12];
  for (int i = 0; i < 12; ++i) c[i] = seed + 0.1F * static_cast<float>(i);
  for (std::uint64_t it = 0; it < iterations; ++it) {
    for (float& x : c) x = x * 0.999999F + 1e-7F;
  }
  float total = 0;
  for (float x : c) total += x;
  return total;
}

double FmaChainsFlops(std::uint64_t iterations, int lanes) {
  return static_cast<double>(iterations) * 12.0 * lanes * 2.0;
}

}  // namespace internal

namespace {

using Clock = std::chrono::steady_clock;

struct AlignedFree {
  void operator()(std::uint64_t* p) const { std::free(p); }
};

Status CheckThreads(int threads) {
  if (threads < 1 || threads > 1024) {
    return InvalidArgumentError("threads must be in [1, 1024], got " +
                                std::to_string(threads));
  }
  return OkStatus();
}

Status CheckBufferBytes(std::size_t buffer_bytes) {
  if (buffer_bytes < (std::size_t{64} << 10)) {
    return InvalidArgumentError("buffer_bytes must be at least 65536, got " +
                                std::to_string(buffer_bytes));
  }
  return OkStatus();
}

// fma_runs and fma_iterations.
Status CheckFmaRuns(const RooflineOptions& options) {
  if (options.fma_runs < 1) {
    return InvalidArgumentError("fma_runs must be >= 1, got " +
                                std::to_string(options.fma_runs));
  }
  if (options.fma_iterations < 1) {
    return InvalidArgumentError("fma_iterations must be >= 1, got 0");
  }
  return OkStatus();
}

// bandwidth_passes, fma_runs and fma_iterations.
Status CheckPassesAndRuns(const RooflineOptions& options) {
  if (options.bandwidth_passes < 1) {
    return InvalidArgumentError("bandwidth_passes must be >= 1, got " +
                                std::to_string(options.bandwidth_passes));
  }
  return CheckFmaRuns(options);
}

// Runs body(thread_index) on `threads` threads that start together (a
// barrier) and returns the span from the earliest start to the latest end,
// in seconds.
class GangTimer {
 public:
  explicit GangTimer(int threads) : threads_(threads) {}

  StatusOr<double> Run(const std::function<void(int)>& body) {
    std::vector<Clock::time_point> starts(static_cast<std::size_t>(threads_));
    std::vector<Clock::time_point> ends(static_cast<std::size_t>(threads_));
    std::barrier sync(threads_);
    auto work = [&](int index) {
      sync.arrive_and_wait();
      starts[static_cast<std::size_t>(index)] = Clock::now();
      body(index);
      ends[static_cast<std::size_t>(index)] = Clock::now();
    };
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(threads_ - 1));
    try {
      for (int t = 1; t < threads_; ++t) pool.emplace_back(work, t);
    } catch (const std::system_error& e) {
      // The barrier expects every thread: release it by running the missing
      // participants' arrivals, then report.
      for (std::size_t t = pool.size() + 1;
           t < static_cast<std::size_t>(threads_); ++t) {
        sync.arrive_and_drop();
      }
      sync.arrive_and_drop();
      for (auto& thread : pool) thread.join();
      return InternalError(std::string("roofline: cannot start a thread: ") +
                           e.what());
    }
    work(0);
    for (auto& thread : pool) thread.join();
    auto first = *std::min_element(starts.begin(), starts.end());
    auto last = *std::max_element(ends.begin(), ends.end());
    return std::chrono::duration<double>(last - first).count();
  }

 private:
  int threads_;
};

}  // namespace

struct ReadBandwidthProbe::Impl {
  int threads = 1;
  bool avx2 = false;
  std::size_t words_per_thread = 0;
  std::unique_ptr<std::uint64_t, AlignedFree> buffer;
  std::vector<std::uint64_t> sinks;  // a line per thread
};

ReadBandwidthProbe::ReadBandwidthProbe(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
ReadBandwidthProbe::ReadBandwidthProbe(ReadBandwidthProbe&&) noexcept = default;
ReadBandwidthProbe& ReadBandwidthProbe::operator=(
    ReadBandwidthProbe&&) noexcept = default;
ReadBandwidthProbe::~ReadBandwidthProbe() = default;

StatusOr<ReadBandwidthProbe> ReadBandwidthProbe::Create(
    int threads, std::size_t buffer_bytes) {
  RPA_RETURN_IF_ERROR(CheckThreads(threads));
  RPA_RETURN_IF_ERROR(CheckBufferBytes(buffer_bytes));
  auto impl = std::make_unique<Impl>();
  impl->threads = threads;
  impl->avx2 = internal::HaveAvx2Fma();
  // Each thread's slice is a whole number of 256-byte blocks (32 words, the
  // unrolled loop's step).
  constexpr std::size_t kBlockWords = 32;
  const std::size_t blocks = buffer_bytes / (kBlockWords * 8);
  const std::size_t blocks_per_thread =
      std::max<std::size_t>(1, blocks / static_cast<std::size_t>(threads));
  impl->words_per_thread = blocks_per_thread * kBlockWords;
  const std::size_t total_words =
      impl->words_per_thread * static_cast<std::size_t>(threads);
  // aligned_alloc wants a multiple of the alignment (ASan enforces it); the
  // slices use total_words of it.
  constexpr std::size_t kPageBytes = 4096;
  const std::size_t alloc_bytes =
      RoundUpToMultiple(total_words * 8, kPageBytes);
  impl->buffer.reset(
      static_cast<std::uint64_t*>(std::aligned_alloc(kPageBytes, alloc_bytes)));
  if (impl->buffer == nullptr) {
    return ResourceExhaustedError("roofline: cannot allocate a " +
                                  std::to_string(total_words * 8) +
                                  "-byte buffer");
  }
  impl->sinks.assign(static_cast<std::size_t>(threads) * 8, 0);
  // First touch by the thread that reads the slice later.
  GangTimer gang(threads);
  Impl& probe = *impl;
  RPA_ASSIGN_OR_RETURN(double touch_seconds, gang.Run([&probe](int t) {
    std::uint64_t* slice = probe.buffer.get() +
                           static_cast<std::size_t>(t) * probe.words_per_thread;
    for (std::size_t i = 0; i < probe.words_per_thread; ++i)
      slice[i] = i * 2654435761U;
  }));
  static_cast<void>(touch_seconds);
  return ReadBandwidthProbe(std::move(impl));
}

int ReadBandwidthProbe::threads() const { return impl_->threads; }

std::size_t ReadBandwidthProbe::buffer_bytes() const {
  return impl_->words_per_thread * static_cast<std::size_t>(impl_->threads) * 8;
}

StatusOr<double> ReadBandwidthProbe::MeasurePass() {
  Impl& probe = *impl_;
  GangTimer gang(probe.threads);
  RPA_ASSIGN_OR_RETURN(double seconds, gang.Run([&probe](int t) {
    const std::uint64_t* slice =
        probe.buffer.get() +
        static_cast<std::size_t>(t) * probe.words_per_thread;
    probe.sinks[static_cast<std::size_t>(t) * 8] +=
        probe.avx2 ? internal::ReadSumAvx2(slice, probe.words_per_thread)
                   : internal::ReadSumPortable(slice, probe.words_per_thread);
  }));
  // Keep the sums observable so that no loop is dropped.
  std::uint64_t guard = 0;
  for (std::uint64_t sink : probe.sinks) guard ^= sink;
  asm volatile("" : : "r"(guard));
  return static_cast<double>(buffer_bytes()) / seconds;
}

StatusOr<HostRoofline> MeasureHostRoofline(const RooflineOptions& options) {
  // Every option before any measuring.
  RPA_RETURN_IF_ERROR(CheckThreads(options.threads));
  RPA_RETURN_IF_ERROR(CheckBufferBytes(options.buffer_bytes));
  RPA_RETURN_IF_ERROR(CheckPassesAndRuns(options));
  RPA_ASSIGN_OR_RETURN(
      ReadBandwidthProbe probe,
      ReadBandwidthProbe::Create(options.threads, options.buffer_bytes));
  return MeasureHostRoofline(probe, options);
}

StatusOr<HostRoofline> MeasureHostRoofline(ReadBandwidthProbe& probe,
                                           const RooflineOptions& options) {
  RPA_RETURN_IF_ERROR(CheckPassesAndRuns(options));
  double best_bandwidth = 0;
  for (int pass = 0; pass < options.bandwidth_passes; ++pass) {
    RPA_ASSIGN_OR_RETURN(double bandwidth, probe.MeasurePass());
    best_bandwidth = std::max(best_bandwidth, bandwidth);
  }
  RooflineOptions fma_options = options;
  fma_options.threads = probe.threads();
  RPA_ASSIGN_OR_RETURN(double fma_peak, MeasureFmaPeak(fma_options));
  HostRoofline out;
  if (internal::HaveAvx512F()) {
    RPA_ASSIGN_OR_RETURN(out.avx512_fma_peak_flops_per_s,
                         MeasureAvx512FmaPeak(fma_options));
  }
  out.threads = probe.threads();
  out.used_avx2_fma = internal::HaveAvx2Fma();
  out.read_bandwidth_bytes_per_s = best_bandwidth;
  out.fma_peak_flops_per_s = fma_peak;
  return out;
}

namespace {

// FLOP/s of `threads` threads each running `chains(iterations, seed)`, best
// of options.fma_runs; `lanes` f32 lanes per FMA.
StatusOr<double> MeasureFmaChains(const RooflineOptions& options, int lanes,
                                  float (*chains)(std::uint64_t, float)) {
  RPA_RETURN_IF_ERROR(CheckThreads(options.threads));
  RPA_RETURN_IF_ERROR(CheckFmaRuns(options));
  const int threads = options.threads;
  GangTimer gang(threads);
  double best_fma = std::numeric_limits<double>::infinity();
  std::vector<float> fma_sinks(static_cast<std::size_t>(threads) * 16);
  for (int run = 0; run < options.fma_runs; ++run) {
    RPA_ASSIGN_OR_RETURN(double seconds, gang.Run([&](int t) {
      float seed = 0.5F + static_cast<float>(run) * 1e-3F;
      fma_sinks[static_cast<std::size_t>(t) * 16] +=
          chains(options.fma_iterations, seed);
    }));
    best_fma = std::min(best_fma, seconds);
  }
  // Keep the sums observable so that no loop is dropped.
  float fguard = 0;
  for (float f : fma_sinks) fguard += f;
  asm volatile("" : : "x"(fguard));
  return internal::FmaChainsFlops(options.fma_iterations, lanes) * threads /
         best_fma;
}

}  // namespace

StatusOr<double> MeasureFmaPeak(const RooflineOptions& options) {
  if (internal::HaveAvx2Fma()) {
    return MeasureFmaChains(options, 8, internal::FmaChainsAvx2);
  }
  return MeasureFmaChains(options, 1, internal::FmaChainsPortable);
}

StatusOr<double> MeasureAvx512FmaPeak(const RooflineOptions& options) {
  RPA_RETURN_IF_ERROR(CheckThreads(options.threads));
  RPA_RETURN_IF_ERROR(CheckFmaRuns(options));
  if (!internal::HaveAvx512F()) {
    return UnavailableError(
        "MeasureAvx512FmaPeak: this CPU (or this build) has no AVX-512F");
  }
  return MeasureFmaChains(options, 16, internal::FmaChainsAvx512);
}

double RooflineFloorSeconds(const attention::BatchCost& cost,
                            const HostRoofline& roofline) {
  double memory_seconds = 0;
  double compute_seconds = 0;
  if (roofline.read_bandwidth_bytes_per_s > 0) {
    memory_seconds =
        static_cast<double>(cost.bytes()) / roofline.read_bandwidth_bytes_per_s;
  }
  if (roofline.fma_peak_flops_per_s > 0) {
    compute_seconds = cost.flops / roofline.fma_peak_flops_per_s;
  }
  return std::max(memory_seconds, compute_seconds);
}

double RooflinePercent(const attention::BatchCost& cost,
                       const HostRoofline& roofline, double seconds) {
  if (seconds <= 0) return 0;
  return RooflineFloorSeconds(cost, roofline) / seconds * 100.0;
}

double GigabytesPerSecond(const attention::BatchCost& cost, double seconds) {
  return seconds > 0 ? static_cast<double>(cost.bytes()) / seconds / 1e9 : 0;
}

double GigaflopsPerSecond(const attention::BatchCost& cost, double seconds) {
  return seconds > 0 ? cost.flops / seconds / 1e9 : 0;
}

}  // namespace rpa::scheduler
