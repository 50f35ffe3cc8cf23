// RunOnDevice: checks, the block choice and the walk (device_blocks.h), the
// device with its HBM ranges and VMEM buffers, the schedule's tasks
// (device_schedule.h) on a virtual-clock executor, and the report.

#include "rpa/attention/device_run.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <memory>
#include <span>
#include <string_view>
#include <utility>

#include "device_blocks.h"
#include "device_compute.h"
#include "device_schedule.h"
#include "plan_data.h"
#include "tensor_check.h"

#include "rpa/runtime/executor.h"

namespace rpa::attention {

using internal::DeviceBlockChoice;
using internal::DeviceBuffers;
using internal::DeviceWalk;
using internal::ValidatedBatch;
using internal::VmemLayout;

std::string_view DeviceScheduleName(DeviceSchedule schedule) {
  switch (schedule) {
    case DeviceSchedule::kSerial:
      return "serial";
    case DeviceSchedule::kPipelined:
      return "pipelined";
  }
  return "unknown";
}

namespace {

double Microseconds(runtime::Duration duration) {
  return std::chrono::duration<double, std::micro>(duration).count();
}

template <typename T>
std::span<std::byte> MutableBytes(std::span<T> values) {
  // HBM registration wants writable ranges; q / k / v are only ever the
  // source of HBM -> VMEM transfers.
  return {reinterpret_cast<std::byte*>(
              const_cast<std::remove_const_t<T>*>(values.data())),
          values.size_bytes()};
}

Status RegisterTensors(const ValidatedBatch& batch, const BatchTensors& tensors,
                       device::Device* device) {
  RPA_RETURN_IF_ERROR(device->RegisterHbm(
      {tensors.cache.data, static_cast<std::size_t>(batch.cache.num_pages) *
                               tensors.cache.page_bytes},
      "kv_cache"));
  const std::pair<std::span<std::byte>, std::string_view> ranges[] = {
      {MutableBytes(tensors.q), "q"},
      {MutableBytes(tensors.k), "k"},
      {MutableBytes(tensors.v), "v"},
      {MutableBytes(tensors.out), "out"}};
  for (const auto& [range, name] : ranges) {
    if (range.empty()) continue;
    RPA_RETURN_IF_ERROR(device->RegisterHbm(range, name));
  }
  return OkStatus();
}

// The buffers of `layout`. A refusal (the device may align or round) is
// the same InvalidArgument as a layout that does not fit.
StatusOr<DeviceBuffers> AllocateBuffers(const VmemLayout& layout,
                                        const DeviceBlockChoice& choice,
                                        const device::DeviceSpec& spec,
                                        device::Device* device) {
  DeviceBuffers buffers;
  Status failure;
  const auto allocate = [&](std::uint64_t bytes, std::string_view name,
                            device::VmemBuffer* buffer) {
    if (!failure.ok()) return;
    StatusOr<device::VmemBuffer> allocated =
        device->AllocateVmem(std::max<std::uint64_t>(bytes, 1), name);
    if (!allocated.ok()) {
      failure = InvalidArgumentError(fmt::format(
          "the device's VMEM is too small for the schedule: {} need {} bytes "
          "of VMEM, but device '{}' has vmem_bytes = {} ({} failed: {})",
          internal::DescribeBlocks(choice), layout.total_bytes(), spec.name,
          spec.vmem_bytes, name, allocated.status().message()));
      return;
    }
    *buffer = *allocated;
  };
  static constexpr std::string_view kSlotNames[2][6] = {
      {"q0", "out0", "kv0", "new_kv0", "scores0", "pv0"},
      {"q1", "out1", "kv1", "new_kv1", "scores1", "pv1"}};
  for (std::size_t s = 0; s < 2; ++s) {
    allocate(layout.q_slot_bytes, kSlotNames[s][0], &buffers.q[s]);
    allocate(layout.out_slot_bytes, kSlotNames[s][1], &buffers.out[s]);
    allocate(layout.kv_slot_bytes, kSlotNames[s][2], &buffers.kv[s]);
    allocate(layout.stage_slot_bytes, kSlotNames[s][3], &buffers.stage[s]);
    allocate(layout.scores_slot_bytes, kSlotNames[s][4], &buffers.scores[s]);
    allocate(layout.pv_slot_bytes, kSlotNames[s][5], &buffers.pv[s]);
  }
  allocate(layout.acc_bytes, "acc", &buffers.acc);
  allocate(layout.state_bytes, "softmax_state", &buffers.state);
  if (!failure.ok()) return failure;
  return buffers;
}

// The device's figures; bytes_moved and flops are already set.
void FillReport(const device::DeviceSpec& spec, const device::Device& device,
                bool record_trace, DeviceRunReport* report) {
  const device::DeviceStats stats = device.Stats();
  const double makespan_s =
      std::chrono::duration<double>(stats.now - runtime::TimePoint{}).count();
  report->simulated_us = makespan_s * 1e6;
  report->hbm_busy_us = Microseconds(stats.hbm_busy);
  report->dma_engine_busy_us.clear();
  for (const runtime::Duration busy : stats.dma_engine_busy) {
    report->dma_engine_busy_us.push_back(Microseconds(busy));
  }
  report->matrix_busy_us = Microseconds(stats.matrix_busy);
  report->vector_busy_us = Microseconds(stats.vector_busy);
  if (makespan_s > 0) {
    report->mbu = report->bytes_moved / makespan_s / spec.hbm_bytes_per_s;
    report->mfu = report->flops / makespan_s / spec.matrix_peak_flops;
    report->overlap_efficiency =
        std::max({report->hbm_busy_us, report->matrix_busy_us,
                  report->vector_busy_us}) /
        report->simulated_us;
  }
  report->dma_transfers = stats.dma_transfers;
  report->vmem_high_water_bytes = stats.vmem_high_water_bytes;
  report->races = device.races();
  report->num_races = stats.races;
  if (record_trace) report->trace_json = device.TraceJson();
}

}  // namespace

StatusOr<DeviceRunReport> RunOnDevice(const AttentionPlan& plan,
                                      const BatchTensors& tensors,
                                      const device::DeviceSpec& spec,
                                      const DeviceRunOptions& options) {
  const ValidatedBatch& batch = plan.data().batch;
  // Validate everything first: nothing is written on any error.
  RPA_RETURN_IF_ERROR(internal::CheckTensors(batch, tensors));
  RPA_RETURN_IF_ERROR(device::ValidateDeviceSpec(spec));
  RPA_ASSIGN_OR_RETURN(const DeviceBlockChoice choice,
                       internal::ChooseDeviceBlocks(plan, options, spec));
  DeviceRunReport report;
  for (std::size_t r = 0; r < internal::kNumRanges; ++r) {
    report.blocks_used[r] = choice.sizes[r];
  }
  report.bytes_moved = static_cast<double>(plan.cost().bytes());
  report.flops = plan.cost().flops;
  const DeviceWalk walk = internal::BuildDeviceWalk(batch, choice, spec);
  if (walk.steps.empty()) return report;  // no sequence processed
  const VmemLayout layout = internal::ComputeVmemLayout(batch, choice);

  RPA_ASSIGN_OR_RETURN(
      std::unique_ptr<runtime::Executor> executor,
      runtime::Executor::Create(
          {.num_workers = 0, .clock = runtime::ClockKind::kVirtual}));
  device::DeviceOptions device_options;
  device_options.record_trace = options.record_trace;
  RPA_ASSIGN_OR_RETURN(
      std::unique_ptr<device::Device> device,
      device::Device::Create(spec, executor.get(), device_options));
  RPA_RETURN_IF_ERROR(RegisterTensors(batch, tensors, device.get()));
  RPA_ASSIGN_OR_RETURN(const DeviceBuffers buffers,
                       AllocateBuffers(layout, choice, spec, device.get()));

  internal::StepCompute compute(batch, choice, walk, device.get(), buffers);
  internal::ScheduleInputs inputs;
  inputs.batch = &batch;
  inputs.tensors = &tensors;
  inputs.walk = &walk;
  inputs.device = device.get();
  inputs.buffers = buffers;
  inputs.compute = &compute;
  inputs.skip_kv_wait_for_testing =
      options.schedule == DeviceSchedule::kPipelined &&
      options.skip_kv_wait_for_testing;
  internal::ScheduleRunner schedule(inputs);
  if (options.schedule == DeviceSchedule::kSerial) {
    schedule.SpawnSerial(executor.get());
  } else {
    schedule.SpawnPipelined(executor.get());
  }
  // From here on the tensors are being written: a failure is a bug.
  const Status run = executor->Run();
  RPA_CHECK_MSG(run.ok(), run.ToString().c_str());
  FillReport(spec, *device, options.record_trace, &report);
  return report;
}

}  // namespace rpa::attention
