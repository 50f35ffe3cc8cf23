#include "rpa/scheduler/pipeline_bench.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "rpa/attention/device_run.h"
#include "rpa/attention/plan.h"
#include "rpa/device/device_spec.h"
#include "rpa/runtime/executor.h"
#include "rpa/runtime/semaphore.h"
#include "rpa/scheduler/attention_workloads.h"
#include "rpa/scheduler/npy.h"
#include "rpa/scheduler/roofline.h"

namespace rpa::scheduler {
namespace {

using SteadyClock = std::chrono::steady_clock;

double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

struct BatchDef {
  const char* name;
  bool host_row;
  AttentionWorkloadSpec spec;
};

std::vector<BatchDef> Batches(std::uint32_t page_size) {
  AttentionWorkloadSpec decode;
  decode.storage = memory::StorageType::kBf16;
  decode.page_size_tokens = page_size;
  decode.sequences.assign(64, {1, 2048});
  decode.distribution = {64, 64, 64};
  AttentionWorkloadSpec prefill = decode;
  prefill.sequences.assign(1, {2048, 2048});
  prefill.distribution = {0, 1, 1};
  prefill.chunk_prefill_size = 2048;
  return {{"decode_64x2048", true, decode}, {"prefill_1x2048", false, prefill}};
}

bool Selected(const PipelineBenchOptions& options, const std::string& name) {
  return options.filter.empty() ||
         name.find(options.filter) != std::string::npos;
}

StatusOr<PipelineRow> DeviceRow(const char* name, AttentionWorkload& w,
                                const device::DeviceSpec& spec,
                                attention::DeviceSchedule schedule,
                                const std::string& trace_dir) {
  RPA_ASSIGN_OR_RETURN(auto plan, attention::AttentionPlan::Create(
                                      w.metadata(), w.cache(), w.params()));
  attention::DeviceRunOptions options;
  options.schedule = schedule;
  options.record_trace = !trace_dir.empty();
  const auto start = SteadyClock::now();
  RPA_ASSIGN_OR_RETURN(
      attention::DeviceRunReport report,
      attention::RunOnDevice(plan, w.tensors(), spec, options));
  PipelineRow row;
  row.host_wall_s = SecondsSince(start);
  row.name = name;
  row.target = spec.name;
  row.schedule = std::string(attention::DeviceScheduleName(schedule));
  row.makespan_us = report.simulated_us;
  row.overlap_efficiency = report.overlap_efficiency;
  row.mbu = report.mbu;
  row.mfu = report.mfu;
  row.busy.push_back({"hbm", report.hbm_busy_us});
  for (std::size_t e = 0; e < report.dma_engine_busy_us.size(); ++e) {
    row.busy.push_back(
        {"dma engine " + std::to_string(e), report.dma_engine_busy_us[e]});
  }
  row.busy.push_back({"matrix", report.matrix_busy_us});
  row.busy.push_back({"vector", report.vector_busy_us});
  if (!trace_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(trace_dir, ec);
    const std::filesystem::path file =
        std::filesystem::path(trace_dir) /
        (row.name + "_" + row.target + "_" + row.schedule + ".json");
    RPA_RETURN_IF_ERROR(
        WriteFileAtomically(file, std::as_bytes(std::span(report.trace_json))));
    row.trace_file = file.string();
  }
  return row;
}

// The host's staged decode pipeline (see pipeline_bench.h).
class HostDecodePipeline {
 public:
  static StatusOr<std::unique_ptr<HostDecodePipeline>> Create(
      AttentionWorkload* w) {
    std::unique_ptr<HostDecodePipeline> p(new HostDecodePipeline());
    p->w_ = w;
    const memory::KvLayerView cache = w->cache();
    const attention::BatchMetadata meta = w->metadata();
    const auto num_seqs = meta.kv_lens.size();
    const std::size_t pps = meta.page_indices.size() / num_seqs;
    p->pages_per_seq_ = pps;
    for (auto& slot : p->slots_) {
      slot.resize(pps * cache.page_bytes);
    }
    p->identity_pages_.resize(pps);
    for (std::size_t i = 0; i < pps; ++i) {
      p->identity_pages_[i] = static_cast<std::int32_t>(i);
    }
    p->seqs_.resize(num_seqs);
    for (std::size_t s = 0; s < num_seqs; ++s) {
      Seq& seq = p->seqs_[s];
      seq.kv_len = meta.kv_lens[s];
      seq.pages.assign(
          meta.page_indices.begin() + static_cast<long>(s * pps),
          meta.page_indices.begin() + static_cast<long>((s + 1) * pps));
      seq.kv_lens = {seq.kv_len};
      const attention::BatchMetadata one{
          .shape = {.num_tokens = 1,
                    .num_q_heads = meta.shape.num_q_heads,
                    .num_kv_heads = meta.shape.num_kv_heads,
                    .head_dim = meta.shape.head_dim},
          .kv_lens = seq.kv_lens,
          .page_indices = p->identity_pages_,
          .cu_q_lens = kOneToken,
          .distribution = kOneDecode};
      RPA_ASSIGN_OR_RETURN(auto plan, attention::AttentionPlan::Create(
                                          one, p->SlotView(0), w->params()));
      seq.plan = std::make_unique<attention::AttentionPlan>(std::move(plan));
    }
    return p;
  }

