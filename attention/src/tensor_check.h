#pragma once

// The O(1) check of a call's tensors against its plan (sizes, null data,
// cache geometry and storage), shared by Run (plan.cc) and RunOnDevice
// (device_run.cc) so that both reject the same tensors with the same
// messages. Private to attention/.

#include "plan_data.h"

#include "rpa/attention/batch.h"
#include "rpa/runtime/status.h"

namespace rpa::attention::internal {

// InvalidArgument naming the tensor and the value when a tensor does not
// match the plan (see Run in plan.h); reads nothing but sizes and geometry.
Status CheckTensors(const ValidatedBatch& batch, const BatchTensors& tensors);

}  // namespace rpa::attention::internal
