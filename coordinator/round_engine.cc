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

std::string FormatDuration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, s / 60 % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
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
      options_(std::move(options)) {}

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

absl::Status RoundEngine::Record(const std::string& json) {
  if (options_.run_dir == nullptr) return absl::OkStatus();
  return options_.run_dir->AppendMetrics(json);
}

absl::Status RoundEngine::SaveCheckpoint() {
  if (options_.run_dir == nullptr) return absl::OkStatus();
  RETURN_IF_ERROR(WriteCheckpoint(options_.run_dir->checkpoint_path(), state_));
  if (options_.observer != nullptr) options_.observer->OnCheckpoint(state_.round, absl::Now());
  return absl::OkStatus();
}

absl::StatusOr<RoundEngine::RoundStats> RoundEngine::RunRound() {
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
  RoundStats stats;
  stats.loss = loss;
  stats.accuracy = predictions > 0 ? double(correct) / predictions : -1;
  stats.step_size = epsilon;
  stats.seconds = std::chrono::duration<double>(Clock::now() - started).count();
  return stats;
}

absl::Status RoundEngine::RecordRounds(const MetricsWindow& window) {
  const double n = static_cast<double>(window.rounds);
  const TransportStats transport = transport_->Stats();
  std::string json = absl::StrFormat(
      R"({"kind":"round","round":%d,"rounds":%d,"loss":%.6g,"step_size":%.6g,"seconds":%.6g,"rounds_per_second":%.6g,"workers":%d,"tasks_in_flight":%d,"tasks_redone":%d,"bytes_in":%d,"bytes_out":%d)",
      state_.round, window.rounds, window.loss / n, window.step_size, window.seconds / n,
      n / std::max(window.seconds, 1e-9), transport.workers_alive, transport.tasks_in_flight, transport.tasks_redone,
      transport.bytes_in, transport.bytes_out);
  if (window.accuracy_rounds > 0) absl::StrAppendFormat(&json, R"(,"accuracy":%.6g)", window.accuracy / window.accuracy_rounds);
  return Record(json + "}");
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
  const bool classification = config_.task().family() != SINE;
  const int64_t first = state_.round;
  const auto start = Clock::now();
  auto last_log = start;
  // Exponential moving averages of the training loss and accuracy, for the progress line.
  double loss_average = -1, accuracy_average = -1;
  auto smooth = [](double average, double value) { return average < 0 ? value : 0.95 * average + 0.05 * value; };
  MetricsWindow window;
  while (state_.round < last && !stop_.load()) {
    absl::StatusOr<RoundStats> round_stats = RunRound();
    if (!round_stats.ok()) {
      // An abandoned round leaves the state as it was after the last one.
      if (absl::IsCancelled(round_stats.status()) && stop_.load()) break;
      RETURN_IF_ERROR(SaveCheckpoint());
      return round_stats.status();
    }
    const RoundStats& stats = *round_stats;
    window.Add(stats);
    if (options_.observer != nullptr) {
      RoundReport report;
      report.round = state_.round;
      report.rounds = rounds;
      report.loss = stats.loss;
      report.accuracy = stats.accuracy;
      report.step_size = stats.step_size;
      report.seconds = stats.seconds;
      report.rounds_per_second =
          (state_.round - first) / std::max(std::chrono::duration<double>(Clock::now() - start).count(), 1e-9);
      report.transport = transport_->Stats();
      options_.observer->OnRound(report);
    }
    const int64_t metrics_every = std::max(1, config_.runtime().metrics_every_rounds());
    if (state_.round % metrics_every == 0 || state_.round == last) {
      RETURN_IF_ERROR(RecordRounds(window));
      window = MetricsWindow();
    }
    loss_average = smooth(loss_average, stats.loss);
    if (stats.accuracy >= 0) accuracy_average = smooth(accuracy_average, stats.accuracy);
    const int64_t r = state_.round;
    const int64_t every = config_.runtime().checkpoint_every_rounds();
    if (every > 0 && r % every == 0) RETURN_IF_ERROR(SaveCheckpoint());
    const int64_t eval_every = config_.eval().every_rounds();
    std::string eval_text;
    if (eval_every > 0 && r % eval_every == 0 && r < rounds) {
      absl::StatusOr<EvaluationSummary> evaluated = Evaluate(config_.eval().episodes(), /*validation=*/true);
      if (!evaluated.ok()) {
        RETURN_IF_ERROR(SaveCheckpoint());
        if (absl::IsCancelled(evaluated.status()) && stop_.load()) break;
        return evaluated.status();
      }
      const EvaluationSummary& eval = *evaluated;
      if (options_.observer != nullptr) options_.observer->OnEvaluation(r, eval, /*final=*/false);
      RETURN_IF_ERROR(Record(absl::StrFormat(
          R"({"kind":"eval","round":%d,"episodes":%d,"accuracy":%.6g,"accuracy_ci95":%.6g,"accuracy_inductive":%.6g,"accuracy_inductive_ci95":%.6g,"loss":%.6g,"loss_ci95":%.6g})",
          r, eval.episodes, eval.accuracy, eval.accuracy_ci95, eval.accuracy_inductive, eval.accuracy_inductive_ci95,
          eval.loss, eval.loss_ci95)));
      eval_text = classification ? absl::StrFormat("  eval acc %.1f%%", 100 * eval.accuracy)
                                 : absl::StrFormat("  eval MSE %.4f", eval.loss);
    }
    const auto now = Clock::now();
    const double since_log = std::chrono::duration<double>(now - last_log).count();
    if (options_.log && (since_log >= config_.runtime().log_every_seconds() || !eval_text.empty() || r == last)) {
      const double elapsed = std::chrono::duration<double>(now - start).count();
      const double rate = (r - first) / std::max(elapsed, 1e-9);
      std::string train_text = absl::StrFormat("loss %.4f", loss_average);
      if (accuracy_average >= 0) absl::StrAppendFormat(&train_text, "  train acc %.1f%%", 100 * accuracy_average);
      const TransportStats transport = transport_->Stats();
      std::string workers_text = absl::StrFormat("workers %d", transport.workers_alive);
      if (transport.tasks_redone > 0) absl::StrAppendFormat(&workers_text, "  redone %d", transport.tasks_redone);
      if (transport.bytes_in + transport.bytes_out > 0)
        absl::StrAppendFormat(&workers_text, "  in %.1f MB out %.1f MB", transport.bytes_in / 1e6,
                              transport.bytes_out / 1e6);
      options_.log(absl::StrFormat("round %d/%d  %s%s  %.1f rounds/s  %s  ETA %s", r, rounds, train_text,
                                   eval_text, rate, workers_text,
                                   FormatDuration((rounds - r) / std::max(rate, 1e-9))));
      last_log = now;
    }
  }
  if (window.rounds > 0) RETURN_IF_ERROR(RecordRounds(window));
  RETURN_IF_ERROR(SaveCheckpoint());
  if (state_.finished) {  // finished before, final evaluation included
    if (options_.log)
      options_.log(absl::StrFormat("the run finished at round %d; nothing to do (`reptile eval` evaluates it)", first));
    return absl::OkStatus();
  }
  if (state_.round < rounds || stop_.load()) return absl::OkStatus();
  // The checkpoint says "finished" only once the final evaluation is
  // recorded: a run stopped during it evaluates again when resumed.
  if (config_.eval().final_episodes() > 0) {
    absl::StatusOr<EvaluationSummary> evaluated = Evaluate(config_.eval().final_episodes());
    if (absl::IsCancelled(evaluated.status()) && stop_.load()) return absl::OkStatus();
    RETURN_IF_ERROR(evaluated.status());
    const EvaluationSummary& final_eval = *evaluated;
    if (options_.observer != nullptr) options_.observer->OnEvaluation(state_.round, final_eval, /*final=*/true);
    if (options_.log) options_.log(absl::StrCat("final evaluation: ", FormatEvaluation(final_eval, classification)));
    RETURN_IF_ERROR(Record(absl::StrFormat(
        R"({"kind":"final_eval","round":%d,"episodes":%d,"accuracy":%.6g,"accuracy_ci95":%.6g,"accuracy_inductive":%.6g,"accuracy_inductive_ci95":%.6g,"loss":%.6g,"loss_ci95":%.6g})",
        state_.round, final_eval.episodes, final_eval.accuracy, final_eval.accuracy_ci95,
        final_eval.accuracy_inductive, final_eval.accuracy_inductive_ci95, final_eval.loss, final_eval.loss_ci95)));
  }
  state_.finished = true;
  return SaveCheckpoint();
}

}  // namespace reptile
