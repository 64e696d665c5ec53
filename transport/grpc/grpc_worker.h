// The worker's end of the gRPC runtime: joins a coordinator, pulls tasks,
// runs them on its Learner and streams the results back. Keeps a heartbeat
// going, fetches each state version once, retries with backoff while the
// coordinator is unreachable and joins again when it restarts.
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

 private:
  struct Session;
  Options options_;
  absl::Notification stop_;
};

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_GRPC_GRPC_WORKER_H_
