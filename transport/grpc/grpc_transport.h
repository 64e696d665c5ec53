// The coordinator's end of the gRPC runtime. Serves the Coordinator service
// (proto/coordinator.proto) and runs each batch of work items on whichever
// worker processes have joined, leasing items by the LeaseScheduler's policy:
// an item is redone when its worker leaves, goes silent, hoards, is evicted
// or sends a result that does not check out. Results come back in item
// order, so the round engine cannot tell it from threads. Every peer is
// bounded: a lease or two each, one upload per lease, streams that must keep
// moving, gRPC's own message, stream, thread and memory limits.
#ifndef REPTILE_TRANSPORT_GRPC_GRPC_TRANSPORT_H_
#define REPTILE_TRANSPORT_GRPC_GRPC_TRANSPORT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "transport/grpc/security.h"
#include "transport/transport.h"

namespace reptile {

// 2: a state or result says whether Adam's m is in it (has_first_moment).
// 3: work items of several tasks, whose results are exact sums.
// 4: states and results as files in a shared folder, over the Unix socket.
// 5: a TORCHSCRIPT run's model goes to workers (FetchModel, model_sha256).
// 6: a node's learners: several leases per reply, one upload (one sum) for them.
inline constexpr uint32_t kProtocolVersion = 6;

// Why `workers` workers for the training items of `config`'s rounds waste cores.
std::string IdleWorkersWarning(int workers, const ExperimentConfig& config);

class GrpcTransport final : public Transport {
 public:
  struct Options {
    std::string listen_address = "127.0.0.1:0";  // port 0: any free port, see port()
    TlsFiles tls;
    std::string token;
    // Serve a non-loopback address without TLS and a token; otherwise
    // Create() refuses to. Logged as a warning at every start.
    bool insecure = false;
    // Also serve this Unix domain socket (a path), for worker processes on
    // this machine: no TCP stack between them and the coordinator. Without
    // TLS; the token still applies, and the socket's folder should admit
    // only this user.
    std::string unix_socket;
    // A folder on this machine (on tmpfs, admitting only this user) where
    // workers that came over `unix_socket` find each state as a file and
    // leave their results as files (transport/wire/shared_folder.h).
    // Empty: every tensor goes on the streams.
    std::string shared_folder;
    std::function<void(const std::string&)> log;  // joins, losses, refusals
  };

  // What the server may hold for `max_workers` workers (runtime.max_workers).
  struct ServerBounds {
    int threads = 0;                 // gRPC's thread quota
    int64_t grpc_memory_bytes = 0;   // gRPC's buffer memory quota
  };
  static ServerBounds Bounds(int max_workers) {
    // Per worker: a long-poll, a heartbeat, a state fetch and two uploads.
    return ServerBounds{6 * max_workers + 32, int64_t{64 << 20} + int64_t{max_workers} * (4 << 20)};
  }

  // Starts serving. `config` is the run's; workers must match it.
  // FailedPrecondition for a non-loopback address without TLS and a token
  // (unless options.insecure), Unavailable if the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<GrpcTransport>> Create(const ExperimentConfig& config, Options options);
  ~GrpcTransport() override;
  GrpcTransport(const GrpcTransport&) = delete;
  GrpcTransport& operator=(const GrpcTransport&) = delete;

  absl::Status Run(const MetaState& state, const std::vector<WorkItem>& items, const ResultSink& take) override;
  int num_workers() const override;
  TransportStats Stats() const override;
  void Interrupt(const std::string& why) override;

  // The port the server listens on.
  int port() const { return port_; }

  // Tells every worker the run is over (FINISHED on its next request) and
  // waits up to `grace` for them to leave, and for one dropped for silence
  // less than `grace` ago to come back and be told. Only a finished run calls it:
  // destroying the transport otherwise leaves workers waiting to rejoin.
  void Finish(absl::Duration grace);

 private:
  class Service;
  class StateSender;  // one FetchState stream
  struct Board;  // shared by the service, the reaper and Run()
  GrpcTransport();
  void ReapLoop();

  std::unique_ptr<Board> board_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::thread reaper_;
};

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_GRPC_GRPC_TRANSPORT_H_
