#include "monitoring/coordinator_metrics.h"

#include <algorithm>

namespace reptile {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;

// Every reason a result can be refused for, so that each series exists (at 0)
// from the first scrape; "other" counts refusals a transport does not label.
constexpr const char* kRefusalReasons[] = {"invalid_result", "worker_error",     "upload_too_slow",
                                           "no_header",      "too_many_streams", "other"};

}  // namespace

// Long because it is the table of every series /metrics exports, one member
// initializer each, in the order the header declares them.
CoordinatorMetrics::CoordinatorMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      round_(BuildGauge()
                 .Name("reptile_round")
                 .Help("Meta-training rounds done (the round a resumed run continues from included)")
                 .Register(*registry_)
                 .Add({})),
      rounds_target_(BuildGauge()
                         .Name("reptile_rounds_target")
                         .Help("Rounds the run trains for (outer.rounds)")
                         .Register(*registry_)
                         .Add({})),
      rounds_total_(BuildCounter()
                        .Name("reptile_rounds_total")
                        .Help("Rounds completed by this coordinator process")
                        .Register(*registry_)
                        .Add({})),
      rounds_per_second_(BuildGauge()
                             .Name("reptile_rounds_per_second")
                             .Help("Rounds per second since this coordinator process started training")
                             .Register(*registry_)
                             .Add({})),
      round_duration_(BuildGauge()
                          .Name("reptile_round_duration_seconds")
                          .Help("Wall time of the last round")
                          .Register(*registry_)
                          .Add({})),
      training_loss_(BuildGauge()
                         .Name("reptile_training_loss")
                         .Help("Mean inner-loop loss over the last round's meta-batch")
                         .Register(*registry_)
                         .Add({})),
      training_accuracy_(BuildGauge()
                             .Name("reptile_training_accuracy_ratio")
                             .Help("Inner-loop minibatch accuracy of the last round, 0 to 1 (classification)")
                             .Register(*registry_)),
      eval_accuracy_(BuildGauge()
                         .Name("reptile_eval_accuracy_ratio")
                         .Help("Few-shot accuracy of the last evaluation, 0 to 1, mode=\"transductive\" (queries "
                               "in one batch) or \"non_transductive\" (each query alone with the support set)")
                         .Register(*registry_)),
      eval_loss_(BuildGauge()
                     .Name("reptile_eval_loss")
                     .Help("Mean query loss of the last evaluation (MSE for sine)")
                     .Register(*registry_)),
      eval_round_(BuildGauge()
                      .Name("reptile_eval_round")
                      .Help("Round of the last evaluation")
                      .Register(*registry_)),
      workers_alive_(BuildGauge()
                         .Name("reptile_workers_alive")
                         .Help("Workers serving the coordinator")
                         .Register(*registry_)
                         .Add({})),
      tasks_in_flight_(BuildGauge()
                           .Name("reptile_tasks_in_flight")
                           .Help("Most tasks running at once in the last batch")
                           .Register(*registry_)
                           .Add({})),
      tasks_redone_(BuildCounter()
                        .Name("reptile_tasks_redone_total")
                        .Help("Tasks run again: leases lost, refused, timed out or copied from stragglers")
                        .Register(*registry_)
                        .Add({})),
      results_refused_(BuildCounter()
                           .Name("reptile_results_refused_total")
                           .Help("Results refused, by reason")
                           .Register(*registry_)),
      workers_evicted_(BuildCounter()
                           .Name("reptile_workers_evicted_total")
                           .Help("Workers evicted (refused too often, hoarding or hung)")
                           .Register(*registry_)
                           .Add({})),
      received_bytes_(BuildCounter()
                          .Name("reptile_received_bytes_total")
                          .Help("Payload bytes received from workers")
                          .Register(*registry_)
                          .Add({})),
      sent_bytes_(BuildCounter()
                      .Name("reptile_sent_bytes_total")
                      .Help("Payload bytes sent to workers")
                      .Register(*registry_)
                      .Add({})),
      last_checkpoint_(BuildGauge()
                           .Name("reptile_last_checkpoint_timestamp_seconds")
                           .Help("When the last checkpoint was written, in Unix seconds")
                           .Register(*registry_)) {
  for (const char* reason : kRefusalReasons) results_refused_.Add({{"reason", reason}});
}

