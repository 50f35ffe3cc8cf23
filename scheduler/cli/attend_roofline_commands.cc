// `rpa attend` and `rpa roofline`.

#include <cstdio>
#include <string>

#include "commands.h"
#include <nlohmann/json.hpp>

#include "rpa/scheduler/attention_case.h"
#include "rpa/scheduler/roofline.h"

namespace rpa::cli {

int RunAttend(const AttendArgs& args) {
  Status status = scheduler::AttendCaseDirectory(args.case_dir, args.out_dir,
                                                 {.threads = args.threads});
  if (!status.ok()) {
    std::fprintf(stderr, "rpa attend: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}

int RunRoofline(const RooflineArgs& args) {
  auto roofline = scheduler::MeasureHostRoofline(
      {.threads = args.threads,
       .buffer_bytes = static_cast<std::size_t>(args.buffer_mib) << 20});
  if (!roofline.ok()) {
    std::fprintf(stderr, "rpa roofline: %s\n",
                 roofline.status().ToString().c_str());
    return 1;
  }
  if (args.json) {
    nlohmann::json row = {
        {"threads", roofline->threads},
        {"read_bandwidth_gbps", roofline->read_bandwidth_bytes_per_s / 1e9},
        {"fma_peak_gflops", roofline->fma_peak_flops_per_s / 1e9},
        {"avx2_fma", roofline->used_avx2_fma},
        {"avx512_fma_peak_gflops",
         roofline->avx512_fma_peak_flops_per_s > 0
             ? nlohmann::json(roofline->avx512_fma_peak_flops_per_s / 1e9)
             : nlohmann::json(nullptr)},
    };
    std::printf("%s\n", row.dump().c_str());
  } else {
    std::printf(
        "threads %d: read bandwidth %.1f GB/s, FMA peak %.1f GFLOP/s (%s)\n",
        roofline->threads, roofline->read_bandwidth_bytes_per_s / 1e9,
        roofline->fma_peak_flops_per_s / 1e9,
        roofline->used_avx2_fma ? "AVX2 FMA" : "scalar, no AVX2/FMA");
    if (roofline->avx512_fma_peak_flops_per_s > 0) {
      std::printf(
          "  AVX-512 FMA peak %.1f GFLOP/s (the limit of work that runs only "
          "on the AVX-512 decode kernel; the flash kernels are AVX2 code)\n",
          roofline->avx512_fma_peak_flops_per_s / 1e9);
    }
  }
  return 0;
}

}  // namespace rpa::cli
