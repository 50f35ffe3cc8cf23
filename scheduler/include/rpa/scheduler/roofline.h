#pragma once

// The host CPU's roofline, measured in the calling process: memory read
// bandwidth and FMA peak with N threads, so that an attention kernel's time
// can be reported as a share of the best this machine could do for its
// bytes and FLOPs (SPEC section 7 counts, attention::BatchCost):
//
//   floor = max(bytes / read_bandwidth, flops / fma_peak)
//   roofline % = floor / measured time * 100
//
// Bandwidth: N threads, started together behind a barrier, each stream-read
// its slice of one buffer much larger than the last-level cache (written
// first, so its pages exist), summing it with vector integer adds (a few
// adds per 32-byte load: never the bottleneck). The figure is the whole
// buffer divided by the time from the first thread's start to the last
// thread's end, best of `bandwidth_passes` (10).
// FMA peak: N threads each run 12 independent chains of 8-wide f32 FMAs
// (AVX2 + FMA when the CPU has them, enough chains to cover FMA latency x
// FMA ports on current x86 cores), 2 FLOPs per lane; best of `fma_runs` (20).
// Without AVX2/FMA (or in an RPA_PORTABLE build) a scalar multiply-add loop
// stands in and HostRoofline::used_avx2_fma says so. That AVX2 figure is the
// floor's peak because the attention kernels are AVX2 code; on a CPU with
// AVX-512F the same loop with 16-lane (zmm) FMAs is measured too, for
// reference (avx512_fma_peak_flops_per_s: up to twice the AVX2 figure where
// the core has full-width zmm FMA units).
//
// Thread-safety: MeasureHostRoofline starts and joins its own threads; calls
// may overlap but then disturb each other's figures.
//
// Example:
//   RPA_ASSIGN_OR_RETURN(HostRoofline roof, MeasureHostRoofline({.threads =
//   2})); double pct = RooflinePercent(plan.cost(), roof, seconds);

#include <cstddef>
#include <cstdint>
#include <memory>

#include "rpa/attention/cost.h"
#include "rpa/runtime/status.h"

namespace rpa::scheduler {

struct HostRoofline {
  double read_bandwidth_bytes_per_s = 0;
  double fma_peak_flops_per_s = 0;  // the floor's peak (AVX2, see above)
  // The zmm FMA peak, measured only when the CPU and the build have
  // AVX-512F (0 otherwise); reported, not used by the floor.
  double avx512_fma_peak_flops_per_s = 0;
  int threads = 1;
  bool used_avx2_fma = false;
};

struct RooflineOptions {
  int threads = 1;  // [1, 1024]
  // The streamed buffer; >= 64 KiB. Default 512 MiB: 16x a 32 MiB L3.
  std::size_t buffer_bytes = std::size_t{512} << 20;
  // Many short runs rather than a few long ones: on a shared machine the
  // best of many is more likely to have caught every thread on its own core.
  int bandwidth_passes = 10;  // >= 1
  int fma_runs = 20;          // >= 1
  // FMA instructions per chain per run (each is 8 lanes x 2 FLOPs): 2^22
  // is about 8 ms at 3 GHz.
  std::uint64_t fma_iterations = std::uint64_t{1} << 22;
};

// InvalidArgument names a bad option; ResourceExhausted when the buffer
// cannot be allocated; Internal when a thread cannot be started.
StatusOr<HostRoofline> MeasureHostRoofline(const RooflineOptions& options = {});

// The FMA half of MeasureHostRoofline alone (options.threads, fma_runs and
// fma_iterations): FLOP/s, best of the runs. Errors as MeasureHostRoofline.
StatusOr<double> MeasureFmaPeak(const RooflineOptions& options = {});

// The same with 16-lane AVX-512 FMAs. Unavailable when the CPU or the build
// (RPA_PORTABLE, or a compiler without -mavx512f) has no AVX-512F; otherwise
// errors as MeasureFmaPeak.
StatusOr<double> MeasureAvx512FmaPeak(const RooflineOptions& options = {});

// The bandwidth half of MeasureHostRoofline as a reusable object: the buffer
// stays allocated (and touched) between passes, so that passes can be
// interleaved with the work they bound. On a shared machine the available
// bandwidth drifts by 10-30 % over seconds; a limit measured next to each
// repetition of a kernel sees the same machine the kernel saw (`rpa bench
// attention` does this).
//
// Thread-safety: one caller at a time; a pass starts and joins its own
// threads.
class ReadBandwidthProbe {
 public:
  // InvalidArgument for threads outside [1, 1024] or a buffer under 64 KiB;
  // ResourceExhausted when the buffer cannot be allocated; Internal when a
  // thread cannot be started.
  static StatusOr<ReadBandwidthProbe> Create(int threads,
                                             std::size_t buffer_bytes);
  ReadBandwidthProbe(ReadBandwidthProbe&&) noexcept;
  ReadBandwidthProbe& operator=(ReadBandwidthProbe&&) noexcept;
  ~ReadBandwidthProbe();

  // One pass over the whole buffer: bytes per second.
  StatusOr<double> MeasurePass();

  int threads() const;
  std::size_t buffer_bytes() const;  // rounded down to whole blocks

 private:
  struct Impl;
  explicit ReadBandwidthProbe(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// MeasureHostRoofline with the bandwidth passes taken on `probe` (its threads
// and buffer; options.threads and buffer_bytes are ignored), so that a caller
// that keeps probing afterwards allocates and touches the buffer only once.
// InvalidArgument for bad bandwidth_passes / fma_runs / fma_iterations.
StatusOr<HostRoofline> MeasureHostRoofline(ReadBandwidthProbe& probe,
                                           const RooflineOptions& options);

// max(bytes / bandwidth, flops / peak), in seconds; 0 for an empty cost.
double RooflineFloorSeconds(const attention::BatchCost& cost,
                            const HostRoofline& roofline);
// RooflineFloorSeconds / seconds * 100 (0 when seconds <= 0).
double RooflinePercent(const attention::BatchCost& cost,
                       const HostRoofline& roofline, double seconds);
// bytes / seconds / 1e9 and flops / seconds / 1e9 (0 when seconds <= 0).
double GigabytesPerSecond(const attention::BatchCost& cost, double seconds);
double GigaflopsPerSecond(const attention::BatchCost& cost, double seconds);

}  // namespace rpa::scheduler
