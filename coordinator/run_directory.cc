#include "coordinator/run_directory.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "coordinator/atomic_file.h"
#include "core/config.h"
#include "core/models/torchscript_model.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

// config.textproto and metrics.jsonl: readable by all, as an ofstream makes
// them (the umask applies).
constexpr mode_t kPlainFileMode = 0666;

// Takes the run directory's lock for this process, or says who holds it.
// The lock file holds "pid <pid> on <host> since <time>".
absl::StatusOr<int> Lock(const std::string& path) {
  const std::string lock_path = path + "/lock";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", lock_path));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    char holder[256] = {0};
    const ssize_t n = ::pread(fd, holder, sizeof(holder) - 1, 0);
    ::close(fd);
    if (error != EWOULDBLOCK) return absl::ErrnoToStatus(error, absl::StrCat("cannot lock ", lock_path));
    std::string who(holder, n > 0 ? static_cast<size_t>(n) : 0);
    while (!who.empty() && (who.back() == '\n' || who.back() == '\0')) who.pop_back();
    return absl::FailedPreconditionError(absl::StrCat(
        "run directory ", path, " is in use by another process (", who.empty() ? "unknown" : who,
        "); stop it, or give this run another --run_dir"));
  }
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  const std::string me = absl::StrCat("pid ", ::getpid(), " on ", host, " since ",
                                      absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::Now(), absl::UTCTimeZone()), "\n");
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
    const int error = errno;
    ::close(fd);
    return absl::ErrnoToStatus(error, absl::StrCat("cannot write ", lock_path));
  }
  return fd;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RunDirectory>> RunDirectory::Open(const std::string& path) {
  std::error_code error;
  std::filesystem::create_directories(path, error);
  if (error) return absl::PermissionDeniedError(absl::StrCat("cannot create run directory ", path, ": ", error.message()));
  ASSIGN_OR_RETURN(const int lock_fd, Lock(path));
  std::unique_ptr<RunDirectory> dir(new RunDirectory(path, lock_fd));
  // Only the holder writes here, so a temporary file now is a crash's.
  for (const auto& entry : std::filesystem::directory_iterator(path, error))
    if (absl::StrContains(entry.path().filename().string(), kTemporarySuffix))
      std::filesystem::remove(entry.path(), error);
  if (!std::ofstream(path + "/metrics.jsonl", std::ios::app)) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path, "/metrics.jsonl"));
  return dir;
}

RunDirectory::~RunDirectory() { ::close(lock_fd_); }

bool RunDirectory::has_checkpoint() const { return std::filesystem::exists(checkpoint_path()); }

absl::Status RunDirectory::WriteConfig(const ExperimentConfig& config) {
  return WriteFileAtomically(path_ + "/config.textproto", {ConfigToText(config)}, kPlainFileMode);
}

std::string RunDirectory::model_path() const {
  return (std::filesystem::absolute(path_) / "model.pt").lexically_normal().string();
}

absl::Status RunDirectory::KeepModel(ExperimentConfig* config) {
  if (config->model().arch() != TORCHSCRIPT) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::shared_ptr<const std::string> bytes, TorchScriptBytes(*config));
  // Checked where the user put it, so that errors name their file.
  RETURN_IF_ERROR(LoadTorchScriptModel(bytes, config->model().torchscript_file(), *config).status());
  const std::string digest = TorchScriptDigest(*bytes);
  const std::string kept = model_path();
  if (std::filesystem::exists(kept)) {
    ExperimentConfig here = *config;
    here.mutable_model()->set_torchscript_file(kept);
    here.mutable_model()->set_torchscript_sha256("");
    ASSIGN_OR_RETURN(std::shared_ptr<const std::string> kept_bytes, TorchScriptBytes(here));
    if (TorchScriptDigest(*kept_bytes) != digest)
      return absl::FailedPreconditionError(absl::StrCat(
          "run directory ", path_, " holds another model (model.pt, SHA-256 ", TorchScriptDigest(*kept_bytes),
          ") than ", config->model().torchscript_file(), " (", digest, "); use a new run directory"));
  } else {
    RETURN_IF_ERROR(WriteFileAtomically(kept, {*bytes}, kPlainFileMode));
  }
  config->mutable_model()->set_torchscript_file(kept);
  config->mutable_model()->set_torchscript_sha256(digest);
  return absl::OkStatus();
}

namespace {

// The "round" field of one metrics line, or -1 if it has none.
int64_t RoundOf(const std::string& line) {
  constexpr char kField[] = "\"round\":";
  const size_t at = line.find(kField);
  if (at == std::string::npos) return -1;
  return std::strtoll(line.c_str() + at + sizeof(kField) - 1, nullptr, 10);
}

}  // namespace

absl::Status RunDirectory::TrimMetrics(int64_t round, bool finished) {
  const std::string path = path_ + "/metrics.jsonl";
  std::ifstream in(path);
  std::stringstream kept;
  std::string line;
  while (std::getline(in, line)) {
    if (in.eof()) break;  // no newline: torn by a crash
    const int64_t line_round = RoundOf(line);
    const bool final_eval = line.find("\"kind\":\"final_eval\"") != std::string::npos;
    if (line_round < 0 || line_round > round || (final_eval && !finished)) continue;
    kept << line << '\n';
  }
  in.close();
  RETURN_IF_ERROR(WriteFileAtomically(path, {kept.str()}, kPlainFileMode));
  return absl::OkStatus();
}

absl::Status RunDirectory::AppendMetrics(const std::string& json_object) {
  // Opened for each line, so that a file replaced under a long run (a git
  // checkout of a committed run directory) is written, not an unlinked one.
  std::ofstream metrics(path_ + "/metrics.jsonl", std::ios::app);
  metrics << json_object << '\n';
  metrics.flush();
  if (!metrics) return absl::InternalError(absl::StrCat("cannot append to ", path_, "/metrics.jsonl"));
  return absl::OkStatus();
}

}  // namespace reptile
