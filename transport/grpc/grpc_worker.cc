#include "transport/grpc/grpc_worker.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/config.h"
#include "core/flat_parameters.h"
#include "core/process_setup.h"
#include "core/models/torchscript_model.h"
#include "core/status_macros.h"
#include "transport/grpc/grpc_transport.h"
#include "transport/grpc/coordinator_client.h"
#include "transport/wire/shared_folder.h"
#include "worker/learner.h"

namespace reptile {
namespace {

// Exponential backoff with jitter, from 100 ms up to 2 s, cut short by stop:
// a restarted coordinator is found within a few seconds of listening.
class Backoff {
 public:
  Backoff(absl::Notification* stop, std::atomic<int64_t>* retries)
      : stop_(stop), retries_(retries), rng_(std::random_device{}()) {}
  void Wait() {
    retries_->fetch_add(1, std::memory_order_relaxed);
    std::uniform_real_distribution<double> jitter(0.5, 1.0);
    stop_->WaitForNotificationWithTimeout(next_ * jitter(rng_));
    next_ = std::min(next_ * 2, absl::Seconds(2));
  }
  void Reset() { next_ = absl::Milliseconds(100); }

 private:
  absl::Notification* stop_;
  std::atomic<int64_t>* retries_;  // every Wait() precedes a retry
  std::mt19937_64 rng_;
  absl::Duration next_ = absl::Milliseconds(100);
};

int64_t Microseconds(std::chrono::steady_clock::duration duration) {
  return std::chrono::duration_cast<std::chrono::microseconds>(duration).count();
}

// Makes a TORCHSCRIPT run's model available to this process's learners.
// The worker's own config (no digest yet): its file, whose digest the
// coordinator checks at join. The coordinator's: the same file where it lies
// here, else the bytes fetched from the coordinator.
absl::Status HoldModel(CoordinatorClient& client, Backoff& backoff, absl::Notification& stop,
                       const std::function<void(const std::string&)>& log, ExperimentConfig* config) {
  if (config->model().torchscript_sha256().empty()) {
    ASSIGN_OR_RETURN(std::shared_ptr<const std::string> own, TorchScriptBytes(*config));
    config->mutable_model()->set_torchscript_sha256(TorchScriptDigest(*own));
    return absl::OkStatus();
  }
  if (TorchScriptBytes(*config).ok()) return absl::OkStatus();
  const std::string& digest = config->model().torchscript_sha256();
  while (!stop.HasBeenNotified()) {
    absl::StatusOr<std::string> fetched = client.FetchModel(digest, kMaxTorchScriptBytes);
    if (fetched.ok()) {
      if (log) log(absl::StrCat("received the run's model (", fetched->size(), " bytes)"));
      ProvideTorchScriptBytes(std::make_shared<const std::string>(*std::move(fetched)));
      return absl::OkStatus();
    }
    if (!IsTransient(fetched.status())) return fetched.status();
    backoff.Wait();
  }
  return absl::CancelledError("stopped");
}

}  // namespace

// The meta-state the worker's learners last ran on, fetched by whichever
// needed it first and shared by all of them.
struct GrpcWorker::StateCache {
  absl::Mutex mu;  // held while a learner fetches: the others wait for its copy
  uint64_t incarnation ABSL_GUARDED_BY(mu) = 0, version ABSL_GUARDED_BY(mu) = 0;
  std::shared_ptr<const MetaState> state ABSL_GUARDED_BY(mu);  // null: none yet
};

// One learner's membership of the run: its learner, its worker id, its
// heartbeat and its uploads, over the worker's one connection.
struct GrpcWorker::Session {
  Options* options;
  std::string name;  // in the coordinator's log: the worker's, numbered when it has several learners
  absl::Notification* stop;
  Counters* counters;
  CoordinatorClient* client;
  StateCache* cache;
  ExperimentConfig config;
  std::unique_ptr<Learner> learner;
  uint64_t worker_id = 0;
  uint64_t incarnation = 0;
  std::atomic<uint64_t> heartbeat_id{0};
  std::atomic<int64_t> heartbeat_ms{1000};  // set at join, read by the heartbeat thread
  // Where states and results go as files, when the coordinator offers its
  // shared folder and it is the folder of the Unix socket this worker
  // reached it on; else empty (everything on the streams).
  std::string shared_folder;
  std::shared_ptr<const MetaState> state;  // what the learner runs on
  bool announced_outage = false;
  bool run_finished = false;  // Serve() returned because the run is over

