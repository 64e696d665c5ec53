#include "coordinator/run_directory.h"

#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "coordinator/atomic_file.h"
#include "core/config.h"
#include "core/models/torchscript_model.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

// config.textproto and metrics.jsonl: readable by all, as an ofstream makes
// them (the umask applies).
constexpr mode_t kPlainFileMode = 0666;

}  // namespace

absl::StatusOr<std::unique_ptr<RunDirectory>> RunDirectory::Open(const std::string& path) {
  std::error_code error;
  std::filesystem::create_directories(path, error);
  if (error) return absl::PermissionDeniedError(absl::StrCat("cannot create run directory ", path, ": ", error.message()));
  std::unique_ptr<RunDirectory> dir(new RunDirectory(path));
  if (!std::ofstream(path + "/metrics.jsonl", std::ios::app)) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path, "/metrics.jsonl"));
  return dir;
}

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
