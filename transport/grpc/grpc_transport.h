// The coordinator's end of the gRPC runtime. Serves the Coordinator service
// (proto/coordinator.proto) and runs each batch of work items on whichever
// worker processes have joined: every item is leased to one worker with a
// deadline, and redone by another when its worker leaves, stops sending
// heartbeats, fails or sends a result that does not check out. Results come
// back in item order, so the round engine cannot tell it from threads.
#ifndef REPTILE_TRANSPORT_GRPC_GRPC_TRANSPORT_H_
#define REPTILE_TRANSPORT_GRPC_GRPC_TRANSPORT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "transport/grpc/security.h"
#include "transport/transport.h"

namespace reptile {

inline constexpr uint32_t kProtocolVersion = 1;

class GrpcTransport final : public Transport {
 public:
  struct Options {
    std::string listen_address = "127.0.0.1:0";  // port 0: any free port, see port()
    TlsFiles tls;
    std::string token;
    std::function<void(const std::string&)> log;  // joins, losses, refusals
  };

  // Starts serving. `config` is the run's; workers must match it.
  static absl::StatusOr<std::unique_ptr<GrpcTransport>> Create(const ExperimentConfig& config, Options options);
  ~GrpcTransport() override;
  GrpcTransport(const GrpcTransport&) = delete;
  GrpcTransport& operator=(const GrpcTransport&) = delete;

  absl::StatusOr<std::vector<TaskResult>> Run(const MetaState& state,
                                              const std::vector<WorkItem>& items) override;
  int num_workers() const override;
  TransportStats Stats() const override;
  void Interrupt(const std::string& why) override;

  // The port the server listens on.
  int port() const { return port_; }

  // Tells every worker the run is over (FINISHED on its next request) and
  // waits up to `grace` for them to leave.
  void Finish(absl::Duration grace);

 private:
  class Service;
  struct Board;
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
