// A run's folder: config.textproto (the config as run), checkpoint.bin (the
// latest checkpoint), metrics.jsonl (one JSON object per line: training
// rounds, evaluations, the final evaluation) and, for a TORCHSCRIPT model,
// model.pt (the run's own copy of the module). Files that are rewritten are
// replaced atomically and durably (coordinator/atomic_file.h); metrics lines
// are appended. One process at a time holds a run directory: it keeps an
// exclusive lock on its `lock` file, which names the holder. Not
// thread-safe.
#ifndef REPTILE_COORDINATOR_RUN_DIRECTORY_H_
#define REPTILE_COORDINATOR_RUN_DIRECTORY_H_

#include <fstream>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "reptile.pb.h"

namespace reptile {

class RunDirectory {
 public:
  // Creates the folder if needed and locks it, then removes the temporary
  // files a crashed holder left. FailedPrecondition naming the holder (pid,
  // host, start time) if another process holds it.
  static absl::StatusOr<std::unique_ptr<RunDirectory>> Open(const std::string& path);
  ~RunDirectory();
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;

  const std::string& path() const { return path_; }
  std::string checkpoint_path() const { return path_ + "/checkpoint.bin"; }
  bool has_checkpoint() const;

  absl::Status WriteConfig(const ExperimentConfig& config);
  // For a TORCHSCRIPT `config`: copies its model file to model.pt (once; a
  // model.pt already here must hold the same bytes) and points `config` at
  // that copy, recording its SHA-256. Other configs are left as they are.
  absl::Status KeepModel(ExperimentConfig* config);
  std::string model_path() const;
  absl::Status AppendMetrics(const std::string& json_object);
  // Drops what metrics.jsonl recorded after the checkpoint it resumes from:
  // lines of rounds past `round`, a torn last line, and a final evaluation
  // unless `finished`. A resumed run then writes each round's line once.
  absl::Status TrimMetrics(int64_t round, bool finished);

 private:
  RunDirectory(std::string path, int lock_fd) : path_(std::move(path)), lock_fd_(lock_fd) {}
  std::string path_;
  int lock_fd_;  // holds the flock while open
};

}  // namespace reptile

#endif  // REPTILE_COORDINATOR_RUN_DIRECTORY_H_
