// Experiment configs: read from protobuf text format, overridden field by
// field from the command line, validated before anything trains.
#ifndef REPTILE_CORE_CONFIG_H_
#define REPTILE_CORE_CONFIG_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "reptile.pb.h"

namespace reptile {

// Parses `text` (protobuf text format); errors name `source`, line and column.
absl::StatusOr<ExperimentConfig> ParseConfig(const std::string& text,
                                             const std::string& source);

// Reads the file at `path`, applies each "field.path=value" override in
// order, and validates the result.
absl::StatusOr<ExperimentConfig> LoadConfig(const std::string& path,
                                            const std::vector<std::string>& overrides);

// Sets one field named by its dotted path, e.g. "inner.iterations=10" or
// "task.family=OMNIGLOT". Unknown fields and unparsable values are errors.
absl::Status ApplyOverride(const std::string& assignment, ExperimentConfig* config);

// Checks every field a run depends on; the error names the field and says
// what is wrong with it.
absl::Status ValidateConfig(const ExperimentConfig& config);

// One line: family, ways/shots, model, inner and outer loop settings.
std::string ConfigSummary(const ExperimentConfig& config);

// Work items in a training round: outer.meta_batch_size tasks in items of
// runtime.tasks_per_item.
int TrainingItemsPerRound(const ExperimentConfig& config);

// Text-format rendering, as written to a run directory.
std::string ConfigToText(const ExperimentConfig& config);

// SHA-256 of everything in `config` that decides the parameters a run
// reaches: all but its name, runtime section, dataset location and the
// path of its TorchScript model (whose digest it keeps).
std::string ConfigFingerprint(const ExperimentConfig& config);

// Empty if equal, else a description of the first differences.
std::string ConfigDifferences(const ExperimentConfig& a, const ExperimentConfig& b);

}  // namespace reptile

#endif  // REPTILE_CORE_CONFIG_H_
