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

// A node's learners, one thread each, running one item apiece at once:
// learner 0 on the caller's thread, the others on threads that live as long
// as the crew.
class LearnerCrew {
 public:
  explicit LearnerCrew(std::vector<std::unique_ptr<Learner>> learners) : learners_(std::move(learners)) {
    for (size_t k = 1; k < learners_.size(); ++k)
      threads_.emplace_back([this, k] {
        NameThisThread("learner");
        Serve(k);
      });
  }
  ~LearnerCrew() {
    {
      absl::MutexLock lock(&mu_);
      closing_ = true;
    }
    for (std::thread& thread : threads_) thread.join();
  }

  int size() const { return static_cast<int>(learners_.size()); }
  const Learner& first() const { return *learners_[0]; }

  struct Outcome {
    absl::StatusOr<TaskResult> result = absl::UnknownError("not run");
    std::chrono::steady_clock::duration took{};
  };
  // Runs items[k] on learner k, all at once; at most size() items.
  std::vector<Outcome> Run(const MetaState& state, const std::vector<WorkItem>& items) {
    {
      absl::MutexLock lock(&mu_);
      state_ = &state;
      items_ = &items;
      count_ = items.size();
      outcomes_.assign(items.size(), Outcome());
      outstanding_ = static_cast<int>(items.size()) - 1;
      ++generation_;
    }
    Outcome first = RunOne(0, state, items[0]);
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](int* outstanding) { return *outstanding == 0; }, &outstanding_));
    outcomes_[0] = std::move(first);
    // A thread that wakes late for this Run() must not look at its items.
    state_ = nullptr;
    items_ = nullptr;
    count_ = 0;
    return std::move(outcomes_);
  }

 private:
  Outcome RunOne(size_t k, const MetaState& state, const WorkItem& item) {
    const auto started = std::chrono::steady_clock::now();
    Outcome outcome;
    outcome.result = learners_[k]->Run(state, item);
    outcome.took = std::chrono::steady_clock::now() - started;
    return outcome;
  }

  void Serve(size_t k) {
    uint64_t seen = 0;
    while (true) {
      const MetaState* state = nullptr;
      const WorkItem* item = nullptr;
      {
        absl::MutexLock lock(&mu_);
        auto news = [this, &seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closing_ || generation_ != seen; };
        mu_.Await(absl::Condition(&news));
        if (closing_) return;
        seen = generation_;
        // Only a thread with an item is waited for: the others must not
        // touch the items, which may be gone by now.
        if (k >= count_) continue;
        state = state_;
        item = &(*items_)[k];
      }
      Outcome outcome = RunOne(k, *state, *item);
      absl::MutexLock lock(&mu_);
      outcomes_[k] = std::move(outcome);
      --outstanding_;
    }
  }

  std::vector<std::unique_ptr<Learner>> learners_;
  std::vector<std::thread> threads_;
  absl::Mutex mu_;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // one per Run()
  const MetaState* state_ ABSL_GUARDED_BY(mu_) = nullptr;
  const std::vector<WorkItem>* items_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t count_ ABSL_GUARDED_BY(mu_) = 0;  // items of the Run() in progress
  std::vector<Outcome> outcomes_ ABSL_GUARDED_BY(mu_);
  int outstanding_ ABSL_GUARDED_BY(mu_) = 0;  // items on the crew's threads still running
};

// The leases of one reply: the reply's own, then those for the node's other
// learners.
struct Leases {
  std::vector<uint64_t> ids;
  std::vector<WorkItem> items;
};

Leases LeasesOf(const WorkReply& work) {
  Leases leases;
  const WorkKind kind = work.kind() == WorkReply::TRAIN ? WorkKind::kTrain : WorkKind::kEvaluate;
  leases.ids.push_back(work.lease_id());
  leases.items.push_back(WorkItem{kind, {work.tasks().begin(), work.tasks().end()}});
  for (const LeasedItem& more : work.more_items()) {
    leases.ids.push_back(more.lease_id());
    leases.items.push_back(WorkItem{kind, {more.tasks().begin(), more.tasks().end()}});
  }
  return leases;
}

