// The worker's end of the gRPC runtime: joins a coordinator as one node,
// pulls up to one item per learner thread at a time, runs them at once and
// streams their results back as one upload, the training tensors summed
// exactly (one sum per node and round, whatever the learners). The learners
// share one connection, the dataset and one copy of each state version.
// Keeps heartbeats going, retries with backoff while the coordinator is
// unreachable and joins again when it restarts.
#ifndef REPTILE_TRANSPORT_GRPC_GRPC_WORKER_H_
#define REPTILE_TRANSPORT_GRPC_GRPC_WORKER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "transport/grpc/security.h"
#include "transport/transport.h"
#include "reptile.pb.h"

namespace reptile {

class GrpcWorker {
 public:
  struct Options {
    std::string coordinator;  // host:port
    SecurityOptions security;
    // The worker's own config, checked against the coordinator's at join;
    // without one the worker uses the coordinator's.
    std::optional<ExperimentConfig> config;
    std::string data_dir;  // overrides task.data_dir (the dataset's place on this node)
    std::string name;      // shown in the coordinator's log
    // Learner threads (a node's cores), each running one item at a time:
    // one state fetch and one upload a round serve them all.
    int learners = 1;
    std::function<void(const std::string&)> log;
  };

  explicit GrpcWorker(Options options);
  ~GrpcWorker();

  // Works until the coordinator says the run is over or Stop() is called
  // (both OK). Fails when the worker cannot take part at all: its dataset or
  // model cannot be built, or the coordinator refuses it (wrong token,
  // certificate, config or version).
  absl::Status Run();

  // Finishes the task in hand, leaves the coordinator and makes Run() return.
  // Thread-safe.
  void Stop();

  // What the worker has done since it was made. Thread-safe.
  WorkerStats stats() const;

 private:
  struct Session;
  struct Counters {
    std::atomic<int64_t> tasks_done{0}, tasks_failed{0}, compute_microseconds{0}, idle_microseconds{0}, retries{0};
  };
  static WorkerStats StatsOf(const Counters& counters);
  Options options_;
  absl::Notification stop_;
  Counters counters_;
};

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_GRPC_GRPC_WORKER_H_
