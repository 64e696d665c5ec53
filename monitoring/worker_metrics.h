// A worker's Prometheus metrics, read from GrpcWorker::stats() at each
// scrape: tasks done, compute seconds, retries (README "Monitoring").
// Register it with a MetricsServer; `worker` must outlive the server.
#ifndef REPTILE_MONITORING_WORKER_METRICS_H_
#define REPTILE_MONITORING_WORKER_METRICS_H_

#include <vector>

#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "transport/grpc/grpc_worker.h"

namespace reptile {

class WorkerMetrics final : public prometheus::Collectable {
 public:
  explicit WorkerMetrics(const GrpcWorker* worker) : worker_(worker) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const GrpcWorker* worker_;
};

}  // namespace reptile

#endif  // REPTILE_MONITORING_WORKER_METRICS_H_
