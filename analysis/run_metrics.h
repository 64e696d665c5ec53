// Reads a run directory's metrics.jsonl (coordinator/run_directory.h): the
// "round" lines (means over the `rounds` rounds each reports), the "eval"
// lines and the "final_eval" line the round engine writes. Stateless; the
// functions are thread-safe.
#ifndef REPTILE_ANALYSIS_RUN_METRICS_H_
#define REPTILE_ANALYSIS_RUN_METRICS_H_

#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace reptile {

constexpr double kMissing = std::numeric_limits<double>::quiet_NaN();

// One "round" line: means over its window of `rounds` rounds, ending at `round`.
struct RoundMetrics {
  int64_t round = 0, rounds = 0;
  double loss = kMissing;
  double accuracy = kMissing;  // classification only
  double seconds = kMissing;   // per round
  double rounds_per_second = kMissing;
  double workers = kMissing;
  // Training time up to the end of this window: the sum of rounds × seconds
  // over this line and the ones before it. Evaluations and pauses between a
  // stop and a resume are not counted.
  double wall_seconds = 0;
};

// One "eval" or "final_eval" line. Accuracies are fractions in [0, 1];
// fields a line does not have are kMissing (older "eval" lines have no
// accuracy_inductive_ci95; sine runs no accuracy).
struct EvalMetrics {
  int64_t round = 0;
  int episodes = 0;
  double accuracy = kMissing, accuracy_ci95 = kMissing;
  double accuracy_inductive = kMissing, accuracy_inductive_ci95 = kMissing;
  double loss = kMissing, loss_ci95 = kMissing;
};

struct RunMetrics {
  std::string name;  // the run directory's own name, e.g. "CARRY"
  std::vector<RoundMetrics> rounds;
  std::vector<EvalMetrics> evals;
  std::optional<EvalMetrics> final_eval;
  // Round lines carry a training accuracy (image classification, not sine).
  bool classification = false;
};

// Reads <run_dir>/metrics.jsonl. NotFound if it is missing, InvalidArgument
// naming the file (and line and field) if it has no lines, a line is not a
// flat JSON object with the fields of its kind, or a field holds what no run
// writes (a fractional or negative count, an accuracy outside [0, 1], a
// non-finite or absurdly large number): every value accepted can be drawn. Lines of other kinds are skipped, and
// so is a torn last line (no newline: the run is writing it, or crashed).
absl::StatusOr<RunMetrics> ReadRunMetrics(const std::string& run_dir);

// The same, on the file's contents `text`; errors name `path`.
absl::StatusOr<RunMetrics> ParseRunMetrics(std::string_view text, const std::string& path, std::string name);

// A flat JSON object: string keys to numbers, strings, booleans (as 0/1) or
// null (as NaN).
using JsonValue = std::variant<double, std::string>;
using FlatJsonObject = std::map<std::string, JsonValue, std::less<>>;

// Parses one line as a flat JSON object (no nested objects or arrays).
// InvalidArgument says what was expected at which column (1-based).
absl::StatusOr<FlatJsonObject> ParseFlatJsonObject(std::string_view text);

}  // namespace reptile

#endif  // REPTILE_ANALYSIS_RUN_METRICS_H_
