#include "transport/grpc/grpc_worker.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "coordinator.grpc.pb.h"
#include "core/config.h"
#include "core/flat_parameters.h"
#include "core/status_macros.h"
#include "transport/grpc/grpc_transport.h"
#include "transport/grpc/tensor_stream.h"
#include "worker/learner.h"

namespace reptile {
namespace {

constexpr auto kShortCall = std::chrono::seconds(10);
constexpr auto kTensorCall = std::chrono::seconds(120);

// Codes that mean "not now" rather than "never": the coordinator is
// restarting, unreachable or busy.
bool Transient(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
         code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         code == grpc::StatusCode::ABORTED || code == grpc::StatusCode::UNKNOWN ||
         code == grpc::StatusCode::INTERNAL;
}

absl::Status FromGrpc(const grpc::Status& status, const std::string& what) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(what, ": ", status.error_message()));
}

std::chrono::system_clock::time_point In(std::chrono::seconds seconds) {
  return std::chrono::system_clock::now() + seconds;
}

// Exponential backoff with jitter, from 100 ms up to 5 s, cut short by stop.
class Backoff {
 public:
  explicit Backoff(absl::Notification* stop) : stop_(stop), rng_(std::random_device{}()) {}
  void Wait() {
    std::uniform_real_distribution<double> jitter(0.5, 1.0);
    stop_->WaitForNotificationWithTimeout(next_ * jitter(rng_));
    next_ = std::min(next_ * 2, absl::Seconds(5));
  }
  void Reset() { next_ = absl::Milliseconds(100); }

 private:
  absl::Notification* stop_;
  std::mt19937_64 rng_;
  absl::Duration next_ = absl::Milliseconds(100);
};

}  // namespace

// One Run(): the connection, the learner and the cached meta-state.
struct GrpcWorker::Session {
  Options* options;
  absl::Notification* stop;
  std::unique_ptr<Coordinator::Stub> stub;
  ExperimentConfig config;
  std::unique_ptr<Learner> learner;
  uint64_t worker_id = 0;
  uint64_t incarnation = 0;
  std::atomic<uint64_t> heartbeat_id{0};
  absl::Duration heartbeat_every = absl::Seconds(1);
  // The meta-state of (cached_incarnation, cached_version), if have_state.
  bool have_state = false;
  uint64_t cached_incarnation = 0, cached_version = 0;
  MetaState state;
  bool announced_outage = false;

  void Log(const std::string& line) const {
    if (options->log) options->log(line);
  }

  void Outage(const grpc::Status& status) {
    if (announced_outage) return;
    announced_outage = true;
    Log(absl::StrCat("coordinator ", options->coordinator, " unreachable (", status.error_message(),
                     "); retrying"));
  }

  template <typename Call>
  grpc::Status Unary(Call call) {
    grpc::ClientContext context;
    context.set_deadline(In(kShortCall));
    AttachToken(options->security.token, &context);
    return call(&context);
  }

  absl::Status FetchConfig(Backoff& backoff) {
    while (!stop->HasBeenNotified()) {
      RunConfigReply reply;
      grpc::Status status = Unary([&](grpc::ClientContext* c) { return stub->GetRunConfig(c, {}, &reply); });
      if (status.ok()) {
        if (reply.protocol_version() != kProtocolVersion)
          return absl::FailedPreconditionError(absl::StrCat("coordinator speaks protocol ", reply.protocol_version(),
                                                            ", this worker ", kProtocolVersion));
        config = reply.config();
        return absl::OkStatus();
      }
      if (!Transient(status.error_code())) return FromGrpc(status, "coordinator refused the worker");
      Outage(status);
      backoff.Wait();
    }
    return absl::CancelledError("stopped");
  }