  void Log(const std::string& line) const {
    if (options->log) options->log(line);
  }

  // A failed call that may succeed later: said once per outage; from 5 s
  // into an outage, every 5 s, the channel is replaced (see
  // CoordinatorClient::Reconnect: a coordinator container stopped and
  // started again is otherwise not reached by the old channel).
  void Outage(const absl::Status& status) {
    const absl::Time now = absl::Now();
    if (announced_outage) {
      if (now < reconnect_at) return;
      client->Reconnect();
      reconnect_at = now + kReconnectEvery;
      return;
    }
    announced_outage = true;
    reconnect_at = now + kReconnectEvery;
    Log(absl::StrCat("coordinator ", options->coordinator, " unreachable (", status.message(), "); retrying"));
  }
  static constexpr absl::Duration kReconnectEvery = absl::Seconds(5);
  absl::Time reconnect_at;

  CarriedMoments moments() const { return CarriedMomentsOf(config); }

  // Calls `call` until the coordinator answers: transient failures (an
  // outage, said once) are retried with backoff, a refusal is final.
  // Cancelled once the worker stops.
  template <typename Reply, typename Call>
  absl::StatusOr<Reply> UntilAnswered(const Call& call, Backoff& backoff) {
    while (!stop->HasBeenNotified()) {
      absl::StatusOr<Reply> reply = call();
      if (reply.ok()) return reply;
      if (!IsTransient(reply.status()))
        return absl::Status(reply.status().code(), absl::StrCat("coordinator refused the worker: ",
                                                                reply.status().message()));
      Outage(reply.status());
      backoff.Wait();
    }
    return absl::CancelledError("stopped");
  }

  absl::Status FetchConfig(Backoff& backoff) {
    ASSIGN_OR_RETURN(RunConfigReply reply,
                     UntilAnswered<RunConfigReply>([&] { return client->GetRunConfig(); }, backoff));
    if (reply.protocol_version() != kProtocolVersion)
      return absl::FailedPreconditionError(
          absl::StrCat("coordinator speaks protocol ", reply.protocol_version(), ", this worker ", kProtocolVersion));
    config = reply.config();
    return absl::OkStatus();
  }

  // Joins (again); OK with worker_id set, or a refusal that is final.
  absl::Status Join(Backoff& backoff) {
    JoinRequest request;
    request.set_worker_name(name);
    request.set_protocol_version(kProtocolVersion);
    request.set_config_fingerprint(ConfigFingerprint(config));
    request.set_model_sha256(config.model().torchscript_sha256());
    request.set_layout_fingerprint(LayoutFingerprint(learner->layout()));
    ASSIGN_OR_RETURN(JoinReply reply, UntilAnswered<JoinReply>([&] { return client->Join(request); }, backoff));
    RemoveResultFile();  // of the membership before, if any
    worker_id = reply.worker_id();
    if (reply.incarnation() != incarnation && incarnation != 0) Log("coordinator restarted; joined again");
    incarnation = reply.incarnation();
    if (reply.heartbeat_seconds() > 0)
      heartbeat_ms.store(std::max<int64_t>(50, static_cast<int64_t>(reply.heartbeat_seconds() * 1000)));
    heartbeat_id.store(worker_id);
    const bool folder_of_socket = !reply.shared_folder().empty() &&
                                  absl::StartsWith(options->coordinator, absl::StrCat("unix:", reply.shared_folder(), "/"));
    shared_folder = folder_of_socket ? reply.shared_folder() : std::string();
    announced_outage = false;
    backoff.Reset();
    Log(absl::StrCat("joined ", options->coordinator, " as worker ", worker_id));
    return absl::OkStatus();
  }

