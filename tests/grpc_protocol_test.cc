// A coordinator process against hand-driven CoordinatorClient calls that
// break the protocol in every way the issue lists, plus a randomized stream
// of malformed submissions. Each is refused with a status that says why, the
// coordinator keeps serving, the task is redone, and the run still ends with
// the parameters of an undisturbed one. Refusals have consequences (the
// LeaseScheduler's policy): a worker refused 3 times in a row is evicted,
// and a task refused by 2 workers that were not evicted stops the run.
#include <grpcpp/grpcpp.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/config.h"
#include "core/flat_parameters.h"
#include "core/models/models.h"
#include "gtest/gtest.h"
#include "health.grpc.pb.h"
#include "tests/child_process.h"
#include "tests/test_support.h"
#include "transport/grpc/coordinator_client.h"
#include "transport/grpc/grpc_transport.h"
#include "worker/learner.h"

namespace reptile::testing {
namespace {

const std::vector<std::string> kOverrides = {"outer.rounds=6", "outer.meta_batch_size=3", "eval.every_rounds=0",
                                             "eval.final_episodes=0", "runtime.worker_timeout_seconds=120"};

// A lease and the correct result for it.
struct Leased {
  WorkReply work;
  TaskResult result;
};

class ProtocolTest : public ::testing::Test {
 protected:
  virtual std::vector<std::string> Overrides() const { return kOverrides; }

  void SetUp() override {
    dir_ = TempDir("run");
    std::vector<std::string> args = {REPTILE_BINARY, "coordinator", "--config", SourcePath("configs/sine.textproto"),
                                     "--run_dir", dir_, "--listen", "127.0.0.1:0"};
    const std::vector<std::string> overrides = Overrides();
    args.insert(args.end(), overrides.begin(), overrides.end());
    int port = 0;
    coordinator_ = StartListening(args, dir_, dir_ + "/../coordinator", &port);
    ASSERT_GT(port, 0) << coordinator_->err();
    address_ = absl::StrCat("127.0.0.1:", port);
    channel_ = grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
    client_ = std::make_unique<CoordinatorClient>(channel_, "");
    config_ = LoadNamedConfig("sine", overrides);
    auto learner = Learner::Create(config_, SharedTaskSource(config_));
    ASSERT_TRUE(learner.ok()) << learner.status();
    learner_ = std::move(learner).value();
  }

  JoinRequest GoodJoin() {
    JoinRequest request;
    request.set_worker_name("protocol-test");
    request.set_protocol_version(kProtocolVersion);
    request.set_config_fingerprint(ConfigFingerprint(config_));
    request.set_layout_fingerprint(LayoutFingerprint(learner_->layout()));
    return request;
  }

  // A new worker identity.
  uint64_t Join() {
    absl::StatusOr<JoinReply> reply = client_->Join(GoodJoin());
    EXPECT_TRUE(reply.ok()) << reply.status();
    return reply.ok() ? reply->worker_id() : 0;
  }

  void Leave(uint64_t worker) { EXPECT_TRUE(client_->Leave(worker).ok()); }

  // The next lease of `worker`, asking again while the answer is WAIT.
  WorkReply GetWork(uint64_t worker) {
    for (int attempt = 0; attempt < 20; ++attempt) {
      absl::StatusOr<WorkReply> reply = client_->GetWork(worker);
      EXPECT_TRUE(reply.ok()) << reply.status();
      if (!reply.ok()) return {};
      if (reply->kind() != WorkReply::WAIT) return *reply;
    }
    ADD_FAILURE() << "no work came";
    return {};
  }

  // The next lease of `worker` and its correct result, computed on the
  // meta-state the lease names (fetched once per state version).
  Leased LeaseAndCompute(uint64_t worker) {
    Leased leased;
    leased.work = GetWork(worker);
    if (leased.work.kind() != WorkReply::TRAIN) return leased;
    if (leased.work.state_version() != state_version_) {
      absl::StatusOr<MetaState> state =
          client_->FetchState(worker, leased.work.state_version(), learner_->num_parameters(),
                              CarriedMomentsOf(config_));
      EXPECT_TRUE(state.ok()) << state.status();
      if (!state.ok()) return leased;
      state_ = *std::move(state);
      state_version_ = leased.work.state_version();
    }
    absl::StatusOr<TaskResult> result = learner_->Run(state_, WorkItem{WorkKind::kTrain, {leased.work.tasks(0)}});
    EXPECT_TRUE(result.ok()) << result.status();
    if (result.ok()) leased.result = *std::move(result);
    return leased;
  }

  // The upload of `result` for `work`, exactly as a worker sends it.
  std::vector<ResultChunk> Messages(uint64_t worker, const WorkReply& work, const absl::StatusOr<TaskResult>& result) {
    return CoordinatorClient::ResultMessages(worker, work, result, DELTA_FP32, learner_->num_parameters());
  }

  void ExpectRefused(const std::vector<ResultChunk>& messages, absl::StatusCode code, const std::string& words) {
    absl::StatusOr<SubmitReply> reply = client_->Submit(messages);
    EXPECT_EQ(reply.status().code(), code) << reply.status();
    EXPECT_TRUE(absl::StrContains(reply.status().message(), words)) << reply.status();
  }

