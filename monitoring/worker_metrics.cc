#include "monitoring/worker_metrics.h"

#include <string>

namespace reptile {
namespace {

prometheus::MetricFamily CounterFamily(const std::string& name, const std::string& help,
                                       std::vector<std::pair<std::string, double>> by_result) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = prometheus::MetricType::Counter;
  for (const auto& [result, value] : by_result) {
    prometheus::ClientMetric metric;
    if (!result.empty()) metric.label.push_back({"result", result});
    metric.counter.value = value;
    family.metric.push_back(metric);
  }
  return family;
}

}  // namespace

std::vector<prometheus::MetricFamily> WorkerMetrics::Collect() const {
  const WorkerStats stats = stats_();
  return {
      CounterFamily("reptile_worker_tasks_total", "Tasks this worker's learner ran, result=\"done\" or \"failed\"",
                    {{"done", static_cast<double>(stats.tasks_done)},
                     {"failed", static_cast<double>(stats.tasks_failed)}}),
      CounterFamily("reptile_worker_compute_seconds_total", "Wall time this worker spent running tasks",
                    {{"", stats.compute_seconds}}),
      CounterFamily("reptile_worker_idle_seconds_total",
                    "Wall time this worker's learners spent between tasks: no work pending, or waiting for a "
                    "lease, its state or the last result's upload",
                    {{"", stats.idle_seconds}}),
      CounterFamily("reptile_worker_retries_total",
                    "Calls to the coordinator tried again (unreachable, or a transient error)",
                    {{"", static_cast<double>(stats.retries)}}),
  };
}

}  // namespace reptile