  // The shared folder's file of this membership's results (see
  // SharedResultPath), if it has one.
  void RemoveResultFile() {
    if (!shared_folder.empty()) unlink(SharedResultPath(shared_folder, worker_id).c_str());
  }

  void HeartbeatLoop(absl::Notification* done) {
    while (!done->WaitForNotificationWithTimeout(absl::Milliseconds(heartbeat_ms.load()))) {
      const uint64_t id = heartbeat_id.load();
      if (id != 0) client->Heartbeat(id).IgnoreError();  // failures show up in the work loop
    }
  }

  // The version of the state this process holds for this membership's
  // coordinator (0: none).
  uint64_t HeldStateVersion() {
    absl::MutexLock lock(&cache->mu);
    return cache->state != nullptr && cache->incarnation == incarnation ? cache->version : 0;
  }

  // The state of `work`'s lease: cached, read from the shared folder when
  // the lease names it there, or fetched. Transient failures are retried a
  // few times; NotFound means join again, FailedPrecondition that the batch
  // ended, Cancelled that the worker stopped first. OK only with the state
  // in hand.
  absl::Status EnsureState(const WorkReply& work, Backoff& backoff) {
    const uint64_t version = work.state_version();
    absl::MutexLock lock(&cache->mu);
    if (cache->state != nullptr && cache->incarnation == incarnation && cache->version == version) {
      state = cache->state;
      return absl::OkStatus();
    }
    if (work.has_folder_state() && !shared_folder.empty()) {
      absl::StatusOr<MetaState> read = ReadFolderState(work.folder_state(), version, learner->num_parameters(),
                                                       moments(), shared_folder);
      if (read.ok()) {
        Keep(*std::move(read), version);
        return absl::OkStatus();
      }
      if (absl::IsFailedPrecondition(read.status())) return read.status();
      Log(absl::StrCat("cannot read state ", version, " from the shared folder (", read.status().message(),
                       "); fetching it"));
    }
    absl::Status status = absl::CancelledError("stopped before the state was fetched");
    for (int attempt = 0; attempt < 3 && !stop->HasBeenNotified(); ++attempt) {
      absl::StatusOr<MetaState> fetched =
          client->FetchState(worker_id, version, learner->num_parameters(), moments(), shared_folder);
      if (fetched.ok()) {
        Keep(*std::move(fetched), version);
        return absl::OkStatus();
      }
      status = fetched.status();
      if (!IsTransient(status)) break;
      backoff.Wait();
    }
    return status;
  }

  void Keep(MetaState fetched, uint64_t version) ABSL_EXCLUSIVE_LOCKS_REQUIRED(cache->mu) {
    state = std::make_shared<const MetaState>(std::move(fetched));
    cache->state = state;
    cache->incarnation = incarnation;
    cache->version = version;
  }

