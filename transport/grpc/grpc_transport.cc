#include "transport/grpc/grpc_transport.h"

#include <cmath>
#include <deque>
#include <map>
#include <optional>
#include <random>
#include <thread>

#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "coordinator.grpc.pb.h"
#include "core/config.h"
#include "core/flat_parameters.h"
#include "core/models/models.h"
#include "core/status_macros.h"
#include "transport/grpc/tensor_stream.h"

namespace reptile {
namespace {

constexpr absl::Duration kLongPoll = absl::Seconds(1);
constexpr absl::Duration kReapEvery = absl::Milliseconds(100);

grpc::Status Refusal(grpc::StatusCode code, const std::string& message) { return grpc::Status(code, message); }

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

// The meta-state of one batch, frozen as the bytes workers fetch.
struct Snapshot {
  uint64_t version = 0;
  int64_t numel = 0;
  bool has_moments = false;
  int64_t adam_step = 0;
  std::string parameters, adam_m, adam_v;  // fp32
};

struct Lease {
  size_t item = 0;
  uint64_t worker = 0;
  absl::Time granted, deadline;
  bool active = true;  // false once redone elsewhere; a late result still counts
};

struct WorkerRecord {
  std::string name, peer;
  absl::Time last_seen;
};

}  // namespace

// Everything the RPC handlers, the reaper and Run() share, under one mutex.
struct GrpcTransport::Board {
  std::string config_fingerprint, layout_fingerprint;
  ExperimentConfig config;
  std::string token;
  std::function<void(const std::string&)> log;
  absl::Duration heartbeat, worker_timeout, task_timeout;
  int max_attempts = 4;
  uint64_t incarnation = 0;

  mutable absl::Mutex mu;
  std::mt19937_64 id_generator ABSL_GUARDED_BY(mu){std::random_device{}()};
  uint64_t next_lease_id ABSL_GUARDED_BY(mu) = 1;
  uint64_t last_version ABSL_GUARDED_BY(mu) = 0;
  std::map<uint64_t, WorkerRecord> workers ABSL_GUARDED_BY(mu);
  // The batch in progress; snapshot is null between batches.
  std::shared_ptr<const Snapshot> snapshot ABSL_GUARDED_BY(mu);
  const std::vector<WorkItem>* items ABSL_GUARDED_BY(mu) = nullptr;
  std::vector<std::optional<TaskResult>> results ABSL_GUARDED_BY(mu);
  std::vector<int> failures ABSL_GUARDED_BY(mu);
  std::vector<bool> backed_up ABSL_GUARDED_BY(mu);  // a second copy was handed out
  absl::Duration typical_task ABSL_GUARDED_BY(mu);  // moving average, lease to result
  std::deque<size_t> pending ABSL_GUARDED_BY(mu);
  std::map<uint64_t, Lease> leases ABSL_GUARDED_BY(mu);
  size_t remaining ABSL_GUARDED_BY(mu) = 0;
  std::string failed ABSL_GUARDED_BY(mu);       // an item failed max_attempts times
  std::string interrupted ABSL_GUARDED_BY(mu);  // why Interrupt() was called
  int active_leases ABSL_GUARDED_BY(mu) = 0;
  bool finished ABSL_GUARDED_BY(mu) = false;
  bool shutting_down ABSL_GUARDED_BY(mu) = false;
  TransportStats stats ABSL_GUARDED_BY(mu);

  void Log(const std::string& line) const {
    if (log) log(line);
  }

  // Puts the lease's item back at the front of the queue unless it is done.
  void Redo(uint64_t lease_id, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = leases.find(lease_id);
    if (it == leases.end() || !it->second.active) return;
    it->second.active = false;
    --active_leases;
    if (results[it->second.item].has_value()) return;
    pending.push_front(it->second.item);
    ++stats.tasks_redone;
    Log(absl::StrCat("task ", it->second.item, " (lease ", lease_id, ") is redone: ", why));
  }

  void DropWorker(uint64_t worker_id, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = workers.find(worker_id);
    if (it == workers.end()) return;
    Log(absl::StrCat("worker ", worker_id, " (", it->second.name, ") ", why, "; ", workers.size() - 1, " left"));
    workers.erase(it);
    for (auto& [id, lease] : leases)
      if (lease.worker == worker_id && lease.active) Redo(id, absl::StrCat("worker ", worker_id, " ", why));
  }

