// The coordinator's Prometheus metrics: a RoundObserver that turns what the
// round engine reports (its round statistics, evaluations, checkpoints and
// the transport's counters) into gauges and counters, named by Prometheus
// conventions (docs/monitoring.md). Register it with a MetricsServer.
// Thread-safe: the engine's thread updates, the server's thread reads.
#ifndef REPTILE_MONITORING_COORDINATOR_METRICS_H_
#define REPTILE_MONITORING_COORDINATOR_METRICS_H_

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "coordinator/round_engine.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace reptile {

class CoordinatorMetrics final : public RoundObserver, public prometheus::Collectable {
 public:
  CoordinatorMetrics();

  // Reads the transport's counters at each scrape too, not only after each
  // round (so that workers_alive falls while a round waits for workers).
  // `stats` must be thread-safe and outlive every scrape. Call before serving.
  void SetLiveTransportStats(std::function<TransportStats()> stats) { live_stats_ = std::move(stats); }

  // The series, as of now.
  std::vector<prometheus::MetricFamily> Collect() const override;

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // The round the engine starts (or resumes) at, before its first round ends.
  void SetRound(int64_t round, int64_t rounds);

  absl::Status OnRound(const RoundReport& report) override;
  absl::Status OnFinalEvaluation(int64_t round, const EvaluationSummary& summary) override;
  absl::Status OnCheckpoint(int64_t round, absl::Time when) override;

 private:
  // Moves a counter up to `total`, a transport's running count.
  static void Advance(prometheus::Counter& counter, int64_t total, int64_t* seen);
  void ApplyTransport(const TransportStats& stats) const;
  // The eval_* gauges, from an evaluation at `round`.
  void SetEvaluation(int64_t round, const EvaluationSummary& summary);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Gauge& round_;
  prometheus::Gauge& rounds_target_;
  prometheus::Counter& rounds_total_;
  prometheus::Gauge& rounds_per_second_;
  prometheus::Gauge& round_duration_;
  prometheus::Gauge& training_loss_;
  prometheus::Family<prometheus::Gauge>& training_accuracy_;
  prometheus::Family<prometheus::Gauge>& eval_accuracy_;
  prometheus::Family<prometheus::Gauge>& eval_loss_;
  prometheus::Family<prometheus::Gauge>& eval_round_;
  prometheus::Gauge& workers_alive_;
  prometheus::Gauge& tasks_in_flight_;
  prometheus::Counter& tasks_redone_;
  prometheus::Family<prometheus::Counter>& results_refused_;
  prometheus::Counter& workers_evicted_;
  prometheus::Counter& received_bytes_;
  prometheus::Counter& sent_bytes_;
  prometheus::Family<prometheus::Gauge>& last_checkpoint_;

  std::function<TransportStats()> live_stats_;

  // The running counts below, and metrics added on first use; mutable:
  // a scrape (const) may apply the transport's counters.
  mutable absl::Mutex mu_;
  mutable int64_t tasks_redone_seen_ ABSL_GUARDED_BY(mu_) = 0;
  mutable int64_t workers_evicted_seen_ ABSL_GUARDED_BY(mu_) = 0;
  mutable int64_t received_seen_ ABSL_GUARDED_BY(mu_) = 0;
  mutable int64_t sent_seen_ ABSL_GUARDED_BY(mu_) = 0;
  mutable std::map<std::string, int64_t> refused_seen_ ABSL_GUARDED_BY(mu_);
};

}  // namespace reptile

#endif  // REPTILE_MONITORING_COORDINATOR_METRICS_H_