  // Joins (again); OK with worker_id set, or a refusal that is final.
  absl::Status Join(Backoff& backoff) {
    JoinRequest request;
    request.set_worker_name(options->name);
    request.set_protocol_version(kProtocolVersion);
    request.set_config_fingerprint(ConfigFingerprint(config));
    request.set_layout_fingerprint(LayoutFingerprint(learner->layout()));
    while (!stop->HasBeenNotified()) {
      JoinReply reply;
      grpc::Status status = Unary([&](grpc::ClientContext* c) { return stub->Join(c, request, &reply); });
      if (status.ok()) {
        worker_id = reply.worker_id();
        if (reply.incarnation() != incarnation && incarnation != 0) Log("coordinator restarted; joined again");
        incarnation = reply.incarnation();
        if (reply.heartbeat_seconds() > 0) heartbeat_every = absl::Seconds(reply.heartbeat_seconds());
        heartbeat_id.store(worker_id);
        announced_outage = false;
        backoff.Reset();
        Log(absl::StrCat("joined ", options->coordinator, " as worker ", worker_id));
        return absl::OkStatus();
      }
      if (!Transient(status.error_code())) return FromGrpc(status, "coordinator refused the worker");
      Outage(status);
      backoff.Wait();
    }
    return absl::CancelledError("stopped");
  }

  void HeartbeatLoop(absl::Notification* done) {
    while (!done->WaitForNotificationWithTimeout(heartbeat_every)) {
      const uint64_t id = heartbeat_id.load();
      if (id == 0) continue;
      HeartbeatRequest request;
      request.set_worker_id(id);
      HeartbeatReply reply;
      grpc::ClientContext context;
      context.set_deadline(In(std::chrono::seconds(2)));
      AttachToken(options->security.token, &context);
      stub->Heartbeat(&context, request, &reply);  // failures show up in the work loop
    }
  }

  grpc::Status FetchState(uint64_t version) {
    FetchStateRequest request;
    request.set_worker_id(worker_id);
    request.set_state_version(version);
    grpc::ClientContext context;
    context.set_deadline(In(kTensorCall));
    AttachToken(options->security.token, &context);
    std::unique_ptr<grpc::ClientReader<StateChunk>> reader = stub->FetchState(&context, request);
    StateChunk message;
    have_state = false;
    absl::Status problem;
    const int64_t numel = learner->num_parameters();
    const bool carry = config.inner().optimizer() == ADAM && config.inner().state_mode() == CARRY;
    StateHeader header;
    if (!reader->Read(&message) || !message.has_header()) {
      problem = absl::InvalidArgumentError("state stream did not start with its header");
    } else {
      header = message.header();
      if (header.state_version() != version || header.num_parameters() != numel || header.has_moments() != carry)
        problem = absl::InvalidArgumentError(absl::StrCat("state header does not fit this model: version ",
                                                          header.state_version(), ", ", header.num_parameters(),
                                                          " parameters"));
    }
    std::vector<size_t> sizes(carry ? 3 : 1, static_cast<size_t>(numel) * 4);
    TensorAssembler assembler(sizes);
    while (reader->Read(&message))
      if (problem.ok()) problem = message.has_chunk() ? assembler.Add(message.chunk())
                                                       : absl::InvalidArgumentError("second state header");
    grpc::Status status = reader->Finish();
    if (!status.ok()) return status;
    if (problem.ok()) problem = assembler.Finish();
    MetaState fetched;
    if (problem.ok()) {
      absl::StatusOr<torch::Tensor> parameters = DecodeTensor(assembler.bytes(0), DELTA_FP32, numel);
      problem = parameters.status();
      if (problem.ok()) fetched.parameters = *std::move(parameters);
    }
    if (problem.ok() && carry) {
      absl::StatusOr<torch::Tensor> m = DecodeTensor(assembler.bytes(1), DELTA_FP32, numel);
      absl::StatusOr<torch::Tensor> v = DecodeTensor(assembler.bytes(2), DELTA_FP32, numel);
      problem = m.ok() ? v.status() : m.status();
      if (problem.ok()) {
        fetched.adam_m = *std::move(m);
        fetched.adam_v = *std::move(v);
      }
    }
    if (!problem.ok()) {
      Log(absl::StrCat("bad state from the coordinator: ", problem.message()));
      return grpc::Status(grpc::StatusCode::DATA_LOSS, std::string(problem.message()));
    }
    fetched.adam_step = header.adam_step();
    state = std::move(fetched);
    have_state = true;
    cached_incarnation = incarnation;
    cached_version = version;
    return grpc::Status::OK;
  }

