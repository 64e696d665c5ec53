// The coordinator's side of Reptile, the one round engine every runtime
// shares: holds theta (and Adam's moments in CARRY mode), samples each
// round's meta-batch, hands it to the Transport, aggregates the results in
// slot order and applies the annealed outer step; evaluates every
// eval.every_rounds rounds and at the end; checkpoints to the run directory
// and resumes from it. Sees only the Transport, never a network.
// Not thread-safe, except RequestStop().
#ifndef REPTILE_COORDINATOR_ROUND_ENGINE_H_
#define REPTILE_COORDINATOR_ROUND_ENGINE_H_

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/checkpoint.h"
#include "coordinator/run_directory.h"
#include "coordinator/task_sampler.h"
#include "core/tasks/task_source.h"
#include "transport/transport.h"

namespace reptile {

// Few-shot results over many episodes: means with 95% confidence half-widths.
// Accuracy fields are fractions in [0, 1], unset (0) for sine regression.
struct EvaluationSummary {
  int episodes = 0;
  double accuracy = 0, accuracy_ci95 = 0;                      // transductive
  double accuracy_inductive = 0, accuracy_inductive_ci95 = 0;  // non-transductive
  double loss = 0, loss_ci95 = 0;                              // query loss (MSE for sine)
};

std::string FormatEvaluation(const EvaluationSummary& summary, bool classification);

// One finished training round, as the engine reports it to observers.
struct RoundReport {
  int64_t round = 0;              // rounds done, this one included
  int64_t rounds = 0;             // outer.rounds
  bool last = false;              // the last round this Run() will do
  double loss = 0;                // mean inner-loop loss over the meta-batch
  double accuracy = -1;           // inner minibatch accuracy; -1 for regression
  double step_size = 0;           // the outer step applied
  double seconds = 0;             // wall time of the round
  double rounds_per_second = 0;   // since this Run() started
  TransportStats transport;       // the transport's counters after the round
  // The evaluation (of the validation split, eval.every_rounds) run after
  // this round, if one was.
  std::optional<EvaluationSummary> evaluation;
};

// Hears what the engine does: metrics.jsonl and the progress line
// (run_log.h), /metrics (monitoring/). Called on the thread running
// RoundEngine::Run(), between rounds; must not block for long or call back
// into the engine. An error stops the run (after a checkpoint where one is
// due). The default methods do nothing.
class RoundObserver {
 public:
  virtual ~RoundObserver() = default;
  virtual absl::Status OnRound(const RoundReport& report) { return absl::OkStatus(); }
  // The final evaluation (eval.final_episodes, of the test split) at `round`.
  virtual absl::Status OnFinalEvaluation(int64_t round, const EvaluationSummary& summary) {
    return absl::OkStatus();
  }
  // A checkpoint of `round` was written (and synced) at `when`.
  virtual absl::Status OnCheckpoint(int64_t round, absl::Time when) { return absl::OkStatus(); }
  // Run() has stopped training (done, stopped or failed), before its last
  // checkpoint and the final evaluation.
  virtual absl::Status OnRunEnd() { return absl::OkStatus(); }
};

class RoundEngine {
 public:
  struct Options {
    RunDirectory* run_dir = nullptr;  // no checkpoints or metrics if null
    // Progress lines (round, loss, accuracy, rounds/s, ETA); none if empty.
    std::function<void(const std::string&)> log;
    // Told of every round, evaluation and checkpoint; none if null. Must
    // outlive the engine.
    RoundObserver* observer = nullptr;
  };

  // Resumes from the run directory's checkpoint if it has one (its config
  // must equal `config` but for the runtime section), else starts from parameters drawn from config.seed.
  static absl::StatusOr<std::unique_ptr<RoundEngine>> Create(const ExperimentConfig& config,
                                                             const TaskSource& tasks, Transport* transport,
                                                             Options options);

  // Continues from an explicit state (e.g. a checkpoint read for `eval`).
  static absl::StatusOr<std::unique_ptr<RoundEngine>> Restore(TrainingState state, const TaskSource& tasks,
                                                              Transport* transport, Options options);

  // Trains until outer.rounds are done, `until_round` is reached (if >= 0) or
  // RequestStop() is called, checkpointing when it stops. After the last
  // round it runs the final evaluation (eval.final_episodes); a run already
  // finished when Run() is called returns at once.
  absl::Status Run(int64_t until_round = -1);

  // Asks Run() to stop soon: the round in progress is abandoned (a resumed
  // run redoes it) and Run() checkpoints and returns OK. Thread-safe, but not
  // async-signal-safe.
  void RequestStop() {
    stop_.store(true);
    transport_->Interrupt("stop requested");
  }

  // `episodes` evaluation episodes of the meta-test split, or with
  // `validation` of the validation split where the dataset has one (the
  // evaluations during training; the final one and `reptile eval` use test).
  absl::StatusOr<EvaluationSummary> Evaluate(int episodes, bool validation = false);
  absl::Status SaveCheckpoint();

  int64_t round() const { return state_.round; }
  const MetaState& meta_state() const { return state_.meta; }
  const TrainingState& training_state() const { return state_; }
  std::string Fingerprint() const { return ParameterFingerprint(state_.meta.parameters); }

  // epsilon for `round`: linear from outer.step_size to outer.step_size_final.
  double StepSize(int64_t round) const;

 private:
  RoundEngine(const ExperimentConfig& config, const TaskSource& tasks, Transport* transport, Options options);
  // Trains one round; the report's timing and evaluation are the caller's.
  absl::StatusOr<RoundReport> RunRound();
  // The evaluation of the validation split into `report`, if one is due
  // after its round.
  absl::Status EvaluateIfDue(RoundReport* report);
  // The final evaluation once the last round is done, then the finished
  // checkpoint.
  absl::Status FinishRun(int64_t first_round);
  // Calls `event` on every observer; the first error is returned.
  absl::Status Notify(const std::function<absl::Status(RoundObserver&)>& event);

  ExperimentConfig config_;
  TaskSampler sampler_;
  Transport* transport_;
  Options options_;
  TrainingState state_;
  // metrics.jsonl and the progress line (run_log.h), as options ask.
  std::vector<std::unique_ptr<RoundObserver>> own_observers_;
  std::vector<RoundObserver*> observers_;  // those, then options.observer
  std::atomic<bool> stop_{false};
};

}  // namespace reptile

#endif  // REPTILE_COORDINATOR_ROUND_ENGINE_H_