// The node's membership of the run: its learners, its worker id, its
// heartbeat and its uploads, over one connection.
struct GrpcWorker::Session {
  Options* options;
  absl::Notification* stop;
  Counters* counters;
  CoordinatorClient* client;
  ExperimentConfig config;
  std::unique_ptr<LearnerCrew> crew;
  uint64_t worker_id = 0;
  uint64_t incarnation = 0;
  std::atomic<uint64_t> heartbeat_id{0};
  std::atomic<int64_t> heartbeat_ms{1000};  // set at join, read by the heartbeat thread
  // Where states and results go as files, when the coordinator offers its
  // shared folder and it is the folder of the Unix socket this worker
  // reached it on; else empty (everything on the streams).
  std::string shared_folder;
  // The state the learners last ran on, and whose it is.
  std::shared_ptr<const MetaState> state;
  uint64_t state_incarnation = 0, state_version = 0;
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
    request.set_worker_name(options->name);
    request.set_learners(crew->size());
    request.set_protocol_version(kProtocolVersion);
    request.set_config_fingerprint(ConfigFingerprint(config));
    request.set_model_sha256(config.model().torchscript_sha256());
    request.set_layout_fingerprint(LayoutFingerprint(crew->first().layout()));
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
  uint64_t HeldStateVersion() const {
    return state != nullptr && state_incarnation == incarnation ? state_version : 0;
  }

