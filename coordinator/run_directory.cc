#include "coordinator/run_directory.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/config.h"

namespace reptile {

absl::StatusOr<std::unique_ptr<RunDirectory>> RunDirectory::Open(const std::string& path) {
  std::error_code error;
  std::filesystem::create_directories(path, error);
  if (error) return absl::PermissionDeniedError(absl::StrCat("cannot create run directory ", path, ": ", error.message()));
  std::unique_ptr<RunDirectory> dir(new RunDirectory(path));
  dir->metrics_.open(path + "/metrics.jsonl", std::ios::app);
  if (!dir->metrics_) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path, "/metrics.jsonl"));
  return dir;
}

bool RunDirectory::has_checkpoint() const { return std::filesystem::exists(checkpoint_path()); }

absl::Status RunDirectory::WriteConfig(const ExperimentConfig& config) {
  std::ofstream out(path_ + "/config.textproto", std::ios::trunc);
  out << ConfigToText(config);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path_, "/config.textproto"));
  return absl::OkStatus();
}

absl::Status RunDirectory::AppendMetrics(const std::string& json_object) {
  metrics_ << json_object << '\n';
  metrics_.flush();
  if (!metrics_) return absl::InternalError(absl::StrCat("cannot append to ", path_, "/metrics.jsonl"));
  return absl::OkStatus();
}

}  // namespace reptile