  // The work loop of one membership. Returns OK when the run is finished or
  // the worker stops, NotFound when it must join again, or a final error
  // (PermissionDenied: evicted).
  absl::Status Work(Backoff& backoff, bool* finished) {
    auto idle_since = std::chrono::steady_clock::now();
    while (!stop->HasBeenNotified()) {
      absl::StatusOr<WorkReply> work = client->GetWork(worker_id, !shared_folder.empty(), HeldStateVersion());
      if (absl::IsNotFound(work.status())) return absl::NotFoundError("join again");
      if (!work.ok()) {
        if (!IsTransient(work.status()))
          return absl::Status(work.status().code(),
                              absl::StrCat("coordinator refused the worker: ", work.status().message()));
        Outage(work.status());
        backoff.Wait();
        continue;
      }
      announced_outage = false;
      backoff.Reset();
      if (work->kind() == WorkReply::FINISHED) {
        *finished = true;
        return absl::OkStatus();
      }
      if (work->kind() == WorkReply::WAIT) continue;
      absl::Status fetched = EnsureState(*work, backoff);
      if (stop->HasBeenNotified()) break;  // the lease goes back when the worker leaves
      if (absl::IsNotFound(fetched)) return absl::NotFoundError("join again");
      if (absl::IsFailedPrecondition(fetched)) continue;  // the batch ended: the lease went with it
      if (!fetched.ok()) {
        // Give the lease back now rather than at the coordinator's timeout.
        Log(absl::StrCat("cannot fetch state ", work->state_version(), ": ", fetched.message()));
        Upload(Pending{worker_id, *work,
                       absl::Status(fetched.code(), absl::StrCat("state fetch failed: ", fetched.message())),
                       shared_folder});
        continue;
      }
      WorkItem item;
      item.kind = work->kind() == WorkReply::TRAIN ? WorkKind::kTrain : WorkKind::kEvaluate;
      item.tasks.assign(work->tasks().begin(), work->tasks().end());
      const auto started = std::chrono::steady_clock::now();
      counters->idle_microseconds.fetch_add(Microseconds(started - idle_since), std::memory_order_relaxed);
      absl::StatusOr<TaskResult> result = learner->Run(*state, item);
      idle_since = std::chrono::steady_clock::now();
      counters->compute_microseconds.fetch_add(Microseconds(idle_since - started), std::memory_order_relaxed);
      (result.ok() ? counters->tasks_done : counters->tasks_failed).fetch_add(1, std::memory_order_relaxed);
      Upload(Pending{worker_id, *work, std::move(result), shared_folder});
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
    std::string shared_folder;  // of the membership that ran it
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
      const std::vector<ResultChunk> messages =
          CoordinatorClient::ResultMessages(pending.worker, pending.work, pending.result, config.outer().delta_dtype(),
                                            learner->num_parameters(), pending.shared_folder);
      // A result lost in transit would leave its lease held by a live worker
      // until the coordinator gives up on it: retry transient failures for
      // a few seconds (a result that did arrive comes back as a duplicate).
      // Short pauses: the work loop waits for this upload, and a restarted
      // coordinator must see the worker again within seconds.
      absl::Status status;
      absl::Duration pause = absl::Milliseconds(100);
      for (int attempt = 0; attempt < 8; ++attempt, pause = std::min(2 * pause, absl::Seconds(1))) {
        status = client->Submit(messages).status();
        if (status.ok() || !IsTransient(status)) break;
        stop->WaitForNotificationWithTimeout(pause);
        counters->retries.fetch_add(1, std::memory_order_relaxed);
      }
      if (!status.ok() && !absl::IsFailedPrecondition(status))
        Log(absl::StrCat("result for lease ", pending.work.lease_id(), " not taken: ", status.message()));
      absl::MutexLock lock(&upload_mu);
      uploads.pop_front();  // only now may the next one be queued
    }
  }

  // Sends what is queued, then ends UploadLoop().
  void CloseUploads() {
    absl::MutexLock lock(&upload_mu);
    uploads_closed = true;
  }

  // Joins and works until the run is over or the worker stops (OK), or a
  // refusal that is final; then leaves.
  absl::Status Serve() {
    Backoff backoff(stop, &counters->retries);
    absl::Notification heartbeat_done;
    std::thread heartbeat([&] {
      NameThisThread("heartbeat");
      HeartbeatLoop(&heartbeat_done);
    });
    std::thread uploader([&] {
      NameThisThread("upload");
      UploadLoop();
    });
    absl::Status outcome = absl::OkStatus();
    bool finished = false;
    while (!stop->HasBeenNotified() && !finished) {
      absl::Status joined = Join(backoff);
      if (absl::IsCancelled(joined)) break;
      if (!joined.ok()) {
        outcome = joined;
        break;
      }
      absl::Status worked = Work(backoff, &finished);
      if (absl::IsNotFound(worked)) {
        heartbeat_id.store(0);
        continue;
      }
      outcome = worked;
      break;
    }
    CloseUploads();
    uploader.join();
    RemoveResultFile();
    heartbeat_done.Notify();
    heartbeat.join();
    if (outcome.ok() && worker_id != 0) client->Leave(worker_id).IgnoreError();
    run_finished = finished;
    return outcome;
  }
};

GrpcWorker::GrpcWorker(Options options) : options_(std::move(options)) {}

GrpcWorker::~GrpcWorker() = default;

WorkerStats GrpcWorker::StatsOf(const Counters& counters) {
  WorkerStats stats;
  stats.tasks_done = counters.tasks_done.load(std::memory_order_relaxed);
  stats.tasks_failed = counters.tasks_failed.load(std::memory_order_relaxed);
  stats.compute_seconds = counters.compute_microseconds.load(std::memory_order_relaxed) / 1e6;
  stats.idle_seconds = counters.idle_microseconds.load(std::memory_order_relaxed) / 1e6;
  stats.retries = counters.retries.load(std::memory_order_relaxed);
  return stats;
}

WorkerStats GrpcWorker::stats() const { return StatsOf(counters_); }

void GrpcWorker::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
}