  // NOT_FOUND for an unknown worker (never joined, timed out, or joined a
  // previous coordinator); otherwise marks it alive.
  grpc::Status Touch(uint64_t worker_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = workers.find(worker_id);
    if (it == workers.end())
      return Refusal(grpc::StatusCode::NOT_FOUND, absl::StrCat("unknown worker ", worker_id, "; join again"));
    it->second.last_seen = absl::Now();
    return grpc::Status::OK;
  }

  // A task whose worker is taking far longer than tasks usually take (a hung
  // process, a stalled connection) is handed to an idle worker as well; the
  // first result counts. Each task gets one such copy.
  std::optional<size_t> Straggler(uint64_t idle_worker) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const absl::Time now = absl::Now();
    const absl::Duration patience = std::max(absl::Seconds(2), 5 * typical_task);
    for (const auto& [id, lease] : leases) {
      if (!lease.active || lease.worker == idle_worker || results[lease.item].has_value() ||
          backed_up[lease.item] || now - lease.granted < patience)
        continue;
      backed_up[lease.item] = true;
      ++stats.tasks_redone;
      Log(absl::StrFormat("task %d (lease %d) has run %.1f s on worker %d; a second copy goes to worker %d",
                          lease.item, id, absl::ToDoubleSeconds(now - lease.granted), lease.worker, idle_worker));
      return lease.item;
    }
    return std::nullopt;
  }

  bool HasPending() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return finished || shutting_down || !pending.empty();
  }
};

class GrpcTransport::Service final : public Coordinator::Service {
 public:
  explicit Service(Board* board) : board_(board) {}

