// Mutate: malformed mode's edits of a decoded case (metadata arrays, shape,
// parameters, options, cache geometry), each to a value near the edge of what
// validation must reject.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "attention_fuzz.h"

#include "rpa/attention/plan.h"

namespace rpa::attention::fuzz {
namespace {

// Values near the edges of what validation must reject: off by one, zero,
// negative, the int32 limits. Computed in 64 bits and clamped to int32.
std::int32_t Interesting(std::uint8_t selector, std::int32_t near) {
  const std::int64_t n = near;
  std::int64_t value = 0;
  switch (selector % 10) {
    case 0:
      value = -1;
      break;
    case 1:
      value = 0;
      break;
    case 2:
      value = n - 1;
      break;
    case 3:
      value = n + 1;
      break;
    case 4:
      value = n;
      break;
    case 5:
      value = std::numeric_limits<std::int32_t>::max();
      break;
    case 6:
      value = std::numeric_limits<std::int32_t>::min();
      break;
    case 7:
      value = n * 2;
      break;
    case 8:
      value = std::int64_t{1} << 30;
      break;
    default:
      value = static_cast<std::int64_t>(selector) - 128;
      break;
  }
  return static_cast<std::int32_t>(
      std::clamp<std::int64_t>(value, std::numeric_limits<std::int32_t>::min(),
                               std::numeric_limits<std::int32_t>::max()));
}

float InterestingFloat(std::uint8_t selector) {
  const float kValues[] = {0.0F,
                           -0.0F,
                           -1.0F,
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::quiet_NaN(),
                           1e-30F,
                           1e30F,
                           0.5F,
                           3.0F};
  return kValues[selector % std::size(kValues)];
}

}  // namespace

void Mutate(ByteReader* in, TestBatch* batch, Case* input,
            std::vector<std::int32_t>* kv_lens,
            std::vector<std::int32_t>* page_indices,
            std::vector<std::int32_t>* cu_q_lens,
            std::vector<std::int32_t>* distribution) {
  const std::uint8_t what = in->U8();
  const std::uint8_t index = in->U8();
  const std::uint8_t value = in->U8();
  const auto pick = [&](const std::vector<std::int32_t>& array) {
    return array.empty() ? std::size_t{0} : index % array.size();
  };
  switch (what % 13) {
    case 0:
      if (!kv_lens->empty()) {
        const std::size_t i = pick(*kv_lens);
        (*kv_lens)[i] = Interesting(value, (*kv_lens)[i]);
        Trace("mutate kv_lens[" + std::to_string(i) +
              "] = " + std::to_string((*kv_lens)[i]));
      }
      break;
    case 1:
      if (!page_indices->empty()) {
        const std::size_t i = pick(*page_indices);
        (*page_indices)[i] =
            value % 2 == 0
                ? Interesting(value / 2,
                              static_cast<std::int32_t>(input->cache.num_pages))
                : (*page_indices)[index / 2 % page_indices->size()];
        Trace("mutate page_indices[" + std::to_string(i) +
              "] = " + std::to_string((*page_indices)[i]));
      }
      break;
    case 2: {
      const std::size_t i = pick(*cu_q_lens);
      (*cu_q_lens)[i] = Interesting(value, (*cu_q_lens)[i]);
      Trace("mutate cu_q_lens[" + std::to_string(i) +
            "] = " + std::to_string((*cu_q_lens)[i]));
      break;
    }
    case 3: {
      const std::size_t i = index % 3;
      (*distribution)[i] = static_cast<std::int32_t>(value % 8) - 1;
      Trace("mutate distribution = " + Join(*distribution));
      break;
    }
    case 4:
      input->metadata.shape.num_tokens = static_cast<std::uint32_t>(
          static_cast<std::int64_t>(input->metadata.shape.num_tokens) +
          (value % 5) - 2);
      Trace("mutate num_tokens = " +
            std::to_string(input->metadata.shape.num_tokens));
      break;
    case 5: {
      BatchShape& shape = input->metadata.shape;
      std::uint32_t* fields[] = {&shape.num_q_heads, &shape.num_kv_heads,
                                 &shape.head_dim};
      *fields[index % 3] = value % 9;
      Trace("mutate shape field " + std::to_string(index % 3) + " = " +
            std::to_string(value % 9));
      break;
    }
    case 6: {
      AttentionParams& params = input->params;
      switch (index % 6) {
        case 0:
          params.sliding_window = Interesting(value, 4);
          break;
        case 1:
          params.soft_cap = InterestingFloat(value);
          break;
        case 2:
          params.k_scale = InterestingFloat(value);
          break;
        case 3:
          params.v_scale = InterestingFloat(value);
          break;
        case 4:
          params.sm_scale = InterestingFloat(value);
          break;
        default:
          params.chunk_prefill_size =
              Interesting(value, params.chunk_prefill_size.value_or(1));
          break;
      }
      Trace("mutate param " + std::to_string(index % 6));
      break;
    }
    case 7:
      if (index % 2 == 0) {
        input->options.parallelism = static_cast<int>(value % 4) - 1;
      } else {
        input->options.mixed_range_kernel = KernelKind::kDecode;
        input->options.prefill_range_kernel =
            value % 2 == 0 ? KernelKind::kDecode : KernelKind::kMixed;
      }
      Trace("mutate options");
      break;
    case 8:
      if (value % 2 == 0 && !page_indices->empty()) {
        page_indices->pop_back();
      } else {
        page_indices->push_back(Interesting(value, 0));
      }
      Trace("mutate page_indices size " + std::to_string(page_indices->size()));
      break;
    case 9:
      if (value % 2 == 0 && !cu_q_lens->empty()) {
        cu_q_lens->pop_back();
      } else {
        cu_q_lens->push_back(
            cu_q_lens->empty() ? 0 : Interesting(4, cu_q_lens->back()));
      }
      Trace("mutate cu_q_lens size " + std::to_string(cu_q_lens->size()));
      break;
    case 10: {
      memory::KvLayerView& cache = input->cache;
      if (index % 3 == 0) {
        cache.num_pages -= std::min<std::uint32_t>(cache.num_pages, value % 4);
      } else if (index % 3 == 1) {
        cache.page_size_tokens = value % 9;
      } else {
        cache.token_bytes += value % 3;
      }
      Trace("mutate cache geometry " + std::to_string(index % 3));
      break;
    }
    case 11:
      // Two sequences' pages made the same: overlapping writes, or sharing.
      if (page_indices->size() >= 2) {
        const std::size_t a = pick(*page_indices);
        const std::size_t b = value % page_indices->size();
        (*page_indices)[a] = (*page_indices)[b];
        Trace("mutate page_indices[" + std::to_string(a) + "] = page_indices[" +
              std::to_string(b) + "] = " + std::to_string((*page_indices)[b]));
      }
      break;
    default:
      if (!kv_lens->empty()) {
        kv_lens->pop_back();
        Trace("mutate kv_lens size " + std::to_string(kv_lens->size()));
      }
      break;
  }
  (void)batch;
}

}  // namespace rpa::attention::fuzz