  void ExpectAccepted(const std::vector<ResultChunk>& messages) {
    absl::StatusOr<SubmitReply> reply = client_->Submit(messages);
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_FALSE(reply->duplicate());
  }

  // `worker` was evicted: every call it makes is refused.
  void ExpectEvicted(uint64_t worker) {
    EXPECT_EQ(client_->GetWork(worker).status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(client_->Heartbeat(worker).code(), absl::StatusCode::kPermissionDenied);
  }

  // Parameters after the run, finished by one real worker process.
  std::string FinishWithRealWorker() {
    auto worker = ChildProcess::Start({REPTILE_BINARY, "worker", "--coordinator", address_}, dir_ + "/../worker");
    EXPECT_EQ(coordinator_->ExitCode(120), 0) << coordinator_->err();
    EXPECT_EQ(worker->ExitCode(30), 0) << worker->err();
    return ParameterSha(coordinator_->out());
  }

  std::string ThreadsReference() {
    const std::string run = TempDir("reference");
    std::vector<std::string> args = {REPTILE_BINARY, "train", "--config", SourcePath("configs/sine.textproto"),
                                     "--run_dir", run, "runtime.local_workers=THREADS"};
    args.insert(args.end(), kOverrides.begin(), kOverrides.end());
    auto train = ChildProcess::Start(args, run + "/train");
    EXPECT_EQ(train->ExitCode(120), 0) << train->err();
    return ParameterSha(train->out());
  }

  std::string dir_, address_;
  std::unique_ptr<ChildProcess> coordinator_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<CoordinatorClient> client_;
  ExperimentConfig config_;
  std::unique_ptr<Learner> learner_;
  uint64_t state_version_ = 0;  // of state_, the meta-state LeaseAndCompute last fetched
  MetaState state_;
};

// The health service is not the Coordinator's, so not the client's: a stub of its own.
TEST_F(ProtocolTest, HealthServiceReportsServing) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const char* service : {"", "reptile.Coordinator"}) {
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status status = health->Check(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
}

TEST_F(ProtocolTest, JoinRefusesAnotherConfigModelProtocolOrTooManyLearners) {
  JoinRequest request = GoodJoin();
  request.set_config_fingerprint(ConfigFingerprint(LoadNamedConfig("sine", {"inner.learning_rate=0.5"})));
  absl::Status status = client_->Join(request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(status.message(), "config fingerprint")) << status;

  request = GoodJoin();
  request.set_layout_fingerprint("0123");
  status = client_->Join(request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(status.message(), "layout")) << status;

  request = GoodJoin();
  request.set_protocol_version(kProtocolVersion + 1);
  status = client_->Join(request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(status.message(), "protocol")) << status;

  // A node's learners are leased at once: their number is bounded.
  request = GoodJoin();
  request.set_learners(1025);
  status = client_->Join(request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(status.message(), "at most 1024")) << status;

  // A worker that was never admitted gets no work.
  EXPECT_EQ(client_->GetWork(4242).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(FinishWithRealWorker(), ThreadsReference());
}

// A node that claims to hold finished results it never uploads (an
// unchecked claim) gets at most one item per learner a call and, once a
// task's time is known, is evicted as a hoarder within seconds; its items
// are redone and the run ends with the parameters of threads.
TEST_F(ProtocolTest, ANodeLyingAboutFinishedLeasesIsEvictedAsAHoarder) {
  const uint64_t honest = Join(), liar = Join();
  Leased first = LeaseAndCompute(honest);
  ASSERT_EQ(first.work.kind(), WorkReply::TRAIN);
  ExpectAccepted(Messages(honest, first.work, first.result));  // the typical task time is known
  Leave(honest);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<WorkReply> reply;
  int leased = 0;
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(30)) {
    reply = client_->GetWork(liar, false, 0, 1 << 30);
    if (!reply.ok()) break;
    if (reply->kind() == WorkReply::TRAIN) ++leased;
    EXPECT_EQ(reply->more_items_size(), 0) << "more than one item a call for one learner";
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kPermissionDenied) << reply.status();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  EXPECT_GE(leased, 1);
  EXPECT_EQ(FinishWithRealWorker(), ThreadsReference());
  EXPECT_TRUE(absl::StrContains(coordinator_->err(), "evicted: owed a result")) << coordinator_->err();
}

// A result broken in one way: the upload, and how the coordinator refuses it.
struct BadResult {
  std::string what;
  std::function<std::vector<ResultChunk>(uint64_t worker, const Leased& leased)> upload;
  std::string words;  // in the refusal, which is InvalidArgument
};

TEST_F(ProtocolTest, BadResultsAreRefusedAndTheTaskIsRedone) {
  const int64_t numel = learner_->num_parameters();
  auto with_delta = [&](uint64_t worker, const Leased& leased, const std::function<void(torch::Tensor&)>& poison) {
    TaskResult result = leased.result;
    result.delta = leased.result.delta.clone();
    poison(result.delta);
    return Messages(worker, leased.work, result);
  };
  auto mangled = [&](uint64_t worker, const Leased& leased, const std::function<void(std::vector<ResultChunk>&)>& f) {
    std::vector<ResultChunk> messages = Messages(worker, leased.work, leased.result);
    f(messages);
    return messages;
  };
  const std::vector<BadResult> bad_results = {
      {"wrong size",
       [&](uint64_t w, const Leased& l) {
         return mangled(w, l, [&](auto& m) { m[0].mutable_header()->set_num_parameters(numel + 1); });
       },
       "parameters"},
      {"NaN",
       [&](uint64_t w, const Leased& l) {
         return with_delta(w, l, [&](torch::Tensor& d) { d[numel / 2] = std::numeric_limits<float>::quiet_NaN(); });
       },
       "nan"},
      {"Inf",
       [&](uint64_t w, const Leased& l) {
         return with_delta(w, l, [](torch::Tensor& d) { d[0] = std::numeric_limits<float>::infinity(); });
       },
       "inf"},
      {"finite, beyond what the exact sums take",  // refused by the round engine, not the decoder
       [&](uint64_t w, const Leased& l) { return with_delta(w, l, [](torch::Tensor& d) { d[3] = 1e30f; }); },
       "element 3 is 1e+30"},
      {"unknown dtype",
       [&](uint64_t w, const Leased& l) {
         return mangled(w, l, [](auto& m) { m[0].mutable_header()->set_delta_dtype(static_cast<DeltaDtype>(7)); });
       },
       "dtype"},
      {"fp32 bytes labelled fp16",  // twice too long
       [&](uint64_t w, const Leased& l) {
         return mangled(w, l, [](auto& m) { m[0].mutable_header()->set_delta_dtype(DELTA_FP16); });
       },
       "oversized"},
      {"a chunk past the end",
       [&](uint64_t w, const Leased& l) {
         return mangled(w, l, [](auto& m) {
           ResultChunk extra = m.back();
           extra.mutable_chunk()->set_offset(extra.chunk().offset() + extra.chunk().data().size());
           m.push_back(extra);
         });
       },
       "oversized"},
      {"truncated",
       [&](uint64_t w, const Leased& l) {
         return mangled(w, l, [](auto& m) {
           std::string* data = m.back().mutable_chunk()->mutable_data();
           data->resize(data->size() / 2);
         });
       },
       "truncated"},
      {"out of order",
       [&](uint64_t w, const Leased& l) {
         return mangled(w, l, [](auto& m) { m.back().mutable_chunk()->set_offset(8); });
       },
       "out of order"},
  };

  // A careless worker sends each bad result in turn on a task of its own,
  // two in a row at most, then a good one (3 in a row would evict it). Each
  // refused task is redone, by the other worker first, which delivers it.
  const uint64_t careless = Join();
  const uint64_t honest = Join();
  int refused_in_a_row = 0, accepted = 0;
  for (const BadResult& bad : bad_results) {
    SCOPED_TRACE(bad.what);
    const Leased leased = LeaseAndCompute(careless);
    ASSERT_EQ(leased.work.kind(), WorkReply::TRAIN);
    ExpectRefused(bad.upload(careless, leased), absl::StatusCode::kInvalidArgument, bad.words);
    const WorkReply redone = GetWork(honest);
    EXPECT_EQ(redone.tasks(0).SerializeAsString(), leased.work.tasks(0).SerializeAsString()) << "not redone";
    EXPECT_NE(redone.lease_id(), leased.work.lease_id());
    ExpectAccepted(Messages(honest, redone, leased.result));
    ++accepted;
    if (++refused_in_a_row < 2 || &bad == &bad_results.back()) continue;
    const Leased good = LeaseAndCompute(careless);
    ASSERT_EQ(good.work.kind(), WorkReply::TRAIN);
    ExpectAccepted(Messages(careless, good.work, good.result));
    ++accepted;
    refused_in_a_row = 0;
  }
  // The duplicate below must arrive while its batch runs (after it, a result
  // is stale), so its task must not be the last of its batch.
  const int batch = config_.outer().meta_batch_size();
  for (; accepted % batch == batch - 1; ++accepted) {
    const Leased extra = LeaseAndCompute(honest);
    ASSERT_EQ(extra.work.kind(), WorkReply::TRAIN);
    ExpectAccepted(Messages(honest, extra.work, extra.result));
  }

  // Refusals that are not the result's fault do not count towards eviction:
  // after these the careless worker (refused twice in a row) still delivers.
  const Leased leased = LeaseAndCompute(careless);
  ASSERT_EQ(leased.work.kind(), WorkReply::TRAIN);
  std::vector<ResultChunk> headless = Messages(careless, leased.work, leased.result);
  headless.erase(headless.begin());
  ExpectRefused(headless, absl::StatusCode::kInvalidArgument, "ResultHeader");
  std::vector<ResultChunk> unknown_lease = Messages(careless, leased.work, leased.result);
  unknown_lease[0].mutable_header()->set_lease_id(987654321);
  ExpectRefused(unknown_lease, absl::StatusCode::kNotFound, "unknown lease");
  std::vector<ResultChunk> stale = Messages(careless, leased.work, leased.result);
  stale[0].mutable_header()->set_state_version(leased.work.state_version() - 1);
  ExpectRefused(stale, absl::StatusCode::kFailedPrecondition, "stale");
  ExpectRefused(Messages(honest, leased.work, leased.result), absl::StatusCode::kPermissionDenied,
                "belongs to worker");

  // The good result counts once; the same upload again is a duplicate.
  ExpectAccepted(Messages(careless, leased.work, leased.result));
  absl::StatusOr<SubmitReply> again = client_->Submit(Messages(careless, leased.work, leased.result));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->duplicate());
  Leave(careless);
  Leave(honest);

  // A worker refused 3 times in a row (a learner error it reports counts
  // too) is evicted, and every later call of it is refused. Alone, it gets
  // the tasks it was not refused on first.
  const uint64_t evictee = Join();
  Leased last;
  for (int refusal = 0; refusal < 3; ++refusal) {
    last = LeaseAndCompute(evictee);
    ASSERT_EQ(last.work.kind(), WorkReply::TRAIN);
    if (refusal < 2) {
      ExpectRefused(bad_results[refusal].upload(evictee, last), absl::StatusCode::kInvalidArgument,
                    bad_results[refusal].words);
    } else {
      absl::StatusOr<SubmitReply> reported =
          client_->Submit(Messages(evictee, last.work, absl::InternalError("the learner blew up")));
      EXPECT_TRUE(reported.ok()) << reported.status();
    }
  }
  ExpectEvicted(evictee);
  ExpectRefused(Messages(evictee, last.work, last.result), absl::StatusCode::kPermissionDenied, "evicted");
  const std::string log = coordinator_->err();
  EXPECT_TRUE(absl::StrContains(
      log, absl::StrCat("worker ", evictee, " (protocol-test) evicted: 3 results refused in a row")))
      << log;
  EXPECT_TRUE(absl::StrContains(log, "the worker failed: INTERNAL: the learner blew up")) << log;

  // The evicted worker's refusals no longer count against its tasks:
  // another worker may be refused on one of them without failing the run.
  const uint64_t successor = Join();
  const WorkReply retry = GetWork(successor);
  EXPECT_EQ(retry.tasks(0).SerializeAsString(), last.work.tasks(0).SerializeAsString());
  last.work = retry;
  ExpectRefused(bad_results[2].upload(successor, last), absl::StatusCode::kInvalidArgument, bad_results[2].words);
  Leave(successor);

  // The coordinator is still serving, logged the refusals, and the run ends
  // exactly as an undisturbed one.
  EXPECT_EQ(FinishWithRealWorker(), ThreadsReference());
  EXPECT_TRUE(absl::StrContains(coordinator_->err(), "is redone")) << coordinator_->err();
}

// A node of three learners is leased the round's three items in one reply.
// The learner that failed sends its error alone and only its task is
// redone; the other two come back as one exact sum, which the coordinator
// takes for both. Uploads naming leases that are not the node's, or a sum
// that leaves out an item's tasks, are refused whole and redone.
TEST_F(ProtocolTest, ANodeUploadsOneSumAndAFailedLearnerCostsOnlyItsTask) {
  JoinRequest join = GoodJoin();
  join.set_learners(3);
  absl::StatusOr<JoinReply> joined = client_->Join(join);
  ASSERT_TRUE(joined.ok()) << joined.status();
  const uint64_t node = joined->worker_id();
  const uint64_t other = Join();
  const int64_t numel = learner_->num_parameters();
  const int meta_batch = config_.outer().meta_batch_size();

  // The node's reply: its three leases and their correct results.
  struct NodeLease {
    uint64_t lease;
    TaskSpec task;
    TaskResult result;
  };
  auto lease_all = [&](const WorkReply& work) {
    std::vector<NodeLease> leases;
    absl::StatusOr<MetaState> state =
        client_->FetchState(node, work.state_version(), numel, CarriedMomentsOf(config_));
    EXPECT_TRUE(state.ok()) << state.status();
    if (!state.ok()) return leases;
    auto add = [&](uint64_t lease, const TaskSpec& task) {
      absl::StatusOr<TaskResult> result = learner_->Run(*state, WorkItem{WorkKind::kTrain, {task}});
      EXPECT_TRUE(result.ok()) << result.status();
      leases.push_back(NodeLease{lease, task, result.ok() ? *result : TaskResult()});
    };
    add(work.lease_id(), work.tasks(0));
    for (const LeasedItem& more : work.more_items()) add(more.lease_id(), more.tasks(0));
    return leases;
  };
  // One upload answering for `leases`, their deltas summed; `lie` changes
  // its header before it goes.
  auto node_upload = [&](const WorkReply& work, const std::vector<NodeLease>& leases,
                         const std::function<void(ResultHeader*)>& lie = nullptr) {
    TaskResult combined = leases[0].result;
    combined.delta = torch::Tensor();
    combined.sums.emplace(numel, meta_batch, CarriedMomentsOf(config_));
    for (const NodeLease& leased : leases) EXPECT_TRUE(combined.sums->Add(leased.result.delta, {}, {}).ok());
    WorkReply first = work;
    first.set_lease_id(leases[0].lease);
    std::vector<ResultChunk> messages = Messages(node, first, combined);
    ResultHeader* header = messages[0].mutable_header();
    for (size_t k = 1; k < leases.size(); ++k) {
      NodeItem* item = header->add_node_items();
      item->set_lease_id(leases[k].lease);
      item->set_loss(leases[k].result.loss);
    }
    if (lie) lie(header);
    return messages;
  };

  // Round 1: learner 3 fails; only its task comes back, to whoever asks.
  const WorkReply work = GetWork(node);
  ASSERT_EQ(work.kind(), WorkReply::TRAIN);
  ASSERT_EQ(work.more_items_size(), 2) << "one item per learner";
  std::vector<NodeLease> leases = lease_all(work);
  ASSERT_EQ(leases.size(), 3u);
  WorkReply failed = work;
  failed.set_lease_id(leases[2].lease);
  ExpectAccepted(Messages(node, failed, absl::InternalError("learner 3 ran out of memory")));
  const NodeLease lost = leases[2];
  leases.pop_back();
  ExpectAccepted(node_upload(work, leases));
  const WorkReply redone = GetWork(other);
  ASSERT_EQ(redone.kind(), WorkReply::TRAIN);
  EXPECT_EQ(redone.tasks(0).SerializeAsString(), lost.task.SerializeAsString()) << "not the failed task";
  EXPECT_EQ(redone.more_items_size(), 0);
  ExpectAccepted(Messages(other, redone, lost.result));

  // Round 2: uploads that cannot stand, each refused whole; then the honest one.
  const WorkReply next = GetWork(node);
  ASSERT_EQ(next.kind(), WorkReply::TRAIN);
  ASSERT_EQ(next.more_items_size(), 2);
  leases = lease_all(next);
  ASSERT_EQ(leases.size(), 3u);
  ExpectRefused(node_upload(next, leases, [&](ResultHeader* h) { h->mutable_node_items(1)->set_lease_id(leases[1].lease); }),
                absl::StatusCode::kInvalidArgument, "named twice");
  ExpectRefused(node_upload(next, leases, [&](ResultHeader* h) { h->mutable_node_items(1)->set_lease_id(987654321); }),
                absl::StatusCode::kNotFound, "unknown lease");
  ExpectRefused(node_upload(next, leases, [&](ResultHeader* h) { h->mutable_node_items(0)->set_loss(NAN); }),
                absl::StatusCode::kInvalidArgument, "loss is nan");
  // The NaN upload was one refusal of the node, and sent the three tasks
  // back to the queue; the honest upload still completes them (the first
  // result counts).
  ExpectAccepted(node_upload(next, leases));
  EXPECT_EQ(FinishWithRealWorker(), ThreadsReference());
}

TEST_F(ProtocolTest, ATaskRefusedOnTwoWorkersStopsTheRun) {
  const uint64_t first = Join();
  const uint64_t second = Join();
  // Both show they can do the work: only such workers can fault a task.
  for (uint64_t worker : {first, second}) {
    const Leased good = LeaseAndCompute(worker);
    ExpectAccepted(Messages(worker, good.work, good.result));
  }
  Leased leased = LeaseAndCompute(first);
  ASSERT_EQ(leased.work.kind(), WorkReply::TRAIN);
  auto wrong_size = [&](uint64_t worker) {
    std::vector<ResultChunk> messages = Messages(worker, leased.work, leased.result);
    messages[0].mutable_header()->set_num_parameters(learner_->num_parameters() + 1);
    return messages;
  };
  ExpectRefused(wrong_size(first), absl::StatusCode::kInvalidArgument, "parameters");

  // The refused task goes to the other worker.
  const WorkReply retry = GetWork(second);
  EXPECT_EQ(retry.tasks(0).SerializeAsString(), leased.work.tasks(0).SerializeAsString());
  leased.work = retry;
  ExpectRefused(wrong_size(second), absl::StatusCode::kInvalidArgument, "parameters");

  // Neither worker was evicted, so the task is at fault: the run stops with
  // one line naming it and both workers.
  EXPECT_EQ(coordinator_->ExitCode(60), 1) << coordinator_->err();
  const std::string log = coordinator_->err();
  EXPECT_TRUE(absl::StrContains(log, absl::StrCat("result of task 2 from worker ", first, " refused"))) << log;
  std::vector<std::string> errors;
  for (absl::string_view line : absl::StrSplit(log, '\n'))
    if (absl::StartsWith(line, "reptile coordinator: error: ")) errors.emplace_back(line);
  ASSERT_EQ(errors.size(), 1u) << log;
  EXPECT_TRUE(absl::StrContains(errors[0], "work item 2 failed on 2 different workers")) << errors[0];
  EXPECT_TRUE(absl::StrContains(errors[0], absl::StrCat("worker ", first, ": "))) << errors[0];
  EXPECT_TRUE(absl::StrContains(errors[0], absl::StrCat("worker ", second, ": "))) << errors[0];
}

TEST_F(ProtocolTest, RandomlyMangledSubmissionsNeverHurtTheRun) {
  // Every task gets a correct result, mangled at random: a wrong size, dtype,
  // offset, tensor index or length, NaN bytes, unexpected moments, or broken
  // counts. The server must refuse each mangled one (or accept it only when
  // the mangling happened to change nothing), and the run must end exactly
  // as an undisturbed one. A worker refused 3 times in a row is evicted, so
  // the fuzzer joins under a new identity whenever that happens.
  std::mt19937_64 rng(2026);
  int refused = 0, identities = 0;
  uint64_t worker = 0;
  int refused_in_a_row = 0;
  for (int trial = 0; trial < 120; ++trial) {
    if (worker == 0) {
      worker = Join();
      ++identities;
      refused_in_a_row = 0;
    }
    const Leased leased = LeaseAndCompute(worker);
    if (leased.work.kind() != WorkReply::TRAIN) break;
    std::vector<ResultChunk> messages = Messages(worker, leased.work, leased.result);
    ResultHeader* header = messages[0].mutable_header();
    TensorChunk* chunk = messages.back().mutable_chunk();
    std::string* data = chunk->mutable_data();
    switch (rng() % 8) {
      case 0:
        header->set_num_parameters(header->num_parameters() + 1 + static_cast<int64_t>(rng() % 1000));
        break;
      case 1:
        header->set_delta_dtype(static_cast<DeltaDtype>(rng() % 5));
        break;
      case 2:
        chunk->set_offset(rng() % 100000);
        break;
      case 3:
        chunk->set_tensor(static_cast<uint32_t>(rng() % 4));
        break;
      case 4:
        data->resize(rng() % (data->size() * 2 + 1));
        break;
      case 5:
        for (int n = 0; n < 4; ++n) std::memset(data->data() + (rng() % (data->size() / 4)) * 4, 0xff, 4);
        break;
      case 6:
        if (rng() % 2 == 0) {
          header->set_has_moments(true);
        } else {
          header->set_has_first_moment(true);
        }
        break;
      default:
        header->set_predictions(-1 - static_cast<int64_t>(rng() % 5));
        break;
    }
    absl::StatusOr<SubmitReply> reply = client_->Submit(messages);
    if (reply.ok()) {  // the mangling was a no-op, e.g. the same dtype drawn again
      EXPECT_FALSE(reply->duplicate());
      refused_in_a_row = 0;
      continue;
    }
    ++refused;
    EXPECT_EQ(reply.status().code(), absl::StatusCode::kInvalidArgument) << reply.status();
    EXPECT_NE(reply.status().message(), "") << "a refusal must say why";
    ASSERT_TRUE(coordinator_->running()) << coordinator_->err();
    if (++refused_in_a_row == 3) {
      ExpectEvicted(worker);
      worker = 0;
    }
  }
  EXPECT_GT(refused, 50);
  EXPECT_GT(identities, 10);
  if (worker != 0) Leave(worker);
  EXPECT_EQ(FinishWithRealWorker(), ThreadsReference());
}

// Adam's state carried between rounds: results hold Δ and Adam's v.
class AdamProtocolTest : public ProtocolTest {
 protected:
  std::vector<std::string> Overrides() const override {
    std::vector<std::string> overrides = kOverrides;
    overrides.insert(overrides.end(), {"inner.optimizer=ADAM", "inner.adam_beta1=0", "inner.adam_beta2=0.999",
                                       "inner.adam_epsilon=1e-8", "inner.state_mode=CARRY"});
    return overrides;
  }
};

// A second moment below zero cannot come from Adam; it is refused, and the
// same result with v intact is then accepted.
TEST_F(AdamProtocolTest, ANegativeSecondMomentIsRefused) {
  const uint64_t worker = Join();
  const Leased leased = LeaseAndCompute(worker);
  ASSERT_EQ(leased.work.kind(), WorkReply::TRAIN);
  ASSERT_TRUE(leased.result.adam_v.defined());
  TaskResult lying = leased.result;
  lying.adam_v = leased.result.adam_v.clone();
  lying.adam_v[learner_->num_parameters() - 1] = -1e-9f;
  ExpectRefused(Messages(worker, leased.work, lying), absl::StatusCode::kInvalidArgument,
                "adam_v has negative entries");
  const uint64_t honest = Join();
  const WorkReply redone = GetWork(honest);
  ASSERT_EQ(redone.kind(), WorkReply::TRAIN);
  EXPECT_EQ(redone.tasks(0).SerializeAsString(), leased.work.tasks(0).SerializeAsString()) << "not redone";
  ExpectAccepted(Messages(honest, redone, leased.result));
}

// Items of 3 tasks, whose results are exact sums (in their compact form).
class ExactSumProtocolTest : public ProtocolTest {
 protected:
  std::vector<std::string> Overrides() const override {
    std::vector<std::string> overrides = kOverrides;
    overrides.push_back("runtime.tasks_per_item=3");
    return overrides;
  }
};

// A peer that lies about how many tasks its sum holds or how large it is,
// sends sums no in-range values can reach, or stops early is refused; an
// honest sum is then accepted for the same item.
TEST_F(ExactSumProtocolTest, LyingOrMangledExactSumsAreRefused) {
  auto lease_and_sum = [&](uint64_t worker) {
    Leased leased;
    leased.work = GetWork(worker);
    EXPECT_EQ(leased.work.tasks_size(), 3);
    absl::StatusOr<MetaState> state = client_->FetchState(worker, leased.work.state_version(),
                                                          learner_->num_parameters(), CarriedMomentsOf(config_));
    EXPECT_TRUE(state.ok()) << state.status();
    WorkItem item{WorkKind::kTrain, {leased.work.tasks().begin(), leased.work.tasks().end()}};
    absl::StatusOr<TaskResult> result = learner_->Run(*state, item);
    EXPECT_TRUE(result.ok() && result->sums.has_value()) << result.status();
    if (result.ok()) leased.result = *std::move(result);
    return leased;
  };
  {
    const uint64_t worker = Join();
    Leased leased = lease_and_sum(worker);
    std::vector<ResultChunk> messages = Messages(worker, leased.work, leased.result);
    messages[0].mutable_header()->set_tasks(2);
    ExpectRefused(messages, absl::StatusCode::kInvalidArgument, "result covers 2 tasks; the lease has 3");
  }
  {
    const uint64_t worker = Join();
    Leased leased = lease_and_sum(worker);
    std::vector<ResultChunk> messages = Messages(worker, leased.work, leased.result);
    ASSERT_GT(messages.size(), 1u);
    // Block 0's values shifted to the top of the 128 bits.
    std::string& data = *messages[1].mutable_chunk()->mutable_data();
    data[0] = static_cast<char>(128 - static_cast<unsigned char>(data[1]));
    ExpectRefused(messages, absl::StatusCode::kInvalidArgument, "beyond what 3 in-range values can reach");
  }
  {
    const uint64_t worker = Join();
    Leased leased = lease_and_sum(worker);
    std::vector<ResultChunk> messages = Messages(worker, leased.work, leased.result);
    const uint64_t most = ExactSum::MaxCompactBytes(learner_->num_parameters());
    messages[0].mutable_header()->set_exact_bytes(0, most + 1);
    ExpectRefused(messages, absl::StatusCode::kInvalidArgument,
                  absl::StrCat("an exact sum of ", most + 1, " bytes; ", learner_->num_parameters(),
                               " values take at most ", most));
  }
  {
    const uint64_t worker = Join();
    Leased leased = lease_and_sum(worker);
    std::vector<ResultChunk> messages = Messages(worker, leased.work, leased.result);
    messages.pop_back();  // the stream stops short
    absl::StatusOr<SubmitReply> reply = client_->Submit(messages);
    EXPECT_EQ(reply.status().code(), absl::StatusCode::kInvalidArgument) << reply.status();
  }
  const uint64_t honest = Join();
  Leased leased = lease_and_sum(honest);
  ExpectAccepted(Messages(honest, leased.work, leased.result));
}

// A coordinator's transport in this process, for tests that stall its
// streams or hold its sink: the transport for a config, a zero state of its
// model, and the Join request of a worker.
struct InProcess {
  std::unique_ptr<GrpcTransport> transport;
  MetaState state;
  int64_t numel = 0;
  JoinRequest join;
};

void StartInProcess(const ExperimentConfig& config, const std::string& worker_name, InProcess* in) {
  absl::StatusOr<std::unique_ptr<GrpcTransport>> transport = GrpcTransport::Create(config, {});
  ASSERT_TRUE(transport.ok()) << transport.status();
  auto model = MakeModel(config, 0);
  ASSERT_TRUE(model.ok()) << model.status();
  in->transport = *std::move(transport);
  in->numel = FlatParameters(**model).numel();
  in->state.parameters = torch::zeros({in->numel});
  in->join.set_worker_name(worker_name);
  in->join.set_protocol_version(kProtocolVersion);
  in->join.set_config_fingerprint(ConfigFingerprint(config));
  in->join.set_layout_fingerprint(LayoutFingerprint(FlatParameters(**model).layout()));
}

// A worker that opens a state fetch and stops reading is cut off once the
// stream has not moved for 5 s (the coordinator holds no thread for it), and
// the same worker's next fetch is served whole. The coordinator runs in this
// process; its state is 17 MB, far more than the flow-control windows of a
// client that does not read.
TEST(ProtocolStallTest, AStalledStateFetchIsCutOffAndTheNextOneIsServed) {
  const ExperimentConfig config = LoadNamedConfig("sine", {"model.hidden_units=2048"});
  InProcess coordinator;
  ASSERT_NO_FATAL_FAILURE(StartInProcess(config, "staller", &coordinator));
  const int64_t numel = coordinator.numel;
  const std::vector<WorkItem> items(1);  // a training item; nobody runs it
  std::thread run([&] {
    coordinator.transport->Run(coordinator.state, items, [](size_t, TaskResult) { return absl::OkStatus(); })
        .IgnoreError();
  });

  const std::string address = absl::StrCat("127.0.0.1:", coordinator.transport->port());
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);  // windows stay small: a client that does not read stalls the stream
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  CoordinatorClient client(channel, "");
  absl::StatusOr<JoinReply> joined = client.Join(coordinator.join);
  ASSERT_TRUE(joined.ok()) << joined.status();
  WorkReply work;
  for (int attempt = 0; attempt < 20 && work.kind() != WorkReply::TRAIN; ++attempt) {
    absl::StatusOr<WorkReply> reply = client.GetWork(joined->worker_id());
    ASSERT_TRUE(reply.ok()) << reply.status();
    work = *reply;
  }
  ASSERT_EQ(work.kind(), WorkReply::TRAIN);

