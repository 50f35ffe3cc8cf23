#pragma once
// Pipeline-overlap measurements: the same batch run with a serial schedule
// (fetch, wait, compute, write back, one block at a time) and with the
// pipelined one, on a simulated device and on the host.
//
// Batches (Llama-3-8B attention: Hq 32, Hkv 8, D 128, bf16 cache, shuffled
// pages of `page_size` tokens):
//   decode_64x2048   64 decode sequences, kv_len 2048
//   prefill_1x2048   one causal prefill chunk of 2048 tokens (kv_len 2048)
//
// Device rows: attention::RunOnDevice on the spec with each schedule; the
// figures are simulated (makespan, busy time of the DMA engines / HBM, the
// matrix and the vector unit, MBU and MFU against the spec's peaks).
//
// Host rows (decode only): a staged pipeline on a runtime::Executor with 2
// workers. Stages per sequence: "fetch" gathers its pages into one of two
// staging buffers (the host's DMA: memcpy), "compute" runs attention::Run on
// the staged copy (fused KV update + decode attention, one thread), "write
// back" copies the page holding the new token back into the cache. Serial:
// the three stages one after another on one thread; pipelined: fetch and
// write-back on one worker, compute on the other, double-buffered. Busy
// times are wall-clock; MBU and MFU are against the host roofline measured
// in the same process. On the host the staging copy is extra work the
// kernels do not need (they read pages in place): the host rows measure the
// executor's overlap of copy and compute, not a faster attention. The
// prefill batch has no host row: its chunk's keys are its own new tokens, so
// a staged copy would have to wait for its own write-back.
//
// overlap_efficiency = busy time of the bottleneck unit / makespan.
//
// Thread-safety: one run at a time (it measures the machine).
#include <string>
#include <vector>

#include "rpa/runtime/status.h"

namespace rpa::scheduler {

struct PipelineBenchOptions {
  std::string device = "tpu7x";  // preset or JSON file; "" = no device rows
  bool host = true;              // the host rows
  // 128: the RPA paper's page size, and the tuned best on the device (fewer
  // DMA descriptors per byte than 16).
  std::uint32_t page_size = 128;
  int host_repetitions = 3;  // best of
  std::string filter;        // substring of the row name; "" = all
  // Non-empty: each device row's timeline (Chrome trace-event JSON, opens in
  // Perfetto) is written to <trace_dir>/<name>_<target>_<schedule>.json.
  std::string trace_dir;
};

struct PipelineStageBusy {
  std::string stage;  // "hbm", "dma engine 0", "matrix", "vector", "fetch", ...
  double busy_us = 0;
};

struct PipelineRow {
  std::string name;      // e.g. "decode_64x2048"
  std::string target;    // "tpu7x", "host"
  std::string schedule;  // "serial" | "pipelined"
  double makespan_us = 0;
  double overlap_efficiency = 0;
  double mbu = 0;
  double mfu = 0;
  std::vector<PipelineStageBusy> busy;
  double host_wall_s = 0;  // wall time of the run (simulation or real)
  std::string trace_file;  // written when PipelineBenchOptions::trace_dir
};

StatusOr<std::vector<PipelineRow>> RunPipelineBench(
    const PipelineBenchOptions& options);

}  // namespace rpa::scheduler