  grpc::Status Submit(uint64_t worker, const WorkReply& work, const absl::StatusOr<TaskResult>& result) {
    grpc::ClientContext context;
    context.set_deadline(In(kTensorCall));
    AttachToken(options->security.token, &context);
    SubmitReply reply;
    std::unique_ptr<grpc::ClientWriter<ResultChunk>> writer = stub->SubmitResult(&context, &reply);
    ResultChunk message;
    ResultHeader* header = message.mutable_header();
    header->set_worker_id(worker);
    header->set_lease_id(work.lease_id());
    header->set_state_version(work.state_version());
    std::vector<std::string> tensors;
    if (!result.ok()) {
      header->set_error(result.status().ToString());
    } else {
      const DeltaDtype dtype = config.outer().delta_dtype();
      header->set_delta_dtype(dtype);
      header->set_num_parameters(learner->num_parameters());
      header->set_loss(result->loss);
      header->set_correct(result->correct);
      header->set_correct_inductive(result->correct_inductive);
      header->set_predictions(result->predictions);
      header->set_compute_seconds(result->compute_seconds);
      if (result->delta.defined()) {
        header->set_has_delta(true);
        tensors.push_back(EncodeTensor(result->delta, dtype));
      }
      if (result->adam_m.defined()) {
        header->set_has_moments(true);
        tensors.push_back(EncodeTensor(result->adam_m, DELTA_FP32));
        tensors.push_back(EncodeTensor(result->adam_v, DELTA_FP32));
      }
    }
    if (writer->Write(message)) {
      std::vector<const std::string*> pointers;
      for (const std::string& t : tensors) pointers.push_back(&t);
      WriteChunks(pointers, [&](const TensorChunk& chunk) {
        *message.mutable_chunk() = chunk;
        return writer->Write(message);
      });
    }
    writer->WritesDone();
    return writer->Finish();
  }

  void Leave() {
    if (worker_id == 0) return;
    LeaveRequest request;
    request.set_worker_id(worker_id);
    LeaveReply reply;
    Unary([&](grpc::ClientContext* c) { return stub->Leave(c, request, &reply); });
  }

  // The work loop of one membership. Returns OK when the run is finished or
  // the worker stops, NotFound when it must join again, or a final error.
  absl::Status Work(Backoff& backoff, bool* finished) {
    while (!stop->HasBeenNotified()) {
      WorkRequest request;
      request.set_worker_id(worker_id);
      WorkReply work;
      grpc::Status status = Unary([&](grpc::ClientContext* c) { return stub->GetWork(c, request, &work); });
      if (status.error_code() == grpc::StatusCode::NOT_FOUND) return absl::NotFoundError("join again");
      if (!status.ok()) {
        if (!Transient(status.error_code())) return FromGrpc(status, "coordinator refused the worker");
        Outage(status);
        backoff.Wait();
        continue;
      }
      announced_outage = false;
      backoff.Reset();
      if (work.kind() == WorkReply::FINISHED) {
        *finished = true;
        return absl::OkStatus();
      }
      if (work.kind() == WorkReply::WAIT) continue;
      if (!have_state || cached_incarnation != incarnation || cached_version != work.state_version()) {
        status = FetchState(work.state_version());
        if (status.error_code() == grpc::StatusCode::NOT_FOUND) return absl::NotFoundError("join again");
        if (!status.ok()) continue;  // stale or broken: the lease is redone, ask for new work
      }
      WorkItem item;
      item.kind = work.kind() == WorkReply::TRAIN ? WorkKind::kTrain : WorkKind::kEvaluate;
      item.spec = work.spec();
      Upload(Pending{worker_id, work, learner->Run(state, item)});
    }
    return absl::OkStatus();
  }

