#pragma once

// PageId: the index of a fixed-size KV page, a distinct type so that page
// ids, byte offsets and token positions cannot be mixed up silently.

#include <cstdint>
#include <functional>

namespace rpa::memory {

enum class PageId : std::uint32_t {};

constexpr std::uint32_t PageIndex(PageId id) {
  return static_cast<std::uint32_t>(id);
}
constexpr PageId MakePageId(std::uint32_t index) {
  return static_cast<PageId>(index);
}

}  // namespace rpa::memory