absl::Status GrpcWorker::Run() {
  ASSIGN_OR_RETURN(std::unique_ptr<CoordinatorClient> client,
                   CoordinatorClient::Connect(options_.coordinator, options_.security));
  StateCache cache;
  const int learners = std::max(1, options_.learners);
  std::vector<std::unique_ptr<Session>> sessions;
  for (int i = 0; i < learners; ++i) {
    Session& session = *sessions.emplace_back(std::make_unique<Session>());
    session.options = &options_;
    session.name = learners == 1 ? options_.name : absl::StrCat(options_.name, "#", i + 1);
    session.stop = &stop_;
    session.counters = &counters_;
    session.client = client.get();
    session.cache = &cache;
  }
  ExperimentConfig config;
  if (options_.config.has_value()) {
    config = *options_.config;
  } else {
    Backoff backoff(&stop_, &counters_.retries);
    absl::Status fetched = sessions[0]->FetchConfig(backoff);
    if (absl::IsCancelled(fetched)) return absl::OkStatus();
    RETURN_IF_ERROR(fetched);
    config = sessions[0]->config;
  }
  if (!options_.data_dir.empty()) config.mutable_task()->set_data_dir(options_.data_dir);
  RETURN_IF_ERROR(ValidateConfig(config));
  if (config.model().arch() == TORCHSCRIPT) {
    Backoff backoff(&stop_, &counters_.retries);
    absl::Status held = HoldModel(*client, backoff, stop_, options_.log, &config);
    if (absl::IsCancelled(held)) return absl::OkStatus();
    RETURN_IF_ERROR(held);
  }
  ASSIGN_OR_RETURN(std::shared_ptr<const TaskSource> tasks, TaskSource::Create(config.task()));
  RecordImageChannels(*tasks, &config);
  for (std::unique_ptr<Session>& session : sessions) {
    session->config = config;
    ASSIGN_OR_RETURN(session->learner, Learner::Create(config, tasks));
  }
  // A learner that cannot go on (refused, evicted) stops the others: the
  // worker fails as a whole, as it would with one learner.
  std::vector<absl::Status> outcomes(learners);
  std::vector<std::thread> threads;
  for (int i = 0; i < learners; ++i)
    threads.emplace_back([this, &sessions, &outcomes, i] {
      NameThisThread("learner");
      outcomes[i] = sessions[i]->Serve();
      if (!outcomes[i].ok()) Stop();
    });
  for (std::thread& thread : threads) thread.join();
  for (const absl::Status& outcome : outcomes) RETURN_IF_ERROR(outcome);
  const bool run_finished = std::any_of(sessions.begin(), sessions.end(),
                                        [](const std::unique_ptr<Session>& session) { return session->run_finished; });
  if (run_finished && options_.log) {
    const WorkerStats done = StatsOf(counters_);
    options_.log(absl::StrFormat(
        "the run is finished (this worker: %d tasks, %.1f s computing, %.1f s idle between them); leaving",
        done.tasks_done, done.compute_seconds, done.idle_seconds));
  }
  return absl::OkStatus();
}

}  // namespace reptile