  struct Timing {
    double makespan_s = 0;
    double fetch_s = 0;
    double compute_s = 0;
    double write_back_s = 0;
  };

  StatusOr<Timing> RunSerial() {
    Timing t;
    const auto start = SteadyClock::now();
    for (std::size_t s = 0; s < seqs_.size(); ++s) {
      auto t0 = SteadyClock::now();
      Fetch(s, 0);
      t.fetch_s += SecondsSince(t0);
      t0 = SteadyClock::now();
      RPA_RETURN_IF_ERROR(Compute(s, 0));
      t.compute_s += SecondsSince(t0);
      t0 = SteadyClock::now();
      WriteBack(s, 0);
      t.write_back_s += SecondsSince(t0);
    }
    t.makespan_s = SecondsSince(start);
    return t;
  }

  StatusOr<Timing> RunPipelined(runtime::Executor* executor) {
    Timing t;
    const std::size_t n = seqs_.size();
    runtime::Semaphore free_slots(2);
    runtime::Semaphore fetched(0);
    runtime::Semaphore computed(0);
    Status compute_status;
    const auto start = SteadyClock::now();
    // The copy engine: fetch s while s - 1 computes; write back s - 1 once it
    // is computed (it frees that slot for s + 1).
    auto copier = executor->Spawn([&] {
      for (std::size_t s = 0; s <= n; ++s) {
        if (s < n) {
          free_slots.Acquire();
          const auto t0 = SteadyClock::now();
          Fetch(s, s % 2);
          t.fetch_s += SecondsSince(t0);
          fetched.Release();
        }
        if (s > 0) {
          computed.Acquire();
          const auto t0 = SteadyClock::now();
          WriteBack(s - 1, (s - 1) % 2);
          t.write_back_s += SecondsSince(t0);
          free_slots.Release();
        }
      }
    });
    auto computer = executor->Spawn([&] {
      for (std::size_t s = 0; s < n; ++s) {
        fetched.Acquire();
        const auto t0 = SteadyClock::now();
        Status status = Compute(s, s % 2);
        t.compute_s += SecondsSince(t0);
        if (!status.ok() && compute_status.ok()) compute_status = status;
        computed.Release();
      }
    });
    RPA_RETURN_IF_ERROR(computer.Join());
    RPA_RETURN_IF_ERROR(copier.Join());
    t.makespan_s = SecondsSince(start);
    RPA_RETURN_IF_ERROR(compute_status);
    return t;
  }

 private:
  static constexpr std::int32_t kOneToken[2] = {0, 1};
  static constexpr std::int32_t kOneDecode[3] = {1, 1, 1};

  struct Seq {
    std::int32_t kv_len = 0;
    std::vector<std::int32_t> pages;
    std::vector<std::int32_t> kv_lens;
    std::unique_ptr<attention::AttentionPlan> plan;
  };

  HostDecodePipeline() = default;

  memory::KvLayerView SlotView(std::size_t slot) {
    memory::KvLayerView view = w_->cache();
    view.data = slots_[slot].data();
    view.num_pages = static_cast<std::uint32_t>(pages_per_seq_);
    return view;
  }

  // Copies the cached tokens (all but the new last one) page by page.
  void Fetch(std::size_t s, std::size_t slot) {
    const memory::KvLayerView cache = w_->cache();
    const Seq& seq = seqs_[s];
    const std::size_t cached = static_cast<std::size_t>(seq.kv_len) - 1;
    for (std::size_t p = 0; p * cache.page_size_tokens < cached; ++p) {
      const std::size_t tokens = std::min<std::size_t>(
          cache.page_size_tokens, cached - p * cache.page_size_tokens);
      std::memcpy(slots_[slot].data() + p * cache.page_bytes,
                  cache.data +
                      static_cast<std::size_t>(seq.pages[p]) * cache.page_bytes,
                  tokens * cache.token_bytes);
    }
  }

  Status Compute(std::size_t s, std::size_t slot) {
    const attention::BatchTensors all = w_->tensors();
    const attention::BatchMetadata meta = w_->metadata();
    const std::size_t hq = meta.shape.num_q_heads;
    const std::size_t hkv = meta.shape.num_kv_heads;
    const std::size_t d = meta.shape.head_dim;
    const attention::BatchTensors one{
        .q = all.q.subspan(s * hq * d, hq * d),
        .k = all.k.subspan(s * hkv * d, hkv * d),
        .v = all.v.subspan(s * hkv * d, hkv * d),
        .cache = SlotView(slot),
        .out = all.out.subspan(s * hq * d, hq * d)};
    return attention::Run(*seqs_[s].plan, one);
  }

