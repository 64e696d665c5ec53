// A worker's Prometheus metrics, read from its WorkerStats at each scrape:
// tasks done, compute seconds, retries (docs/monitoring.md). Register it
// with a MetricsServer; what `stats` reads must outlive the server.
#ifndef REPTILE_MONITORING_WORKER_METRICS_H_
#define REPTILE_MONITORING_WORKER_METRICS_H_

#include <functional>
#include <utility>
#include <vector>

#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "transport/transport.h"

namespace reptile {

class WorkerMetrics final : public prometheus::Collectable {
 public:
  explicit WorkerMetrics(std::function<WorkerStats()> stats) : stats_(std::move(stats)) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  std::function<WorkerStats()> stats_;
};

}  // namespace reptile

#endif  // REPTILE_MONITORING_WORKER_METRICS_H_
