#include "coordinator/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace reptile {
namespace {

// "<what> <file>: <strerror(errno)>", with the code errno maps to.
absl::Status ErrnoError(const char* what, const std::string& file) {
  const int error = errno;
  return absl::ErrnoToStatus(error, absl::StrCat(what, " ", file));
}

absl::Status WriteAndSync(const std::string& temp, const std::vector<absl::string_view>& pieces, mode_t mode) {
  if (::unlink(temp.c_str()) != 0 && errno != ENOENT) return ErrnoError("cannot remove", temp);
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return ErrnoError("cannot create", temp);
  absl::Status status;
  for (absl::string_view data : pieces) {
    while (status.ok() && !data.empty()) {
      const ssize_t n = ::write(fd, data.data(), data.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) status = ErrnoError("cannot write", temp);
      if (n > 0) data.remove_prefix(n);
    }
  }
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoError("cannot fsync", temp);
  if (::close(fd) != 0 && status.ok()) status = ErrnoError("cannot write", temp);
  return status;
}

absl::Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open directory", dir);
  absl::Status status;
  if (::fsync(fd) != 0) status = ErrnoError("cannot fsync directory", dir);
  ::close(fd);
  return status;
}

}  // namespace

absl::Status WriteFileAtomically(const std::string& path, const std::vector<absl::string_view>& pieces, mode_t mode) {
  // A name of this write's own: two writers never rename each other's file.
  static std::atomic<uint64_t> writes{0};
  const std::string temp = absl::StrCat(path, kTemporarySuffix, ::getpid(), "-", writes.fetch_add(1));
  absl::Status status = WriteAndSync(temp, pieces, mode);
  if (status.ok() && ::rename(temp.c_str(), path.c_str()) != 0)
    status = ErrnoError("cannot rename", absl::StrCat(temp, " to ", path));
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return status;
  }
  const std::string dir = std::filesystem::path(path).parent_path().string();
  return SyncDirectory(dir.empty() ? "." : dir);
}

}  // namespace reptile
