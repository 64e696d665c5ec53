// What a run reports as it goes, each an observer of the round engine's
// round reports (as monitoring's /metrics is), so that they cannot disagree:
// the run directory's metrics.jsonl and the progress line. Not thread-safe;
// the engine calls them from the thread that runs it.
#ifndef REPTILE_COORDINATOR_RUN_LOG_H_
#define REPTILE_COORDINATOR_RUN_LOG_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "coordinator/round_engine.h"
#include "coordinator/run_directory.h"

namespace reptile {

// One JSON object on one line, its fields in the order added: the only way
// metrics.jsonl lines are written. Keys and texts are this program's own
// names, written without escaping.
class JsonLine {
 public:
  explicit JsonLine(absl::string_view kind);
  JsonLine& Whole(absl::string_view key, int64_t value);
  JsonLine& Number(absl::string_view key, double value);  // %.6g
  std::string str() const { return text_ + "}"; }

 private:
  std::string text_;
};

// metrics.jsonl: a "round" line per runtime.metrics_every_rounds rounds (the
// means over them; a shorter window when Run() stops), an "eval" line per
// evaluation during training, a "final_eval" line for the final one.
class MetricsFile final : public RoundObserver {
 public:
  MetricsFile(RunDirectory* run_dir, int metrics_every_rounds)
      : run_dir_(run_dir), every_(metrics_every_rounds > 0 ? metrics_every_rounds : 1) {}
  absl::Status OnRound(const RoundReport& report) override;
  absl::Status OnFinalEvaluation(int64_t round, const EvaluationSummary& summary) override;
  absl::Status OnRunEnd() override;

 private:
  // The rounds since the last "round" line.
  struct Window {
    int64_t rounds = 0, accuracy_rounds = 0;
    double loss = 0, accuracy = 0, seconds = 0;
  };
  absl::Status WriteWindow();

  RunDirectory* const run_dir_;
  const int every_;
  Window window_;
  RoundReport last_;  // the window's last round
};

// The progress line: round, smoothed training loss and accuracy, the
// evaluation when one ran, rounds/s, workers and bytes, ETA. Written every
// runtime.log_every_seconds, at each evaluation and at the last round of a
// Run(); then the final evaluation's line.
class ProgressLine final : public RoundObserver {
 public:
  ProgressLine(std::function<void(const std::string&)> log, double every_seconds, bool classification)
      : log_(std::move(log)), every_seconds_(every_seconds), classification_(classification) {}
  absl::Status OnRound(const RoundReport& report) override;
  absl::Status OnFinalEvaluation(int64_t round, const EvaluationSummary& summary) override;
  absl::Status OnRunEnd() override;

 private:
  using Clock = std::chrono::steady_clock;
  const std::function<void(const std::string&)> log_;
  const double every_seconds_;
  const bool classification_;
  // Exponential moving averages (-1: none yet) since the Run() began.
  double loss_average_ = -1, accuracy_average_ = -1;
  Clock::time_point last_line_ = Clock::now();
};

}  // namespace reptile

#endif  // REPTILE_COORDINATOR_RUN_LOG_H_