  grpc::Status GetRunConfig(grpc::ServerContext* context, const RunConfigRequest*, RunConfigReply* reply) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    *reply->mutable_config() = board_->config;
    reply->set_protocol_version(kProtocolVersion);
    return grpc::Status::OK;
  }

  grpc::Status Join(grpc::ServerContext* context, const JoinRequest* request, JoinReply* reply) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    if (request->protocol_version() != kProtocolVersion)
      return Refusal(grpc::StatusCode::FAILED_PRECONDITION,
                     absl::StrCat("worker speaks protocol ", request->protocol_version(), "; this coordinator ",
                                  kProtocolVersion, ": run the same reptile version on both"));
    if (request->config_fingerprint() != board_->config_fingerprint)
      return Refusal(grpc::StatusCode::FAILED_PRECONDITION,
                     absl::StrCat("worker's config fingerprint ", request->config_fingerprint().substr(0, 16),
                                  " differs from the coordinator's ", board_->config_fingerprint.substr(0, 16),
                                  ": start the worker without --config to use the coordinator's"));
    if (request->layout_fingerprint() != board_->layout_fingerprint)
      return Refusal(grpc::StatusCode::FAILED_PRECONDITION,
                     absl::StrCat("worker's model layout fingerprint ", request->layout_fingerprint().substr(0, 16),
                                  " differs from the coordinator's ", board_->layout_fingerprint.substr(0, 16),
                                  ": run the same reptile version on both"));
    absl::MutexLock lock(&board_->mu);
    // Random ids: a worker of a previous coordinator must never pass for a
    // worker of this one.
    uint64_t id = 0;
    while (id == 0 || board_->workers.count(id)) id = board_->id_generator();
    board_->workers[id] = WorkerRecord{request->worker_name().substr(0, 200), context->peer(), absl::Now()};
    board_->Log(absl::StrCat("worker ", id, " (", request->worker_name().substr(0, 200), " at ", context->peer(),
                             ") joined; ", board_->workers.size(), " alive"));
    reply->set_worker_id(id);
    reply->set_incarnation(board_->incarnation);
    reply->set_heartbeat_seconds(absl::ToDoubleSeconds(board_->heartbeat));
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext* context, const HeartbeatRequest* request, HeartbeatReply*) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    absl::MutexLock lock(&board_->mu);
    return board_->Touch(request->worker_id());
  }

  grpc::Status Leave(grpc::ServerContext* context, const LeaveRequest* request, LeaveReply*) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    absl::MutexLock lock(&board_->mu);
    board_->DropWorker(request->worker_id(), "left");
    return grpc::Status::OK;
  }

  grpc::Status GetWork(grpc::ServerContext* context, const WorkRequest* request, WorkReply* reply) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    Board& b = *board_;
    absl::MutexLock lock(&b.mu);
    if (grpc::Status s = b.Touch(request->worker_id()); !s.ok()) return s;
    b.mu.AwaitWithTimeout(absl::Condition(&b, &Board::HasPending), kLongPoll);
    if (b.finished || b.shutting_down) {
      reply->set_kind(WorkReply::FINISHED);
      return grpc::Status::OK;
    }
    // Items done by a late result may still sit in the queue.
    while (!b.pending.empty() && b.results[b.pending.front()].has_value()) b.pending.pop_front();
    std::optional<size_t> next;
    if (b.workers.count(request->worker_id()) && b.snapshot != nullptr) {
      if (!b.pending.empty()) {
        next = b.pending.front();
        b.pending.pop_front();
      } else {
        next = b.Straggler(request->worker_id());
      }
    }
    if (!next.has_value()) {
      reply->set_kind(WorkReply::WAIT);
      return grpc::Status::OK;
    }
    const size_t item = *next;
    const uint64_t lease_id = b.next_lease_id++;
    const absl::Time now = absl::Now();
    b.leases[lease_id] = Lease{item, request->worker_id(), now, now + b.task_timeout, true};
    b.stats.tasks_in_flight = std::max(b.stats.tasks_in_flight, ++b.active_leases);
    const WorkItem& work = (*b.items)[item];
    reply->set_kind(work.kind == WorkKind::kTrain ? WorkReply::TRAIN : WorkReply::EVALUATE);
    reply->set_lease_id(lease_id);
    reply->set_state_version(b.snapshot->version);
    *reply->mutable_spec() = work.spec;
    return grpc::Status::OK;
  }

  grpc::Status FetchState(grpc::ServerContext* context, const FetchStateRequest* request,
                          grpc::ServerWriter<StateChunk>* writer) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    std::shared_ptr<const Snapshot> snapshot;
    {
      absl::MutexLock lock(&board_->mu);
      if (grpc::Status s = board_->Touch(request->worker_id()); !s.ok()) return s;
      snapshot = board_->snapshot;
      if (snapshot == nullptr || snapshot->version != request->state_version())
        return Refusal(grpc::StatusCode::FAILED_PRECONDITION,
                       absl::StrCat("state version ", request->state_version(), " is not current (",
                                    snapshot ? snapshot->version : 0, ")"));
    }
    StateChunk message;
    StateHeader* header = message.mutable_header();
    header->set_state_version(snapshot->version);
    header->set_num_parameters(snapshot->numel);
    header->set_has_moments(snapshot->has_moments);
    header->set_adam_step(snapshot->adam_step);
    if (!writer->Write(message)) return Refusal(grpc::StatusCode::CANCELLED, "worker went away");
    std::vector<const std::string*> tensors = {&snapshot->parameters};
    if (snapshot->has_moments) tensors.insert(tensors.end(), {&snapshot->adam_m, &snapshot->adam_v});
    int64_t sent = 0;
    const bool complete = WriteChunks(tensors, [&](const TensorChunk& chunk) {
      *message.mutable_chunk() = chunk;
      sent += chunk.data().size();
      return writer->Write(message);
    });
    absl::MutexLock lock(&board_->mu);
    board_->stats.bytes_out += sent;
    return complete ? grpc::Status::OK : Refusal(grpc::StatusCode::CANCELLED, "worker went away");
  }

  grpc::Status SubmitResult(grpc::ServerContext* context, grpc::ServerReader<ResultChunk>* reader,
                            SubmitReply* reply) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    ResultChunk message;
    if (!reader->Read(&message) || !message.has_header())
      return Refusal(grpc::StatusCode::INVALID_ARGUMENT, "a result stream must start with its ResultHeader");
    const ResultHeader header = message.header();
    Board& b = *board_;
    std::shared_ptr<const Snapshot> snapshot;
    WorkKind kind;
    size_t item;
    {
      absl::MutexLock lock(&b.mu);
      b.Touch(header.worker_id()).ok();  // a worker given up on may still deliver
      if (b.snapshot == nullptr || header.state_version() != b.snapshot->version)
        return Refusal(grpc::StatusCode::FAILED_PRECONDITION,
                       absl::StrCat("stale result: lease ", header.lease_id(), " ran on state version ",
                                    header.state_version(), "; the current one is ",
                                    b.snapshot ? b.snapshot->version : 0));
      auto lease = b.leases.find(header.lease_id());
      if (lease == b.leases.end())
        return Refusal(grpc::StatusCode::NOT_FOUND, absl::StrCat("unknown lease ", header.lease_id()));
      if (lease->second.worker != header.worker_id())
        return Refusal(grpc::StatusCode::PERMISSION_DENIED,
                       absl::StrCat("lease ", header.lease_id(), " belongs to worker ", lease->second.worker,
                                    ", not ", header.worker_id()));
      item = lease->second.item;
      if (b.results[item].has_value()) {
        reply->set_duplicate(true);
        return grpc::Status::OK;
      }
      if (!header.error().empty()) {
        RecordFailure(header.lease_id(), item, header.error());
        return grpc::Status::OK;
      }
      snapshot = b.snapshot;
      kind = (*b.items)[item].kind;
    }
    absl::StatusOr<TaskResult> result = ReadResult(header, kind, *snapshot, reader);
    absl::MutexLock lock(&b.mu);
    if (!result.ok()) {
      if (b.snapshot == snapshot) b.Redo(header.lease_id(), std::string(result.status().message()));
      return ToGrpc(result.status());
    }
    if (b.snapshot != snapshot)
      return Refusal(grpc::StatusCode::FAILED_PRECONDITION, "stale result: the batch ended while it arrived");
    if (b.results[item].has_value()) {
      reply->set_duplicate(true);
      return grpc::Status::OK;
    }
    b.results[item] = std::move(result).value();
    Lease& lease = b.leases[header.lease_id()];
    const absl::Duration took = absl::Now() - lease.granted;
    b.typical_task = b.typical_task == absl::ZeroDuration() ? took : 0.9 * b.typical_task + 0.1 * took;
    if (lease.active) --b.active_leases;
    lease.active = false;
    --b.remaining;
    return grpc::Status::OK;
  }

 private:
  void RecordFailure(uint64_t lease_id, size_t item, const std::string& error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(board_->mu) {
    Board& b = *board_;
    const int failures = ++b.failures[item];
    if (failures >= b.max_attempts && b.failed.empty())
      b.failed = absl::StrCat("work item ", item, " failed on ", failures, " attempts; last: ", error.substr(0, 500));
    b.Redo(lease_id, absl::StrCat("the worker failed: ", error.substr(0, 500)));
  }

  // Reads the rest of a result stream and checks it against what the task
  // must return. Every failure is InvalidArgument saying what is wrong.
  absl::StatusOr<TaskResult> ReadResult(const ResultHeader& header, WorkKind kind, const Snapshot& snapshot,
                                        grpc::ServerReader<ResultChunk>* reader) {
    const bool train = kind == WorkKind::kTrain;
    auto invalid = [&](const std::string& what) {
      return absl::InvalidArgumentError(absl::StrCat("lease ", header.lease_id(), ": ", what));
    };
    if (header.has_delta() != train)
      return invalid(train ? "a training task must return a delta" : "an evaluation episode returns no delta");
    if (train && header.num_parameters() != snapshot.numel)
      return invalid(absl::StrCat("delta has ", header.num_parameters(), " parameters; the model has ",
                                  snapshot.numel));
    const size_t element = DeltaDtypeBytes(header.delta_dtype());
    if (train && element == 0) return invalid(absl::StrCat("unknown delta dtype ", header.delta_dtype()));
    if (header.has_moments() != (train && snapshot.has_moments))
      return invalid(snapshot.has_moments ? "Adam's moments must come with the delta (CARRY)"
                                          : "unexpected Adam moments");
    if (!std::isfinite(header.loss())) return invalid(absl::StrCat("loss is ", header.loss()));
    if (header.predictions() < 0 || header.correct() < 0 || header.correct() > header.predictions() ||
        header.correct_inductive() < 0 || header.correct_inductive() > header.predictions())
      return invalid("prediction counts are inconsistent");
    std::vector<size_t> sizes;
    if (train) sizes.push_back(static_cast<size_t>(snapshot.numel) * element);
    if (header.has_moments()) sizes.insert(sizes.end(), 2, static_cast<size_t>(snapshot.numel) * 4);
    TensorAssembler assembler(sizes);
    ResultChunk message;
    while (reader->Read(&message)) {
      if (!message.has_chunk()) return invalid("a result stream has one header, at its start");
      absl::Status added = assembler.Add(message.chunk());
      if (!added.ok()) return invalid(std::string(added.message()));
    }
    {
      absl::MutexLock lock(&board_->mu);
      board_->stats.bytes_in += assembler.bytes_received();
    }
    if (absl::Status done = assembler.Finish(); !done.ok()) return invalid(std::string(done.message()));
    TaskResult result;
    if (train) {
      absl::StatusOr<torch::Tensor> delta = DecodeTensor(assembler.bytes(0), header.delta_dtype(), snapshot.numel);
      if (!delta.ok()) return invalid(absl::StrCat("delta: ", delta.status().message()));
      result.delta = *std::move(delta);
    }
    if (header.has_moments()) {
      absl::StatusOr<torch::Tensor> m = DecodeTensor(assembler.bytes(1), DELTA_FP32, snapshot.numel);
      if (!m.ok()) return invalid(absl::StrCat("adam_m: ", m.status().message()));
      absl::StatusOr<torch::Tensor> v = DecodeTensor(assembler.bytes(2), DELTA_FP32, snapshot.numel);
      if (!v.ok()) return invalid(absl::StrCat("adam_v: ", v.status().message()));
      if (v->lt(0).any().item<bool>()) return invalid("adam_v has negative entries");
      result.adam_m = *std::move(m);
      result.adam_v = *std::move(v);
    }
    result.loss = header.loss();
    result.correct = header.correct();
    result.correct_inductive = header.correct_inductive();
    result.predictions = header.predictions();
    result.compute_seconds = header.compute_seconds();
    return result;
  }

  Board* board_;
};

