// Invariant fuzzer of the .npy reader (scheduler/include/rpa/scheduler/npy.h)
// and the params.json parser, the two parsers of untrusted case files.
//   - ParseNpy never reads out of bounds or allocates more than the input
//     (ASan), and an accepted file round-trips: SerializeNpy of the parsed
//     array parses back to the same dtype, shape and bytes.
//   - ParseCaseParams never throws (no exception crosses the API) and
//     either accepts or names params.json in its error.
// Seeds: fuzz/corpus/npy/ (valid files of every dtype and version, and a few
// near misses).

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string_view>

#include "rpa/scheduler/attention_case.h"
#include "rpa/scheduler/npy.h"

namespace {

void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "npy_fuzz: invariant violated: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  using rpa::scheduler::NpyArray;
  const std::span<const std::byte> bytes(
      reinterpret_cast<const std::byte*>(data), size);
  auto parsed = rpa::scheduler::ParseNpy(bytes, "fuzz.npy");
  if (parsed.ok()) {
    const NpyArray& array = *parsed;
    Require(array.num_bytes() <= size, "array larger than its file");
    std::size_t elements = 1;
    for (std::uint64_t dim : array.shape())
      elements *= static_cast<std::size_t>(dim);
    Require(elements == array.num_elements(),
            "element count != product(shape)");
    auto again = rpa::scheduler::SerializeNpy(array.dtype(), array.shape(),
                                              array.bytes());
    Require(again.ok(), "an accepted array does not serialise");
    auto reparsed = rpa::scheduler::ParseNpy(*again, "again.npy");
    Require(reparsed.ok(), "a serialised array does not parse");
    Require(reparsed->dtype() == array.dtype(),
            "dtype changed in the round trip");
    Require(reparsed->shape() == array.shape(),
            "shape changed in the round trip");
    Require(
        array.num_bytes() == 0 ||
            std::memcmp(reparsed->data(), array.data(), array.num_bytes()) == 0,
        "data changed in the round trip");
  } else {
    Require(parsed.status().message().rfind("fuzz.npy", 0) == 0,
            "an npy error does not start with the file name");
  }

  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto params = rpa::scheduler::ParseCaseParams(text);
  if (!params.ok()) {
    Require(params.status().message().rfind("params.json", 0) == 0,
            "a params.json error does not name the file");
  }
  return 0;
}
