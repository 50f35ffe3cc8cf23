// Links the installed rpa, builds a small paged KV cache, and checks that the
// host's malloc is still its own.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>

#include "rpa/memory/kv_cache.h"

int main() {
  auto cache =
      rpa::memory::KvCache::Create({.num_pages = 64,
                                    .page_size_tokens = 16,
                                    .num_kv_heads = 2,
                                    .head_dim = 64,
                                    .storage = rpa::memory::StorageType::kBf16,
                                    .num_layers = 2});
  if (!cache.ok()) {
    std::fprintf(stderr, "consumer: %s\n", cache.status().ToString().c_str());
    return 1;
  }
  auto seq = (*cache)->CreateSequence();
  if (!seq.ok() || !(*cache)->Reserve(*seq, 40).ok()) {
    std::fprintf(stderr, "consumer: sequence setup failed\n");
    return 1;
  }
  rpa::memory::BatchPageTable table;
  if (rpa::Status status = (*cache)->ExportBatch({&*seq, 1}, 0, &table);
      !status.ok()) {
    std::fprintf(stderr, "consumer: %s\n", status.ToString().c_str());
    return 1;
  }
  // The host's malloc must not have been replaced by linking rpa.
  void* mimalloc = dlopen("libmimalloc.so.2", RTLD_NOW | RTLD_NOLOAD);
  bool replaced = mimalloc != nullptr &&
                  dlsym(RTLD_DEFAULT, "malloc") == dlsym(mimalloc, "malloc");
  std::printf(
      "consumer: kv_len %d over %u pages, used pages %u, host malloc replaced: "
      "%s\n",
      table.kv_lens[0], table.pages_per_sequence, (*cache)->Stats().used_pages,
      replaced ? "yes" : "no");
  return (table.kv_lens[0] == 40 && table.pages_per_sequence == 3 && !replaced)
             ? 0
             : 1;
}