  // Results go back on a thread of their own, so that the next task is
  // fetched and computed while the last result is on the wire. At most one
  // result waits while another is being sent.
  struct Pending {
    uint64_t worker;
    WorkReply work;
    absl::StatusOr<TaskResult> result;
  };
  absl::Mutex upload_mu;
  std::deque<Pending> uploads ABSL_GUARDED_BY(upload_mu);
  bool uploads_closed ABSL_GUARDED_BY(upload_mu) = false;

  void Upload(Pending pending) {
    absl::MutexLock lock(&upload_mu);
    upload_mu.Await(absl::Condition(
        +[](std::deque<Pending>* queue) { return queue->empty(); }, &uploads));
    uploads.push_back(std::move(pending));
  }

  void UploadLoop() {
    while (true) {
      Pending pending;
      {
        absl::MutexLock lock(&upload_mu);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(upload_mu) { return uploads_closed || !uploads.empty(); };
        upload_mu.Await(absl::Condition(&ready));
        if (uploads.empty()) return;
        pending = std::move(uploads.front());
      }
      // A result lost in transit would leave its lease held by a live worker
      // until runtime.task_timeout_seconds: retry transient failures (a
      // result that did arrive comes back as a duplicate).
      grpc::Status status;
      absl::Duration pause = absl::Milliseconds(200);
      for (int attempt = 0; attempt < 6; ++attempt, pause *= 2) {
        status = Submit(pending.worker, pending.work, pending.result);
        if (status.ok() || !Transient(status.error_code())) break;
        stop->WaitForNotificationWithTimeout(pause);
      }
      if (!status.ok() && status.error_code() != grpc::StatusCode::FAILED_PRECONDITION)
        Log(absl::StrCat("result for lease ", pending.work.lease_id(), " not taken: ", status.error_message()));
      absl::MutexLock lock(&upload_mu);
      uploads.pop_front();  // only now may the next one be queued
    }
  }

  // Sends what is queued, then ends UploadLoop().
  void CloseUploads() {
    absl::MutexLock lock(&upload_mu);
    uploads_closed = true;
  }
};

GrpcWorker::GrpcWorker(Options options) : options_(std::move(options)) {}

GrpcWorker::~GrpcWorker() = default;

void GrpcWorker::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
}

absl::Status GrpcWorker::Run() {
  Session session;
  session.options = &options_;
  session.stop = &stop_;
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, MakeChannel(options_.coordinator, options_.security));
  session.stub = Coordinator::NewStub(channel);
  Backoff backoff(&stop_);
  if (options_.config.has_value()) {
    session.config = *options_.config;
  } else {
    absl::Status fetched = session.FetchConfig(backoff);
    if (absl::IsCancelled(fetched)) return absl::OkStatus();
    RETURN_IF_ERROR(fetched);
  }
  if (!options_.data_dir.empty()) session.config.mutable_task()->set_data_dir(options_.data_dir);
  RETURN_IF_ERROR(ValidateConfig(session.config));
  ASSIGN_OR_RETURN(std::shared_ptr<const TaskSource> tasks, TaskSource::Create(session.config.task()));
  ASSIGN_OR_RETURN(session.learner, Learner::Create(session.config, tasks));

  absl::Notification heartbeat_done;
  std::thread heartbeat([&] { session.HeartbeatLoop(&heartbeat_done); });
  std::thread uploader([&] { session.UploadLoop(); });
  absl::Status outcome = absl::OkStatus();
  bool finished = false;
  while (!stop_.HasBeenNotified() && !finished) {
    absl::Status joined = session.Join(backoff);
    if (absl::IsCancelled(joined)) break;
    if (!joined.ok()) {
      outcome = joined;
      break;
    }
    absl::Status worked = session.Work(backoff, &finished);
    if (absl::IsNotFound(worked)) {
      session.heartbeat_id.store(0);
      continue;
    }
    outcome = worked;
    break;
  }
  session.CloseUploads();
  uploader.join();
  heartbeat_done.Notify();
  heartbeat.join();
  if (outcome.ok()) session.Leave();
  if (finished) session.Log("the run is finished; leaving");
  return outcome;
}

}  // namespace reptile
