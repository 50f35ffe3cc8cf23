// Replays a fuzz corpus without libFuzzer: every file named on the command
// line, or every regular file in a named directory, is passed once to
// LLVMFuzzerTestOneInput. Exits non-zero if a directory is empty or missing,
// so a lost corpus fails the test instead of passing vacuously.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size);

namespace {

bool RunFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "replay: cannot open %s\n", path.c_str());
    return false;
  }
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                          std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()),
                         bytes.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int files = 0;
  for (int i = 1; i < argc; ++i) {
    std::filesystem::path arg(argv[i]);
    std::error_code error;
    if (std::filesystem::is_directory(arg, error)) {
      std::vector<std::filesystem::path> paths;
      for (const auto& entry : std::filesystem::directory_iterator(arg)) {
        if (entry.is_regular_file()) paths.push_back(entry.path());
      }
      std::sort(paths.begin(), paths.end());
      for (const auto& path : paths) {
        if (!RunFile(path)) return 1;
        ++files;
      }
    } else if (!RunFile(arg)) {
      return 1;
    } else {
      ++files;
    }
  }
  std::printf("replay: ran %d inputs\n", files);
  if (files == 0) {
    std::fprintf(stderr, "replay: no inputs (empty or missing corpus)\n");
    return 1;
  }
  return 0;
}