GrpcTransport::GrpcTransport() : board_(std::make_unique<Board>()) {}

absl::StatusOr<std::unique_ptr<GrpcTransport>> GrpcTransport::Create(const ExperimentConfig& config,
                                                                     Options options) {
  std::unique_ptr<GrpcTransport> transport(new GrpcTransport());
  Board& b = *transport->board_;
  ASSIGN_OR_RETURN(std::shared_ptr<MetaModel> model, MakeModel(config, std::nullopt));
  b.layout_fingerprint = LayoutFingerprint(FlatParameters(*model).layout());
  b.config_fingerprint = ConfigFingerprint(config);
  b.config = config;
  b.token = options.token;
  b.log = options.log;
  const RuntimeConfig& r = config.runtime();
  auto seconds_or = [](float value, double fallback) { return absl::Seconds(value > 0 ? value : fallback); };
  b.heartbeat = seconds_or(r.heartbeat_seconds(), 1);
  b.worker_timeout = seconds_or(r.worker_timeout_seconds(), 6);
  b.task_timeout = seconds_or(r.task_timeout_seconds(), 600);
  b.max_attempts = r.max_task_attempts() > 0 ? r.max_task_attempts() : 4;
  b.incarnation = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);

  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials, MakeServerCredentials(options.tls));
  transport->service_ = std::make_unique<Service>(&b);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, credentials, &transport->port_);
  builder.RegisterService(transport->service_.get());
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8 << 20);
  transport->server_ = builder.BuildAndStart();
  if (transport->server_ == nullptr || transport->port_ == 0)
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen_address,
                                               " (address in use, or not an address of this host?)"));
  transport->server_->GetHealthCheckService()->SetServingStatus("reptile.Coordinator", true);
  transport->reaper_ = std::thread(&GrpcTransport::ReapLoop, transport.get());
  return transport;
}