void CoordinatorMetrics::Advance(prometheus::Counter& counter, int64_t total, int64_t* seen) {
  if (total > *seen) counter.Increment(static_cast<double>(total - *seen));
  *seen = std::max(*seen, total);
}

void CoordinatorMetrics::SetRound(int64_t round, int64_t rounds) {
  round_.Set(static_cast<double>(round));
  rounds_target_.Set(static_cast<double>(rounds));
}

absl::Status CoordinatorMetrics::OnRound(const RoundReport& report) {
  SetRound(report.round, report.rounds);
  rounds_total_.Increment();
  rounds_per_second_.Set(report.rounds_per_second);
  round_duration_.Set(report.seconds);
  training_loss_.Set(report.loss);
  {
    absl::MutexLock lock(&mu_);
    if (report.accuracy >= 0) training_accuracy_.Add({}).Set(report.accuracy);
  }
  ApplyTransport(report.transport);
  if (report.evaluation.has_value()) SetEvaluation(report.round, *report.evaluation);
  return absl::OkStatus();
}

std::vector<prometheus::MetricFamily> CoordinatorMetrics::Collect() const {
  if (live_stats_) ApplyTransport(live_stats_());
  return registry_->Collect();
}

void CoordinatorMetrics::ApplyTransport(const TransportStats& t) const {
  absl::MutexLock lock(&mu_);
  workers_alive_.Set(t.workers_alive);
  tasks_in_flight_.Set(t.tasks_in_flight);
  Advance(tasks_redone_, t.tasks_redone, &tasks_redone_seen_);
  Advance(workers_evicted_, t.workers_evicted, &workers_evicted_seen_);
  Advance(received_bytes_, t.bytes_in, &received_seen_);
  Advance(sent_bytes_, t.bytes_out, &sent_seen_);
  // Reasons this code does not know, and refusals without one, count as "other".
  int64_t known_total = 0;
  for (const auto& [reason, count] : t.results_refused_by_reason) {
    if (reason == "other" || std::find(std::begin(kRefusalReasons), std::end(kRefusalReasons), reason) ==
                                 std::end(kRefusalReasons))
      continue;
    known_total += count;
    Advance(results_refused_.Add({{"reason", reason}}), count, &refused_seen_[reason]);
  }
  Advance(results_refused_.Add({{"reason", "other"}}), t.results_refused - known_total, &refused_seen_["other"]);
}

absl::Status CoordinatorMetrics::OnFinalEvaluation(int64_t round, const EvaluationSummary& summary) {
  SetEvaluation(round, summary);
  return absl::OkStatus();
}

void CoordinatorMetrics::SetEvaluation(int64_t round, const EvaluationSummary& summary) {
  absl::MutexLock lock(&mu_);
  eval_round_.Add({}).Set(static_cast<double>(round));
  eval_loss_.Add({}).Set(summary.loss);
  if (summary.accuracy > 0 || summary.accuracy_inductive > 0) {
    eval_accuracy_.Add({{"mode", "transductive"}}).Set(summary.accuracy);
    eval_accuracy_.Add({{"mode", "non_transductive"}}).Set(summary.accuracy_inductive);
  }
}

absl::Status CoordinatorMetrics::OnCheckpoint(int64_t round, absl::Time when) {
  absl::MutexLock lock(&mu_);
  last_checkpoint_.Add({}).Set(absl::ToDoubleSeconds(when - absl::UnixEpoch()));
  return absl::OkStatus();
}

}  // namespace reptile
