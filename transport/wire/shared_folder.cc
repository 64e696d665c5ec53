#include "transport/wire/shared_folder.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace reptile {
namespace {

absl::Status Failure(const std::string& what, const std::string& path) {
  const int error = errno;
  const std::string message = absl::StrCat("cannot ", what, " ", path, ": ", std::strerror(error));
  if (error == ENOENT) return absl::NotFoundError(message);
  if (error == ENOSPC)
    return absl::ResourceExhaustedError(absl::StrCat(
        message, " (its file system is full: a container's /dev/shm holds 64 MB unless `docker run --shm-size` "
                 "gives it more; runtime.local_workers=THREADS needs no shared memory)"));
  return absl::InternalError(message);
}

// Closes a file descriptor when it goes.
class Descriptor {
 public:
  explicit Descriptor(int fd) : fd_(fd) {}
  ~Descriptor() {
    if (fd_ >= 0) close(fd_);
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

std::string SharedStatePath(const std::string& folder, uint64_t version) {
  return absl::StrCat(folder, "/state-", version);
}

std::string SharedResultPath(const std::string& folder, uint64_t worker) {
  return absl::StrCat(folder, "/result-", worker);
}

namespace {

// A tensor file holds its tensors between two copies of a generation number
// (8 bytes before, 8 after), written first and last. A reader reads the last
// copy first and the first copy last: if they differ, a writer rewrote the
// file while it read, and what it read may mix two versions (a seqlock).
constexpr size_t kGenerationBytes = sizeof(uint64_t);

// Distinct for every write of this process (and, with the pid, of any other).
uint64_t NextGeneration() {
  static std::atomic<uint64_t> next{1};
  return (static_cast<uint64_t>(getpid()) << 32) ^ next.fetch_add(1, std::memory_order_relaxed);
}

bool WriteAll(int fd, absl::string_view bytes, off_t offset) {
  while (!bytes.empty()) {
    const ssize_t written = pwrite(fd, bytes.data(), bytes.size(), offset);
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(written));
    offset += written;
  }
  return true;
}

// Reads size bytes at `offset` into `out`; false if the file ends first
// (InvalidArgument, via errno 0) or a read fails.
bool ReadAll(int fd, char* out, size_t size, off_t offset) {
  for (size_t done = 0; done < size;) {
    const ssize_t got = pread(fd, out + done, size - done, offset + static_cast<off_t>(done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      if (got == 0) errno = 0;
      return false;
    }
    done += static_cast<size_t>(got);
  }
  return true;
}

// Writes `tensors`, framed by a new generation, from the start of `path`
// (opened with `flags` besides O_WRONLY | O_CREAT) and cuts the file to
// their size.
absl::Status WriteFrom0(const std::string& path, int flags, absl::Span<const absl::string_view> tensors) {
  Descriptor file(open(path.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | flags, 0600));
  if (file.get() < 0) return Failure("create", path);
  size_t total = 2 * kGenerationBytes;
  for (absl::string_view bytes : tensors) total += bytes.size();
  const std::string writing = absl::StrCat("write ", total, " bytes to");  // what a full file system lacks
  const uint64_t generation = NextGeneration();
  const absl::string_view frame(reinterpret_cast<const char*>(&generation), kGenerationBytes);
  if (!WriteAll(file.get(), frame, 0)) return Failure(writing, path);
  off_t offset = kGenerationBytes;
  for (absl::string_view bytes : tensors) {
    if (!WriteAll(file.get(), bytes, offset)) return Failure(writing, path);
    offset += static_cast<off_t>(bytes.size());
  }
  if (!WriteAll(file.get(), frame, offset)) return Failure(writing, path);
  offset += kGenerationBytes;
  if (ftruncate(file.get(), offset) != 0) return Failure("cut to size", path);
  return absl::OkStatus();
}

}  // namespace

absl::Status OverwriteTensorFile(const std::string& path, absl::Span<const absl::string_view> tensors) {
  return WriteFrom0(path, 0, tensors);
}

absl::Status WriteTensorFile(const std::string& path, absl::Span<const absl::string_view> tensors) {
  const std::string partial = path + ".partial";
  if (absl::Status written = WriteFrom0(partial, O_TRUNC, tensors); !written.ok()) {
    unlink(partial.c_str());
    return written;
  }
  if (rename(partial.c_str(), path.c_str()) != 0) {
    absl::Status failed = Failure("rename into place", path);
    unlink(partial.c_str());
    return failed;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ReadTensorFile(const std::string& path, absl::Span<const size_t> sizes) {
  Descriptor file(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (file.get() < 0) return Failure("open", path);
  struct stat info;
  if (fstat(file.get(), &info) != 0) return Failure("stat", path);
  if (!S_ISREG(info.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  size_t expected = 0;
  for (size_t size : sizes) expected += size;
  if (static_cast<uint64_t>(info.st_size) != expected + 2 * kGenerationBytes)
    return absl::InvalidArgumentError(
        absl::StrCat(path, " holds ", info.st_size - static_cast<off_t>(2 * kGenerationBytes), " bytes, not ",
                     expected));
  auto failed = [&path](const char* what) {
    return errno == 0 ? absl::InvalidArgumentError(absl::StrCat(path, " ended early (shrunk while read)"))
                      : Failure(what, path);
  };
  uint64_t last = 0, first = 0;
  if (!ReadAll(file.get(), reinterpret_cast<char*>(&last), kGenerationBytes,
               static_cast<off_t>(kGenerationBytes + expected)))
    return failed("read");
  std::vector<std::string> tensors;
  tensors.reserve(sizes.size());
  off_t offset = kGenerationBytes;
  for (size_t size : sizes) {
    std::string& bytes = tensors.emplace_back();
    bytes.resize(size);
    if (!ReadAll(file.get(), bytes.data(), size, offset)) return failed("read");
    offset += static_cast<off_t>(size);
  }
  if (!ReadAll(file.get(), reinterpret_cast<char*>(&first), kGenerationBytes, 0)) return failed("read");
  if (first != last) return absl::InvalidArgumentError(absl::StrCat(path, " changed while it was read"));
  return tensors;
}

}  // namespace reptile