  std::unique_ptr<Coordinator::Stub> stub = Coordinator::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  FetchStateRequest request;
  request.set_worker_id(joined->worker_id());
  request.set_state_version(work.state_version());
  auto reader = stub->FetchState(&context, request);
  StateChunk message;
  ASSERT_TRUE(reader->Read(&message));
  ASSERT_TRUE(message.has_header());
  const auto stalled = std::chrono::steady_clock::now();
  for (int second = 0; second < 8; ++second) {  // 5 s without progress, then the reaper's tick
    std::this_thread::sleep_for(std::chrono::seconds(1));
    EXPECT_TRUE(client.Heartbeat(joined->worker_id()).ok());  // a live worker, stalled on one stream only
  }
  int64_t received = 0;
  while (reader->Read(&message)) received += message.chunk().data().size();
  const grpc::Status status = reader->Finish();
  EXPECT_FALSE(status.ok()) << "the stalled fetch was not cut off";
  EXPECT_LT(received, numel * 4);
  EXPECT_LT(std::chrono::steady_clock::now() - stalled, std::chrono::seconds(30));

  absl::StatusOr<MetaState> fetched =
      client.FetchState(joined->worker_id(), work.state_version(), numel, CarriedMomentsOf(config));
  EXPECT_TRUE(fetched.ok()) << fetched.status();
  coordinator.transport->Interrupt("test over");
  run.join();
}

// Results are handed to the round engine on several threads at once, but
// never two for one item: a straggler's copy that comes in while the first
// result for its item is being taken waits, and is then answered as a
// duplicate (not refused, which would count against an honest worker). The
// coordinator runs in this process, with a sink that holds the first result.
TEST(ProtocolRaceTest, ACopysResultArrivingWhileTheFirstIsTakenWaitsAndIsADuplicate) {
  const ExperimentConfig config = LoadNamedConfig("sine", {});
  InProcess coordinator;
  ASSERT_NO_FATAL_FAILURE(StartInProcess(config, "race", &coordinator));
  const int64_t numel = coordinator.numel;
  const std::vector<WorkItem> items = {WorkItem{WorkKind::kTrain, {TaskSpec()}}};
  absl::Mutex mu;
  bool entered = false, released = false;
  int calls = 0, in_sink = 0, most_in_sink = 0;
  absl::Status run_status;
  std::thread run([&] {
    run_status = coordinator.transport->Run(coordinator.state, items, [&](size_t, TaskResult) {
      absl::MutexLock lock(&mu);
      ++calls;
      most_in_sink = std::max(most_in_sink, ++in_sink);
      entered = true;
      mu.Await(absl::Condition(&released));
      --in_sink;
      return absl::OkStatus();
    });
  });

  CoordinatorClient client(grpc::CreateChannel(absl::StrCat("127.0.0.1:", coordinator.transport->port()),
                                                grpc::InsecureChannelCredentials()),
                           "");
  auto lease = [&](uint64_t worker) {
    for (int attempt = 0; attempt < 50; ++attempt) {
      absl::StatusOr<WorkReply> reply = client.GetWork(worker);
      EXPECT_TRUE(reply.ok()) << reply.status();
      if (!reply.ok() || reply->kind() == WorkReply::TRAIN) return reply.ok() ? *reply : WorkReply();
    }
    return WorkReply();
  };
  absl::StatusOr<JoinReply> first = client.Join(coordinator.join), second = client.Join(coordinator.join);
  ASSERT_TRUE(first.ok() && second.ok());
  const WorkReply original = lease(first->worker_id());
  ASSERT_EQ(original.kind(), WorkReply::TRAIN);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // past the 1 s before a copy is made
  const WorkReply copy = lease(second->worker_id());
  ASSERT_EQ(copy.kind(), WorkReply::TRAIN) << "no straggler's copy";
  ASSERT_NE(copy.lease_id(), original.lease_id());

  TaskResult zeros;
  zeros.delta = torch::zeros({numel});
  absl::StatusOr<SubmitReply> copy_reply, original_reply;
  std::thread copy_upload([&] {
    copy_reply = client.Submit(CoordinatorClient::ResultMessages(second->worker_id(), copy, zeros, DELTA_FP32, numel));
  });
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(&entered));
  }
  std::thread original_upload([&] {
    original_reply =
        client.Submit(CoordinatorClient::ResultMessages(first->worker_id(), original, zeros, DELTA_FP32, numel));
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // time to reach the sink, were it not held back
  {
    absl::MutexLock lock(&mu);
    released = true;
  }
  copy_upload.join();
  original_upload.join();
  run.join();
  EXPECT_TRUE(run_status.ok()) << run_status;
  ASSERT_TRUE(copy_reply.ok()) << copy_reply.status();
  EXPECT_FALSE(copy_reply->duplicate());
  ASSERT_TRUE(original_reply.ok()) << original_reply.status();
  EXPECT_TRUE(original_reply->duplicate());
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(most_in_sink, 1);
  EXPECT_EQ(coordinator.transport->Stats().results_refused, 0);
}

}  // namespace
}  // namespace reptile::testing