GrpcTransport::~GrpcTransport() {
  {
    absl::MutexLock lock(&board_->mu);
    board_->shutting_down = true;
  }
  if (reaper_.joinable()) reaper_.join();
  if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

void GrpcTransport::ReapLoop() {
  Board& b = *board_;
  absl::MutexLock lock(&b.mu);
  while (!b.shutting_down) {
    b.mu.AwaitWithTimeout(absl::Condition(&b.shutting_down), kReapEvery);
    const absl::Time now = absl::Now();
    std::vector<uint64_t> silent;
    for (const auto& [id, worker] : b.workers)
      if (now - worker.last_seen > b.worker_timeout) silent.push_back(id);
    for (uint64_t id : silent)
      b.DropWorker(id, absl::StrFormat("lost: no word for %.1f s", absl::ToDoubleSeconds(b.worker_timeout)));
    for (auto& [id, lease] : b.leases)
      if (lease.active && now > lease.deadline)
        b.Redo(id, absl::StrFormat("not done within runtime.task_timeout_seconds (%.0f s)",
                                   absl::ToDoubleSeconds(b.task_timeout)));
  }
}

absl::StatusOr<std::vector<TaskResult>> GrpcTransport::Run(const MetaState& state,
                                                           const std::vector<WorkItem>& items) {
  auto snapshot = std::make_shared<Snapshot>();
  snapshot->numel = state.parameters.numel();
  snapshot->parameters = EncodeTensor(state.parameters, DELTA_FP32);
  snapshot->has_moments = state.adam_m.defined();
  if (snapshot->has_moments) {
    snapshot->adam_m = EncodeTensor(state.adam_m, DELTA_FP32);
    snapshot->adam_v = EncodeTensor(state.adam_v, DELTA_FP32);
  }
  snapshot->adam_step = state.adam_step;
  Board& b = *board_;
  absl::MutexLock lock(&b.mu);
  if (!b.interrupted.empty()) return absl::CancelledError(b.interrupted);
  snapshot->version = ++b.last_version;
  b.snapshot = snapshot;
  b.items = &items;
  b.results.assign(items.size(), std::nullopt);
  b.failures.assign(items.size(), 0);
  b.backed_up.assign(items.size(), false);
  b.pending.clear();
  for (size_t i = 0; i < items.size(); ++i) b.pending.push_back(i);
  b.leases.clear();
  b.active_leases = 0;
  b.stats.tasks_in_flight = 0;
  b.remaining = items.size();
  b.failed.clear();
  auto done = [&b]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(b.mu) {
    return b.remaining == 0 || !b.failed.empty() || !b.interrupted.empty();
  };
  b.mu.Await(absl::Condition(&done));
  std::vector<TaskResult> out;
  absl::Status status;
  if (!b.interrupted.empty()) {
    status = absl::CancelledError(b.interrupted);
  } else if (!b.failed.empty()) {
    status = absl::AbortedError(b.failed);
  } else {
    out.reserve(items.size());
    for (auto& result : b.results) out.push_back(std::move(*result));
  }
  b.snapshot = nullptr;
  b.items = nullptr;
  b.results.clear();
  b.pending.clear();
  b.leases.clear();
  b.active_leases = 0;
  if (!status.ok()) return status;
  return out;
}

int GrpcTransport::num_workers() const {
  absl::MutexLock lock(&board_->mu);
  return static_cast<int>(board_->workers.size());
}

TransportStats GrpcTransport::Stats() const {
  absl::MutexLock lock(&board_->mu);
  TransportStats stats = board_->stats;
  stats.workers_alive = static_cast<int>(board_->workers.size());
  return stats;
}

void GrpcTransport::Interrupt(const std::string& why) {
  absl::MutexLock lock(&board_->mu);
  board_->interrupted = why.empty() ? "interrupted" : why;
}

void GrpcTransport::Finish(absl::Duration grace) {
  Board& b = *board_;
  absl::MutexLock lock(&b.mu);
  b.finished = true;
  b.mu.AwaitWithTimeout(absl::Condition(
                            +[](std::map<uint64_t, WorkerRecord>* workers) { return workers->empty(); }, &b.workers),
                        grace);
}

}  // namespace reptile
