#include "coordinator/round_engine.h"

#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/aggregator.h"
#include "core/config.h"
#include "core/flat_parameters.h"
#include "core/models/models.h"
#include "core/status_macros.h"
#include "coordinator/run_log.h"

namespace reptile {
namespace {

using Clock = std::chrono::steady_clock;

// Mean and 95% confidence half-width (normal approximation) of `values`.
std::pair<double, double> MeanCi95(const std::vector<double>& values) {
  const double n = static_cast<double>(values.size());
  if (values.empty()) return {0, 0};
  double sum = 0;
  for (double v : values) sum += v;
  const double mean = sum / n;
  if (values.size() < 2) return {mean, 0};
  double squares = 0;
  for (double v : values) squares += (v - mean) * (v - mean);
  return {mean, 1.96 * std::sqrt(squares / (n - 1)) / std::sqrt(n)};
}

}  // namespace

std::string FormatEvaluation(const EvaluationSummary& s, bool classification) {
  if (!classification) return absl::StrFormat("query MSE %.4f ± %.4f over %d tasks", s.loss, s.loss_ci95, s.episodes);
  return absl::StrFormat("accuracy %.2f%% ± %.2f (transductive), %.2f%% ± %.2f (non-transductive) over %d episodes",
                         100 * s.accuracy, 100 * s.accuracy_ci95, 100 * s.accuracy_inductive,
                         100 * s.accuracy_inductive_ci95, s.episodes);
}

RoundEngine::RoundEngine(const ExperimentConfig& config, const TaskSource& tasks, Transport* transport,
                         Options options)
    : config_(config),
      sampler_(config, tasks.num_classes(false), tasks.num_classes(true), tasks.num_validation_classes()),
      transport_(transport),
      options_(std::move(options)) {
  if (options_.run_dir != nullptr)
    own_observers_.push_back(
        std::make_unique<MetricsFile>(options_.run_dir, config_.runtime().metrics_every_rounds()));
  if (options_.log)
    own_observers_.push_back(std::make_unique<ProgressLine>(options_.log, config_.runtime().log_every_seconds(),
                                                            config_.task().family() != SINE));
  for (const auto& observer : own_observers_) observers_.push_back(observer.get());
  if (options_.observer != nullptr) observers_.push_back(options_.observer);
}

absl::Status RoundEngine::Notify(const std::function<absl::Status(RoundObserver&)>& event) {
  absl::Status status;
  for (RoundObserver* observer : observers_) status.Update(event(*observer));
  return status;
}

absl::StatusOr<std::unique_ptr<RoundEngine>> RoundEngine::Create(const ExperimentConfig& config,
                                                                 const TaskSource& tasks, Transport* transport,
                                                                 Options options) {
  std::unique_ptr<RoundEngine> engine(new RoundEngine(config, tasks, transport, std::move(options)));
  RunDirectory* dir = engine->options_.run_dir;
  if (dir != nullptr && dir->has_checkpoint()) {
    ASSIGN_OR_RETURN(engine->state_, ReadCheckpoint(dir->checkpoint_path()));
    // Runtime settings (workers, checkpoint and log cadence) and where the
    // model file lies may change on resume; everything that determines the
    // parameters (the model's digest among them) may not.
    ExperimentConfig saved = engine->state_.config, wanted = config;
    for (ExperimentConfig* c : {&saved, &wanted}) {
      c->clear_runtime();
      c->mutable_model()->clear_torchscript_file();
    }
    const std::string differences = ConfigDifferences(saved, wanted);
    if (!differences.empty())
      return absl::FailedPreconditionError(absl::StrCat("run directory ", dir->path(),
                                                        " holds a run with another config; use a new run "
                                                        "directory or the same config. Differences: ",
                                                        differences));
    engine->state_.config = config;
    RETURN_IF_ERROR(dir->TrimMetrics(engine->state_.round, engine->state_.finished));
    return engine;
  }
  ASSIGN_OR_RETURN(std::shared_ptr<MetaModel> model, MakeModel(config, config.seed()));
  FlatParameters flat(*model);
  if (dir != nullptr) RETURN_IF_ERROR(CheckCheckpointFits(config, flat.numel()));
  engine->state_.config = config;
  engine->state_.layout = flat.layout();
  engine->state_.meta.parameters = flat.values().clone();
  const CarriedMoments carried = CarriedMomentsOf(config);
  if (carried.first) engine->state_.meta.adam_m = torch::zeros_like(flat.values());
  if (carried.second) engine->state_.meta.adam_v = torch::zeros_like(flat.values());
  if (dir != nullptr) RETURN_IF_ERROR(dir->WriteConfig(config));
  return engine;
}

absl::StatusOr<std::unique_ptr<RoundEngine>> RoundEngine::Restore(TrainingState state, const TaskSource& tasks,
                                                                  Transport* transport, Options options) {
  RETURN_IF_ERROR(ValidateConfig(state.config));
  std::unique_ptr<RoundEngine> engine(new RoundEngine(state.config, tasks, transport, std::move(options)));
  engine->state_ = std::move(state);
  return engine;
}

double RoundEngine::StepSize(int64_t round) const {
  const double done = static_cast<double>(round) / static_cast<double>(config_.outer().rounds());
  return (1.0 - done) * config_.outer().step_size() + done * config_.outer().step_size_final();
}

absl::Status RoundEngine::SaveCheckpoint() {
  if (options_.run_dir == nullptr) return absl::OkStatus();
  RETURN_IF_ERROR(WriteCheckpoint(options_.run_dir->checkpoint_path(), state_));
  const absl::Time when = absl::Now();
  return Notify([&](RoundObserver& o) { return o.OnCheckpoint(state_.round, when); });
}

absl::StatusOr<RoundReport> RoundEngine::RunRound() {
  const int64_t round = state_.round;
  const auto started = Clock::now();
  const std::vector<WorkItem> items = sampler_.TrainingItems(round);
  const double epsilon = StepSize(round);
  transport_->AnnounceUpdate(epsilon, config_.inner().iterations());
  std::vector<int> item_tasks;
  for (const WorkItem& item : items) item_tasks.push_back(static_cast<int>(item.tasks.size()));
  // Results are added as they arrive (the sums do not depend on the order);
  // the scalars are kept by item and totalled in item order.
  Aggregator aggregator(state_.meta.parameters.numel(), item_tasks, CarriedMomentsOf(config_));
  std::vector<TaskResult> scalars(items.size());
  RETURN_IF_ERROR(transport_->Run(state_.meta, items, [&](size_t item, TaskResult result) -> absl::Status {
    TaskResult kept;
    kept.loss = result.loss;
    kept.correct = result.correct;
    kept.predictions = result.predictions;
    RETURN_IF_ERROR(aggregator.Add(static_cast<int>(item), std::move(result)));
    scalars[item] = kept;
    return absl::OkStatus();
  }));
  const double meta_batch = config_.outer().meta_batch_size();
  double loss = 0;
  int64_t correct = 0, predictions = 0;
  for (size_t i = 0; i < scalars.size(); ++i) {
    loss += scalars[i].loss * item_tasks[i] / meta_batch;
    correct += scalars[i].correct;
    predictions += scalars[i].predictions;
  }
  RETURN_IF_ERROR(aggregator.Apply(epsilon, config_.inner().iterations(), &state_.meta));
  state_.round = round + 1;
  RoundReport report;
  report.round = state_.round;
  report.rounds = config_.outer().rounds();
  report.loss = loss;
  report.accuracy = predictions > 0 ? double(correct) / predictions : -1;
  report.step_size = epsilon;
  report.seconds = std::chrono::duration<double>(Clock::now() - started).count();
  report.transport = transport_->Stats();
  return report;
}

absl::StatusOr<EvaluationSummary> RoundEngine::Evaluate(int episodes, bool validation) {
  const std::vector<WorkItem> items = sampler_.EvaluationItems(episodes, validation);
  std::vector<TaskResult> results(items.size());
  RETURN_IF_ERROR(transport_->Run(state_.meta, items, [&results](size_t item, TaskResult result) {
    results[item] = std::move(result);
    return absl::OkStatus();
  }));
  std::vector<double> accuracy, inductive, loss;
  for (const TaskResult& r : results) {
    loss.push_back(r.loss);
    if (r.predictions > 0) {
      accuracy.push_back(double(r.correct) / r.predictions);
      inductive.push_back(double(r.correct_inductive) / r.predictions);
    }
  }
  EvaluationSummary summary;
  summary.episodes = episodes;
  std::tie(summary.accuracy, summary.accuracy_ci95) = MeanCi95(accuracy);
  std::tie(summary.accuracy_inductive, summary.accuracy_inductive_ci95) = MeanCi95(inductive);
  std::tie(summary.loss, summary.loss_ci95) = MeanCi95(loss);
  return summary;
}

absl::Status RoundEngine::Run(int64_t until_round) {
  const int64_t rounds = config_.outer().rounds();
  const int64_t last = until_round >= 0 ? std::min(until_round, rounds) : rounds;
  const int64_t first = state_.round;
  const auto start = Clock::now();
  while (state_.round < last && !stop_.load()) {
    absl::StatusOr<RoundReport> report = RunRound();
    if (!report.ok()) {
      // An abandoned round leaves the state as it was after the last one.
      if (absl::IsCancelled(report.status()) && stop_.load()) break;
      RETURN_IF_ERROR(SaveCheckpoint());
      return report.status();
    }
    report->last = state_.round == last;
    report->rounds_per_second =
        (state_.round - first) / std::max(std::chrono::duration<double>(Clock::now() - start).count(), 1e-9);
    const absl::Status evaluated = EvaluateIfDue(&*report);
    RETURN_IF_ERROR(Notify([&](RoundObserver& o) { return o.OnRound(*report); }));
    if (!evaluated.ok()) {
      RETURN_IF_ERROR(SaveCheckpoint());
      if (absl::IsCancelled(evaluated) && stop_.load()) break;
      return evaluated;
    }
    const int64_t every = config_.runtime().checkpoint_every_rounds();
    if (every > 0 && state_.round % every == 0) RETURN_IF_ERROR(SaveCheckpoint());
  }
  RETURN_IF_ERROR(Notify([](RoundObserver& o) { return o.OnRunEnd(); }));
  RETURN_IF_ERROR(SaveCheckpoint());
  return FinishRun(first);
}

absl::Status RoundEngine::EvaluateIfDue(RoundReport* report) {
  const int64_t every = config_.eval().every_rounds();
  if (every <= 0 || report->round % every != 0 || report->round >= report->rounds) return absl::OkStatus();
  ASSIGN_OR_RETURN(report->evaluation, Evaluate(config_.eval().episodes(), /*validation=*/true));
  return absl::OkStatus();
}

absl::Status RoundEngine::FinishRun(int64_t first_round) {
  if (state_.finished) {  // finished before, final evaluation included
    if (options_.log)
      options_.log(
          absl::StrFormat("the run finished at round %d; nothing to do (`reptile eval` evaluates it)", first_round));
    return absl::OkStatus();
  }
  if (state_.round < config_.outer().rounds() || stop_.load()) return absl::OkStatus();
  // The checkpoint says "finished" only once the final evaluation is
  // recorded: a run stopped during it evaluates again when resumed.
  if (config_.eval().final_episodes() > 0) {
    absl::StatusOr<EvaluationSummary> evaluated = Evaluate(config_.eval().final_episodes());
    if (absl::IsCancelled(evaluated.status()) && stop_.load()) return absl::OkStatus();
    RETURN_IF_ERROR(evaluated.status());
    RETURN_IF_ERROR(Notify([&](RoundObserver& o) { return o.OnFinalEvaluation(state_.round, *evaluated); }));
  }
  state_.finished = true;
  return SaveCheckpoint();
}

}  // namespace reptile
