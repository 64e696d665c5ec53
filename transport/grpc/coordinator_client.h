// The client side of proto/coordinator.proto, the one place that speaks it:
// the worker process, the benchmarks' simulated workers and the protocol
// tests all call the coordinator through this class. Every call carries the
// token and a deadline; failures come back as absl::Status with gRPC's code
// and message. Thread-safe: calls may run concurrently.
#ifndef REPTILE_TRANSPORT_GRPC_COORDINATOR_CLIENT_H_
#define REPTILE_TRANSPORT_GRPC_COORDINATOR_CLIENT_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "coordinator.grpc.pb.h"
#include "transport/grpc/security.h"
#include "core/work.h"

namespace reptile {

// Codes that mean "not now" rather than "never": the coordinator is
// restarting, stopping, unreachable or busy.
bool IsTransient(const absl::Status& status);

class CoordinatorClient {
 public:
  static absl::StatusOr<std::unique_ptr<CoordinatorClient>> Connect(const std::string& address,
                                                                    const SecurityOptions& security);
  // Over an existing channel (tests that share one connection).
  CoordinatorClient(std::shared_ptr<grpc::Channel> channel, std::string token);

  // Replaces the channel with a new one to the address given to Connect():
  // a new name resolution and a new connection. Calls in progress finish on
  // the old channel. For a worker whose coordinator has been unreachable for
  // a while: a channel that saw its address vanish (a container stopped and
  // started again) can keep failing its connection handshakes after the
  // coordinator is back, where a new one connects at once. Does nothing on
  // a client made over an existing channel. Safe to call while other
  // threads make calls.
  void Reconnect();

  absl::StatusOr<RunConfigReply> GetRunConfig();
  // A TORCHSCRIPT run's model file, whose SHA-256 must be `sha256`.
  // DataLoss if the coordinator announces more than `max_bytes`, sends
  // other than it announced, or the bytes do not match the digest.
  absl::StatusOr<std::string> FetchModel(const std::string& sha256, uint64_t max_bytes);
  absl::StatusOr<JoinReply> Join(const JoinRequest& request);
  absl::Status Heartbeat(uint64_t worker);
  // Long-polls for up to a second on the coordinator's side. A worker that
  // reads the shared folder says so and names the state it holds (0: none);
  // a lease on another state then carries that state's folder header
  // (WorkReply.folder_state, for ReadFolderState()).
  absl::StatusOr<WorkReply> GetWork(uint64_t worker, bool shared_folder = false, uint64_t held_state_version = 0,
                                    int finished_leases = 0);
  absl::Status Leave(uint64_t worker);

  // The meta-state of `version`, checked against the model the caller
  // expects: `numel` parameters and the Adam moments of `moments` (from the
  // worker's config: v when CARRY, m too unless adam_beta1 is 0).
  // DataLoss if what arrives does not fit. With `shared_folder` (the
  // folder JoinReply named, for a worker on the Unix socket) the tensors
  // are read from the folder's state file when the coordinator offers it;
  // FailedPrecondition if that file is gone (the batch ended).
  absl::StatusOr<MetaState> FetchState(uint64_t worker, uint64_t version, int64_t numel, CarriedMoments moments,
                                       const std::string& shared_folder = "");

  // The messages of one result upload: the header, then the delta in
  // `dtype` and the Adam moments it holds (m, then v) in fp32, or for an
  // item of several tasks their exact sums, in chunks. A failed `result` is
  // sent as an error header alone. With `shared_folder`, the tensors are
  // written to the folder's result file instead and the header says so (in
  // chunks after all if the file cannot be written).
  static std::vector<ResultChunk> ResultMessages(uint64_t worker, const WorkReply& work,
                                                 const absl::StatusOr<TaskResult>& result, DeltaDtype dtype,
                                                 int64_t numel, const std::string& shared_folder = "");
  // Sends `messages` as one SubmitResult stream, exactly as given.
  absl::StatusOr<SubmitReply> Submit(const std::vector<ResultChunk>& messages);

  // One SubmitResult stream driven message by message (what Submit does in
  // one go); for tests that must pace or stall an upload.
  class Upload {
   public:
    // False once the server has ended the call.
    bool Write(const ResultChunk& message) { return writer_->Write(message); }
    // Half-closes and returns the server's answer.
    absl::StatusOr<SubmitReply> Finish();

   private:
    friend class CoordinatorClient;
    std::shared_ptr<Coordinator::Stub> stub_;  // keeps the call's channel: destroyed last
    grpc::ClientContext context_;
    SubmitReply reply_;
    std::unique_ptr<grpc::ClientWriter<ResultChunk>> writer_;
  };
  std::unique_ptr<Upload> StartUpload(std::chrono::seconds deadline);

 private:
  template <typename Call>
  absl::Status Unary(std::chrono::seconds deadline, Call call);

  // The current stub (and through it its channel); calls take a copy.
  std::shared_ptr<Coordinator::Stub> stub() const;

  std::string address_;  // "" when made over an existing channel
  SecurityOptions security_;
  std::string token_;
  mutable absl::Mutex mu_;
  std::shared_ptr<Coordinator::Stub> stub_ ABSL_GUARDED_BY(mu_);
};

// The state of `version` from the shared folder's file, as its folder header
// (WorkReply.folder_state) describes it, checked as FetchState() checks a
// fetched one: DataLoss if it does not fit, FailedPrecondition if the file
// is gone (the batch ended).
absl::StatusOr<MetaState> ReadFolderState(const StateHeader& header, uint64_t version, int64_t numel,
                                          CarriedMoments moments, const std::string& shared_folder);

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_GRPC_COORDINATOR_CLIENT_H_
