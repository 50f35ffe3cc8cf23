#include "swap_store.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <string>
#include <utility>

#include "rpa/runtime/file_io.h"

namespace rpa::scheduler::internal {

SwapStore::SwapStore(std::filesystem::path directory, std::uint64_t max_bytes,
                     SwapFaultInjector injector, const memory::KvCache* cache,
                     runtime::Executor* executor)
    : directory_(std::move(directory)),
      max_bytes_(max_bytes),
      injector_(std::move(injector)),
      cache_(cache),
      executor_(executor),
      page_bytes_(cache->Layer(0).page_bytes),
      num_layers_(cache->config().num_layers) {}

SwapStore::~SwapStore() {
  if (fd_ >= 0) ::close(fd_);
}

Status SwapStore::OpenFile() {
  if (fd_ >= 0) return OkStatus();
  std::error_code error;
  std::filesystem::path directory = directory_;
  if (directory.empty()) {
    directory = std::filesystem::temp_directory_path(error);
    if (error) {
      return UnavailableError(fmt::format(
          "swap_directory is empty and the temporary directory is unknown: {}",
          error.message()));
    }
  }
  // O_TMPFILE: an unnamed file that disappears with its last descriptor.
  int fd = ::open(directory.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
    // A filesystem without O_TMPFILE: a named file, unlinked at once.
    std::string name = (directory / "rpa-swap-XXXXXX").string();
    fd = ::mkostemp(name.data(), O_CLOEXEC);
    if (fd >= 0) ::unlink(name.c_str());
  }
  if (fd < 0) {
    const int saved = errno;
    return UnavailableError(
        fmt::format("cannot create a swap file in swap_directory '{}': {}",
                    directory.string(), std::strerror(saved)));
  }
  fd_ = fd;
  return OkStatus();
}

StatusOr<SwapExtent> SwapStore::Allocate(std::uint32_t num_pages) {
  RPA_CHECK(num_pages > 0);
  RPA_RETURN_IF_ERROR(OpenFile());
  const std::uint64_t bytes = std::uint64_t{num_pages} * num_layers_ *
                              static_cast<std::uint64_t>(page_bytes_);
  for (std::size_t i = 0; i < free_.size(); ++i) {
    if (free_[i].num_pages < num_pages) continue;
    SwapExtent taken{free_[i].offset_bytes, num_pages};
    if (free_[i].num_pages == num_pages) {
      free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      // The rest of the free extent stays free, in the same place.
      free_[i].offset_bytes += bytes;
      free_[i].num_pages -= num_pages;
    }
    return taken;
  }
  if (max_bytes_ != 0 && file_end_bytes_ + bytes > max_bytes_) {
    return ResourceExhaustedError(fmt::format(
        "swapping out {} pages needs {} bytes; the swap file holds {} of "
        "max_swap_bytes {}",
        num_pages, bytes, file_end_bytes_, max_bytes_));
  }
  SwapExtent extent{file_end_bytes_, num_pages};
  file_end_bytes_ += bytes;
  return extent;
}

// Extents are counted in pages of all layers, so pages convert to bytes with
// one factor; free extents stay sorted and merged.
void SwapStore::Free(SwapExtent extent) {
  if (extent.num_pages == 0) return;
  const std::uint64_t unit = std::uint64_t{num_layers_} * page_bytes_;
  auto it = std::lower_bound(free_.begin(), free_.end(), extent,
                             [](const SwapExtent& a, const SwapExtent& b) {
                               return a.offset_bytes < b.offset_bytes;
                             });
  it = free_.insert(it, extent);
  // Merge with the next, then with the previous.
  auto next = it + 1;
  if (next != free_.end() &&
      it->offset_bytes + it->num_pages * unit == next->offset_bytes) {
    it->num_pages += next->num_pages;
    free_.erase(next);
  }
  if (it != free_.begin()) {
    auto prev = it - 1;
    if (prev->offset_bytes + prev->num_pages * unit == it->offset_bytes) {
      prev->num_pages += it->num_pages;
      free_.erase(it);
    }
  }
  // A free tail gives the file space back to the allocator's end.
  if (!free_.empty() &&
      free_.back().offset_bytes + free_.back().num_pages * unit ==
          file_end_bytes_) {
    file_end_bytes_ = free_.back().offset_bytes;
    free_.pop_back();
  }
}

StatusOr<std::unique_ptr<SwapJob>> SwapStore::Start(
    bool is_write, SwapExtent extent, std::span<const memory::PageId> pages) {
  RPA_CHECK(pages.size() == extent.num_pages);
  std::unique_ptr<SwapJob> job;
  try {
    job = std::make_unique<SwapJob>();
    job->pages_.assign(pages.begin(), pages.end());
    job->tasks_.reserve(num_layers_);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("no memory for a swap job");
  }
  job->is_write_ = is_write;
  job->extent_ = extent;
  job->bytes_ = std::uint64_t{extent.num_pages} * num_layers_ * page_bytes_;
  SwapJob* raw = job.get();
  for (std::uint32_t layer = 0; layer < num_layers_; ++layer) {
    job->tasks_.push_back(
        executor_->Spawn([this, raw, layer] { RunLayer(raw, layer); }));
  }
  return job;
}

Status SwapStore::Wait(SwapJob& job) {
  Status result;
  for (auto& task : job.tasks_) {
    Status joined = task.Join();
    if (!joined.ok() && result.ok()) result = std::move(joined);
  }
  job.tasks_.clear();
  std::lock_guard<std::mutex> lock(job.error_mutex_);
  if (!job.first_error_.ok()) return job.first_error_;
  return result;
}

void SwapStore::RunLayer(SwapJob* job, std::uint32_t layer) {
  const memory::KvLayerView view = cache_->Layer(layer);
  const std::span<const memory::PageId> pages = job->pages_;
  const std::uint64_t base = job->extent_.offset_bytes +
                             std::uint64_t{layer} * pages.size() * page_bytes_;
  std::size_t i = 0;
  while (i < pages.size()) {
    // A run of consecutive page ids is contiguous in the layer's tensor.
    std::size_t run = 1;
    while (i + run < pages.size() && memory::PageIndex(pages[i + run]) ==
                                         memory::PageIndex(pages[i]) + run) {
      ++run;
    }
    Status status = Transfer(job->is_write_, view.SlotAddress(pages[i], 0),
                             run * page_bytes_, base + i * page_bytes_);
    if (!status.ok()) {
      std::lock_guard<std::mutex> lock(job->error_mutex_);
      if (job->first_error_.ok()) {
        job->first_error_ =
            Status(status.code(), fmt::format("swap {} of layer {} failed: {}",
                                              job->is_write_ ? "write" : "read",
                                              layer, status.message()));
      }
      return;
    }
    i += run;
  }
}

Status SwapStore::Transfer(bool is_write, std::byte* memory, std::size_t bytes,
                           std::uint64_t offset) {
  while (bytes > 0) {
    if (injector_) {
      std::lock_guard<std::mutex> lock(injector_mutex_);
      if (injector_(next_io_index_++, is_write)) {
        return InternalError(
            fmt::format("{} of {} bytes at offset {} of the swap file (fd {}): "
                        "Input/output error (injected)",
                        is_write ? "write" : "read", bytes, offset, fd_));
      }
    }
    StatusOr<std::size_t> done =
        is_write
            ? runtime::WriteAt(fd_, std::span<const std::byte>(memory, bytes),
                               offset)
            : runtime::ReadAt(fd_, std::span<std::byte>(memory, bytes), offset);
    if (!done.ok()) return done.status();
    if (*done == 0) {
      return InternalError(fmt::format(
          "read of {} bytes at offset {} of the swap file hit its end", bytes,
          offset));
    }
    memory += *done;
    bytes -= *done;
    offset += *done;
  }
  return OkStatus();
}

}  // namespace rpa::scheduler::internal
