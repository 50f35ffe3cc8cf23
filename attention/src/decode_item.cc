// The decode items' shared parts (decode_item.h).

#include "decode_item.h"

#include <algorithm>

namespace rpa::attention::internal {

DecodeItemView MakeDecodeItemView(const KernelArgs& args,
                                  const WorkItem& item) {
  DecodeItemView view;
  view.batch = args.batch;
  view.span = &args.batch->sequences[item.sequence];
  view.group = args.batch->group_size;
  view.dim = args.batch->shape.head_dim;
  view.num_heads = item.num_kv_heads;
  const std::int32_t query_pos = view.span->kv_len - 1;
  const KeyRange visible =
      VisibleKeys(query_pos, view.span->kv_len, args.batch->params);
  view.begin = std::max(visible.begin, item.kv_begin);
  view.end = std::min(visible.end, item.kv_end);
  view.pages = args.batch->page_indices.data() + view.span->page_row;
  view.q = args.q + (static_cast<std::size_t>(view.span->q_begin) *
                         args.batch->shape.num_q_heads +
                     static_cast<std::size_t>(item.kv_head) * view.group) *
                        view.dim;
  return view;
}

void FinishDecodeItem(const KernelArgs& args, const WorkItem& item,
                      const DecodeItemView& view, const float* acc,
                      const SoftmaxRow* rows) {
  const ValidatedBatch& batch = *view.batch;
  const std::uint32_t dim = view.dim;
  for (std::uint32_t i = 0; i < view.num_heads; ++i) {
    for (std::uint32_t g = 0; g < view.group; ++g) {
      const std::size_t row = static_cast<std::size_t>(i) * view.group + g;
      const float* head_acc = acc + row * dim;
      if (item.partial >= 0) {
        const auto slot_index =
            static_cast<std::size_t>(item.partial) +
            static_cast<std::size_t>(i) *
                static_cast<std::size_t>(item.partial_head_stride);
        float* slot = args.partials + slot_index * PartialSlotFloats(batch) +
                      static_cast<std::size_t>(g) * (dim + 2);
        slot[0] = rows[row].max;
        slot[1] = rows[row].sum;
        std::copy(head_acc, head_acc + dim, slot + 2);
      } else {
        float* out =
            args.out +
            (static_cast<std::size_t>(view.span->q_begin) *
                 batch.shape.num_q_heads +
             static_cast<std::size_t>(item.kv_head) * view.group + row) *
                dim;
        // A query always sees its own key, so sum > 0 for an unsplit item.
        const float normaliser = batch.params.v_scale / rows[row].sum;
        for (std::uint32_t d = 0; d < dim; ++d) {
          out[d] = head_acc[d] * normaliser;
        }
      }
    }
  }
}

std::int32_t GatherDecodeSlots(const memory::KvLayerView& cache,
                               const std::int32_t* pages, std::int32_t begin,
                               std::int32_t end, const std::byte** slots) {
  const auto ps = static_cast<std::int32_t>(cache.page_size_tokens);
  std::int32_t count = 0;
  std::int32_t position = begin;
  while (position < end) {
    const std::int32_t page_end = std::min(end, (position / ps + 1) * ps);
    const std::byte* address =
        KvRowAddress(cache, pages, position, /*kv_head=*/0, /*value=*/false);
    for (; position < page_end; ++position) {
      slots[count++] = address;
      address += cache.token_bytes;
    }
  }
  const std::int32_t padded = (count + 7) / 8 * 8;
  for (std::int32_t i = count; i < padded; ++i) slots[i] = slots[count - 1];
  return count;
}

}  // namespace rpa::attention::internal