  // The new token's slot goes back to its cache page.
  void WriteBack(std::size_t s, std::size_t slot) {
    const memory::KvLayerView cache = w_->cache();
    const Seq& seq = seqs_[s];
    const std::size_t pos = static_cast<std::size_t>(seq.kv_len) - 1;
    const std::size_t page = pos / cache.page_size_tokens;
    const std::size_t in_page = pos % cache.page_size_tokens;
    std::memcpy(
        cache.data +
            static_cast<std::size_t>(seq.pages[page]) * cache.page_bytes +
            in_page * cache.token_bytes,
        slots_[slot].data() + page * cache.page_bytes +
            in_page * cache.token_bytes,
        cache.token_bytes);
  }

  AttentionWorkload* w_ = nullptr;
  std::size_t pages_per_seq_ = 0;
  std::vector<std::byte> slots_[2];
  std::vector<std::int32_t> identity_pages_;
  std::vector<Seq> seqs_;
};

PipelineRow HostRow(const char* name, const char* schedule,
                    const HostDecodePipeline::Timing& t,
                    const attention::BatchCost& cost,
                    const HostRoofline& roofline) {
  PipelineRow row;
  row.name = name;
  row.target = "host";
  row.schedule = schedule;
  row.makespan_us = t.makespan_s * 1e6;
  const double copy_s = t.fetch_s + t.write_back_s;
  const bool serial = std::string_view(schedule) == "serial";
  // Serial: one thread does everything, so its busy time is the sum.
  const double bottleneck =
      serial ? copy_s + t.compute_s : std::max(copy_s, t.compute_s);
  row.overlap_efficiency = bottleneck / t.makespan_s;
  row.mbu = static_cast<double>(cost.bytes()) / t.makespan_s /
            roofline.read_bandwidth_bytes_per_s;
  row.mfu = cost.flops / t.makespan_s / roofline.fma_peak_flops_per_s;
  row.busy = {{"fetch", t.fetch_s * 1e6},
              {"compute", t.compute_s * 1e6},
              {"write back", t.write_back_s * 1e6}};
  row.host_wall_s = t.makespan_s;
  return row;
}

}  // namespace

StatusOr<std::vector<PipelineRow>> RunPipelineBench(
    const PipelineBenchOptions& options) {
  if (options.page_size == 0) {
    return InvalidArgumentError("page_size = 0 must be >= 1");
  }
  if (options.host_repetitions < 1) {
    return InvalidArgumentError(
        "host_repetitions = " + std::to_string(options.host_repetitions) +
        " must be >= 1");
  }
  std::optional<device::DeviceSpec> spec;
  if (!options.device.empty()) {
    RPA_ASSIGN_OR_RETURN(spec, device::ResolveDeviceSpec(options.device));
  }
  std::vector<PipelineRow> rows;
  std::optional<HostRoofline> roofline;
  for (const BatchDef& batch : Batches(options.page_size)) {
    if (!Selected(options, batch.name)) continue;
    RPA_ASSIGN_OR_RETURN(auto w,
                         AttentionWorkload::Create(batch.name, batch.spec));
    if (spec) {
      for (auto schedule : {attention::DeviceSchedule::kSerial,
                            attention::DeviceSchedule::kPipelined}) {
        RPA_ASSIGN_OR_RETURN(
            PipelineRow row,
            DeviceRow(batch.name, *w, *spec, schedule, options.trace_dir));
        rows.push_back(std::move(row));
      }
    }
    if (!options.host || !batch.host_row) continue;
    if (!roofline) {
      RPA_ASSIGN_OR_RETURN(roofline, MeasureHostRoofline({.threads = 2}));
    }
    RPA_ASSIGN_OR_RETURN(
        auto plan, attention::AttentionPlan::Create(w->metadata(), w->cache(),
                                                    w->params()));
    RPA_ASSIGN_OR_RETURN(auto pipeline, HostDecodePipeline::Create(w.get()));
    RPA_ASSIGN_OR_RETURN(auto executor,
                         runtime::Executor::Create({.num_workers = 2}));
    std::optional<HostDecodePipeline::Timing> best_serial;
    std::optional<HostDecodePipeline::Timing> best_pipelined;
    for (int rep = 0; rep < options.host_repetitions; ++rep) {
      RPA_ASSIGN_OR_RETURN(auto serial, pipeline->RunSerial());
      if (!best_serial || serial.makespan_s < best_serial->makespan_s) {
        best_serial = serial;
      }
      RPA_ASSIGN_OR_RETURN(auto pipelined,
                           pipeline->RunPipelined(executor.get()));
      if (!best_pipelined ||
          pipelined.makespan_s < best_pipelined->makespan_s) {
        best_pipelined = pipelined;
      }
    }
    RPA_RETURN_IF_ERROR(executor->Shutdown());
    rows.push_back(
        HostRow(batch.name, "serial", *best_serial, plan.cost(), *roofline));
    rows.push_back(HostRow(batch.name, "pipelined", *best_pipelined,
                           plan.cost(), *roofline));
  }
  return rows;
}

}  // namespace rpa::scheduler