  // The state of `work`'s lease: held, read from the shared folder when the
  // lease names it there, or fetched. Transient failures are retried a few
  // times; NotFound means join again, FailedPrecondition that the batch
  // ended, Cancelled that the worker stopped first. OK only with the state
  // in hand.
  absl::Status EnsureState(const WorkReply& work, Backoff& backoff) {
    const uint64_t version = work.state_version();
    if (HeldStateVersion() == version && version != 0) return absl::OkStatus();
    const int64_t numel = crew->first().num_parameters();
    if (work.has_folder_state() && !shared_folder.empty()) {
      absl::StatusOr<MetaState> read = ReadFolderState(work.folder_state(), version, numel, moments(), shared_folder);
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
      absl::StatusOr<MetaState> fetched = client->FetchState(worker_id, version, numel, moments(), shared_folder);
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

  void Keep(MetaState fetched, uint64_t version) {
    state = std::make_shared<const MetaState>(std::move(fetched));
    state_incarnation = incarnation;
    state_version = version;
  }

  // The work loop of one membership. A reply's items run on the learners at
  // once. Their results go to the upload thread, which adds them into the
  // node's running sum while the learners go on, and sends that sum as one
  // upload when the coordinator has nothing more for the node (a learner's
  // failure goes back at once, alone). Returns OK when the run is finished
  // or the worker stops, NotFound when it must join again, or a final error
  // (PermissionDenied: evicted).
  absl::Status Work(Backoff& backoff, bool* finished) {
    auto idle_since = std::chrono::steady_clock::now();
    int held = 0;  // leases whose results the upload thread holds for the sum
    uint64_t held_version = 0;  // the state they ran on
    auto send_held = [&] {
      if (held > 0) Upload(Finished{worker_id, 0, {}, {}, shared_folder, /*send=*/true});
      held = 0;
    };
    while (!stop->HasBeenNotified()) {
      absl::StatusOr<WorkReply> work =
          client->GetWork(worker_id, !shared_folder.empty(), HeldStateVersion(), held);
      if (absl::IsNotFound(work.status())) return absl::NotFoundError("join again");  // what it held is redone
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
      if (work->kind() == WorkReply::WAIT) {
        send_held();
        continue;
      }
      if (work->state_version() != held_version) held = 0;  // the upload thread drops a sum of an ended batch
      held_version = work->state_version();
      Leases leases = LeasesOf(*work);
      absl::Status fetched = EnsureState(*work, backoff);
      if (stop->HasBeenNotified()) break;  // the leases go back when the worker leaves
      if (absl::IsNotFound(fetched)) return absl::NotFoundError("join again");
      if (absl::IsFailedPrecondition(fetched)) continue;  // the batch ended: the leases went with it
      if (!fetched.ok()) {
        // Give the leases back now rather than at the coordinator's timeout.
        Log(absl::StrCat("cannot fetch state ", work->state_version(), ": ", fetched.message()));
        Finished failed{worker_id, work->state_version(), std::move(leases.ids), {}, shared_folder};
        for (size_t k = 0; k < failed.leases.size(); ++k)
          failed.results.push_back(absl::Status(fetched.code(), absl::StrCat("state fetch failed: ", fetched.message())));
        Upload(std::move(failed));
        continue;
      }
      if (static_cast<int>(leases.items.size()) > crew->size()) {
        // More than the learners the node has: the coordinator is not to
        // be trusted with the node's threads.
        return absl::FailedPreconditionError(absl::StrCat("coordinator leased ", leases.items.size(),
                                                          " items to a node of ", crew->size(), " learners"));
      }
      std::vector<LearnerCrew::Outcome> outcomes = crew->Run(*state, leases.items);
      const auto ended = std::chrono::steady_clock::now();
      int64_t computing = 0;
      Finished done{worker_id, work->state_version(), std::move(leases.ids), {}, shared_folder};
      for (LearnerCrew::Outcome& outcome : outcomes) {
        computing += Microseconds(outcome.took);
        (outcome.result.ok() ? counters->tasks_done : counters->tasks_failed).fetch_add(1, std::memory_order_relaxed);
        if (outcome.result.ok()) ++held;
        done.results.push_back(std::move(outcome.result));
      }
      counters->compute_microseconds.fetch_add(computing, std::memory_order_relaxed);
      counters->idle_microseconds.fetch_add(crew->size() * Microseconds(ended - idle_since) - computing,
                                            std::memory_order_relaxed);
      idle_since = ended;
      Upload(std::move(done));
    }
    send_held();  // stopping: what is finished still counts
    return absl::OkStatus();
  }

  // Results handed to the upload thread, so that the next items are fetched
  // and computed while the last results are summed and sent. At most one
  // hand-over waits while another is being dealt with.
  struct Finished {
    uint64_t worker;
    uint64_t state_version;
    std::vector<uint64_t> leases;
    std::vector<absl::StatusOr<TaskResult>> results;  // by lease
    std::string shared_folder;  // of the membership that ran it
    bool send = false;          // then send the running sum (no results come with it)
  };
  absl::Mutex upload_mu;
  std::deque<Finished> uploads ABSL_GUARDED_BY(upload_mu);
  bool uploads_closed ABSL_GUARDED_BY(upload_mu) = false;

  void Upload(Finished finished) {
    absl::MutexLock lock(&upload_mu);
    upload_mu.Await(absl::Condition(
        +[](std::deque<Finished>* queue) { return queue->empty(); }, &uploads));
    uploads.push_back(std::move(finished));
  }

  // The upload thread's running sum: the results of one membership and
  // state version not yet sent, the first as it came, and from the second
  // on all of their tensors in one exact sum.
  struct RunningSum {
    uint64_t worker = 0, state_version = 0;
    std::string shared_folder;
    std::vector<uint64_t> leases;
    std::vector<TaskResult> results;  // by lease; tensors moved into `sums` once there are two
    std::optional<TensorSums> sums;
    int tasks = 0;
    absl::Status broken;  // a result that could not be summed: every lease is sent back failed
  };
  RunningSum running;
  // The last round's sums, sent and cleared for the next: a 10M-parameter
  // model's are 240 MB, which allocated afresh every round faulted in anew.
  std::optional<TensorSums> spare_sums;

  // Adds a successful result to the running sum of `finished`'s membership
  // and state, first dropping a sum of another (its batch is over).
  void AddToRunningSum(const Finished& finished, uint64_t lease, TaskResult result) {
    if (running.worker != finished.worker || running.state_version != finished.state_version) {
      running = RunningSum();
      running.worker = finished.worker;
      running.state_version = finished.state_version;
      running.shared_folder = finished.shared_folder;
    }
    const bool train = result.delta.defined() || result.sums.has_value();
    running.tasks += result.sums ? result.sums->tasks() : 1;
    running.leases.push_back(lease);
    running.results.push_back(std::move(result));
    if (!train || running.results.size() < 2 || !running.broken.ok()) return;
    if (!running.sums.has_value()) {
      if (spare_sums.has_value()) {
        running.sums = std::move(spare_sums);
        spare_sums.reset();
        running.sums->Clear();
      } else {
        running.sums.emplace(crew->first().num_parameters(), config.outer().meta_batch_size(), moments());
      }
      running.broken = MoveInto(running.results[0]);
    }
    if (running.broken.ok()) running.broken = MoveInto(running.results.back());
  }

  absl::Status MoveInto(TaskResult& result) {
    absl::Status added = result.sums ? running.sums->Merge(*result.sums)
                                     : running.sums->Add(result.delta, result.adam_m, result.adam_v);
    result.delta = result.adam_m = result.adam_v = torch::Tensor();
    result.sums.reset();
    return added;
  }

  // The upload of the running sum (or, should a result not have summed,
  // the failure of each of its leases), which it then empties.
  std::vector<std::vector<ResultChunk>> TakeRunningSum() {
    std::vector<std::vector<ResultChunk>> messages;
    RunningSum sum = std::move(running);
    running = RunningSum();
    if (sum.leases.empty()) return messages;
    const int64_t numel = crew->first().num_parameters();
    const DeltaDtype dtype = config.outer().delta_dtype();
    WorkReply lease;
    lease.set_state_version(sum.state_version);
    if (!sum.broken.ok()) {
      for (uint64_t id : sum.leases) {
        lease.set_lease_id(id);
        messages.push_back(CoordinatorClient::ResultMessages(
            sum.worker, lease, absl::InternalError(absl::StrCat("node sum: ", sum.broken.message())), dtype, numel));
      }
      return messages;
    }
    // Moved, not copied, into the StatusOr the encoder takes (a copy of the
    // sums was 5.4 MB a round for the Omniglot net, 240 MB for 10M
    // parameters), and back once encoded: its memory serves the next round.
    absl::StatusOr<TaskResult> first = std::move(sum.results[0]);
    if (sum.sums.has_value()) first->sums = std::move(sum.sums);
    lease.set_lease_id(sum.leases[0]);
    messages.push_back(CoordinatorClient::ResultMessages(sum.worker, lease, first, dtype, numel, sum.shared_folder));
    if (first->sums.has_value()) spare_sums = std::move(first->sums);
    ResultHeader* header = messages.back()[0].mutable_header();
    header->set_tasks(sum.tasks);
    for (size_t k = 1; k < sum.leases.size(); ++k) {
      const TaskResult& other = sum.results[k];
      NodeItem* item = header->add_node_items();
      item->set_lease_id(sum.leases[k]);
      item->set_loss(other.loss);
      item->set_correct(other.correct);
      item->set_correct_inductive(other.correct_inductive);
      item->set_predictions(other.predictions);
      item->set_compute_seconds(other.compute_seconds);
    }
    return messages;
  }

  // What `finished` sends now: its failures, each alone, and the running
  // sum if it asks for it. Its successes go into the running sum.
  std::vector<std::vector<ResultChunk>> Handle(Finished& finished) {
    std::vector<std::vector<ResultChunk>> messages;
    WorkReply lease;
    lease.set_state_version(finished.state_version);
    for (size_t k = 0; k < finished.leases.size(); ++k) {
      absl::StatusOr<TaskResult>& result = finished.results[k];
      if (result.ok()) {
        AddToRunningSum(finished, finished.leases[k], *std::move(result));
        continue;
      }
      lease.set_lease_id(finished.leases[k]);
      messages.push_back(CoordinatorClient::ResultMessages(finished.worker, lease, result,
                                                           config.outer().delta_dtype(),
                                                           crew->first().num_parameters()));
    }
    if (finished.send) {
      std::vector<std::vector<ResultChunk>> sum = TakeRunningSum();
      for (std::vector<ResultChunk>& upload : sum) messages.push_back(std::move(upload));
    }
    return messages;
  }

  void UploadLoop() {
    while (true) {
      Finished finished;
      {
        absl::MutexLock lock(&upload_mu);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(upload_mu) { return uploads_closed || !uploads.empty(); };
        upload_mu.Await(absl::Condition(&ready));
        if (uploads.empty()) return;
        finished = std::move(uploads.front());
      }
      for (const std::vector<ResultChunk>& messages : Handle(finished)) {
        // A result lost in transit would leave its leases held by a live
        // worker until the coordinator gives up on them: retry transient
        // failures for a few seconds (a result that did arrive comes back
        // as a duplicate). Short pauses: the work loop waits for this
        // upload, and a restarted coordinator must see the worker again
        // within seconds.
        absl::Status status;
        absl::Duration pause = absl::Milliseconds(100);
        for (int attempt = 0; attempt < 8; ++attempt, pause = std::min(2 * pause, absl::Seconds(1))) {
          status = client->Submit(messages).status();
          if (status.ok() || !IsTransient(status)) break;
          stop->WaitForNotificationWithTimeout(pause);
          counters->retries.fetch_add(1, std::memory_order_relaxed);
        }
        if (!status.ok() && !absl::IsFailedPrecondition(status))
          Log(absl::StrCat("result for lease ", messages[0].header().lease_id(), " not taken: ", status.message()));
      }
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
  Session session;
  session.options = &options_;
  session.stop = &stop_;
  session.counters = &counters_;
  session.client = client.get();
  ExperimentConfig config;
  if (options_.config.has_value()) {
    config = *options_.config;
  } else {
    Backoff backoff(&stop_, &counters_.retries);
    absl::Status fetched = session.FetchConfig(backoff);
    if (absl::IsCancelled(fetched)) return absl::OkStatus();
    RETURN_IF_ERROR(fetched);
    config = session.config;
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
  session.config = config;
  std::vector<std::unique_ptr<Learner>> learners;
  for (int i = 0; i < std::max(1, options_.learners); ++i) {
    ASSIGN_OR_RETURN(learners.emplace_back(), Learner::Create(config, tasks));
  }
  session.crew = std::make_unique<LearnerCrew>(std::move(learners));
  RETURN_IF_ERROR(session.Serve());
  if (session.run_finished && options_.log) {
    const WorkerStats done = StatsOf(counters_);
    options_.log(absl::StrFormat(
        "the run is finished (this worker: %d tasks, %.1f s computing, %.1f s idle between them); leaving",
        done.tasks_done, done.compute_seconds, done.idle_seconds));
  }
  return absl::OkStatus();
}

}  // namespace reptile
