// Checkpoints: the config, the rounds completed and the meta-state, in one
// file written atomically (temporary file, fsync, rename, fsync of the
// directory) and guarded by a SHA-256 of its contents, so that a torn or
// corrupt file is reported as such and never loaded. The sampler is
// counter-based, so the round is its state.
#ifndef REPTILE_COORDINATOR_CHECKPOINT_H_
#define REPTILE_COORDINATOR_CHECKPOINT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "reptile.pb.h"
#include "core/work.h"

namespace reptile {

struct TrainingState {
  ExperimentConfig config;
  int64_t round = 0;      // rounds completed
  bool finished = false;  // the final evaluation is done and recorded
  std::vector<ParameterShape> layout;
  MetaState meta;
};

// Replaces `path`; the file is readable and writable by its owner only
// (0600), as it holds the whole model. Errors name the file.
absl::Status WriteCheckpoint(const std::string& path, const TrainingState& state);

// NotFound if there is no file; PermissionDenied (or another errno's code) if
// it cannot be read; DataLoss if it is truncated, corrupt, not a checkpoint,
// or its layout and tensors disagree; each message names the file.
absl::StatusOr<TrainingState> ReadCheckpoint(const std::string& path);

// The same from the file's contents `file`; `path` names it in errors.
absl::StatusOr<TrainingState> ParseCheckpoint(const std::string& file, const std::string& path);

// SHA-256 (hex) of the parameters' fp32 bytes, in flat order.
std::string ParameterFingerprint(const torch::Tensor& parameters);

// OK if the checkpoints of a run of `config` with `numel` parameters fit a
// checkpoint file (at most 2 GiB of tensors and config: protobuf's limit);
// else InvalidArgument saying how large they would be, so that a run too
// large to checkpoint stops before its first round, not at its first
// checkpoint.
absl::Status CheckCheckpointFits(const ExperimentConfig& config, int64_t numel);

}  // namespace reptile

#endif  // REPTILE_COORDINATOR_CHECKPOINT_H_
