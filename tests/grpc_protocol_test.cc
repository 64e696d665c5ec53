// A coordinator process against a hand-driven client that breaks the
// protocol in every way the issue lists, plus a randomized stream of
// malformed submissions. Each is refused with a status that says why, the
// coordinator keeps serving, the task is redone, and the run still ends with
// the parameters of an undisturbed one.
#include <grpcpp/grpcpp.h>

#include <cstring>
#include <filesystem>
#include <limits>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "coordinator.grpc.pb.h"
#include "core/config.h"
#include "core/flat_parameters.h"
#include "gtest/gtest.h"
#include "health.grpc.pb.h"
#include "tests/child_process.h"
#include "tests/test_support.h"
#include "transport/grpc/grpc_transport.h"
#include "transport/grpc/tensor_stream.h"
#include "worker/learner.h"

namespace reptile::testing {
namespace {

const std::vector<std::string> kOverrides = {"outer.rounds=6", "outer.meta_batch_size=3", "eval.every_rounds=0",
                                             "eval.final_episodes=0", "runtime.worker_timeout_seconds=120"};

// One result stream: a header and chunks, sent exactly as given.
struct Submission {
  ResultHeader header;
  std::vector<TensorChunk> chunks;
  bool header_first = true;
};

class ProtocolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("run");
    const std::string port_file = dir_ + "/../port";
    std::filesystem::remove(port_file);
    coordinator_ = ChildProcess::Start(
        {REPTILE_BINARY, "coordinator", "--config", SourcePath("configs/sine.textproto"), "--run_dir", dir_,
         "--listen", "127.0.0.1:0", "--port_file", port_file, kOverrides[0], kOverrides[1], kOverrides[2],
         kOverrides[3], kOverrides[4]},
        dir_ + "/../coordinator");
    for (int i = 0; i < 600 && !std::filesystem::exists(port_file); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(std::filesystem::exists(port_file)) << coordinator_->err();
    address_ = "127.0.0.1:" + ReadWholeFile(port_file).substr(0, ReadWholeFile(port_file).find('\n'));
    channel_ = grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
    stub_ = Coordinator::NewStub(channel_);
    config_ = LoadNamedConfig("sine", kOverrides);
    auto learner = Learner::Create(config_, SharedTaskSource(config_));
    ASSERT_TRUE(learner.ok()) << learner.status();
    learner_ = std::move(learner).value();
  }

  template <typename Request, typename Reply, typename Method>
  grpc::Status Call(Method method, const Request& request, Reply* reply) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return (stub_.get()->*method)(&context, request, reply);
  }

  JoinRequest GoodJoin() {
    JoinRequest request;
    request.set_worker_name("protocol-test");
    request.set_protocol_version(kProtocolVersion);
    request.set_config_fingerprint(ConfigFingerprint(config_));
    request.set_layout_fingerprint(LayoutFingerprint(learner_->layout()));
    return request;
  }

  uint64_t Join() {
    JoinReply reply;
    grpc::Status status = Call(&Coordinator::Stub::Join, GoodJoin(), &reply);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return reply.worker_id();
  }

  WorkReply GetWork(uint64_t worker) {
    WorkRequest request;
    request.set_worker_id(worker);
    for (int attempt = 0; attempt < 20; ++attempt) {
      WorkReply reply;
      grpc::Status status = Call(&Coordinator::Stub::GetWork, request, &reply);
      EXPECT_TRUE(status.ok()) << status.error_message();
      if (reply.kind() != WorkReply::WAIT) return reply;
    }
    ADD_FAILURE() << "no work came";
    return {};
  }

  MetaState Fetch(uint64_t worker, uint64_t version) {
    FetchStateRequest request;
    request.set_worker_id(worker);
    request.set_state_version(version);
    grpc::ClientContext context;
    auto reader = stub_->FetchState(&context, request);
    StateChunk chunk;
    EXPECT_TRUE(reader->Read(&chunk) && chunk.has_header());
    const int64_t numel = chunk.header().num_parameters();
    TensorAssembler assembler({static_cast<size_t>(numel) * 4});
    while (reader->Read(&chunk)) EXPECT_TRUE(assembler.Add(chunk.chunk()).ok());
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_TRUE(assembler.Finish().ok());
    MetaState state;
    state.parameters = *DecodeTensor(assembler.bytes(0), DELTA_FP32, numel);
    return state;
  }

  // A well-formed submission of `result` for `work`.
  Submission Good(uint64_t worker, const WorkReply& work, const TaskResult& result) {
    Submission s;
    s.header.set_worker_id(worker);
    s.header.set_lease_id(work.lease_id());
    s.header.set_state_version(work.state_version());
    s.header.set_delta_dtype(DELTA_FP32);
    s.header.set_num_parameters(result.delta.numel());
    s.header.set_has_delta(true);
    s.header.set_loss(result.loss);
    const std::string bytes = EncodeTensor(result.delta, DELTA_FP32);
    WriteChunks({&bytes}, [&](const TensorChunk& c) {
      s.chunks.push_back(c);
      return true;
    });
    return s;
  }

  grpc::Status Submit(const Submission& s, SubmitReply* reply) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    auto writer = stub_->SubmitResult(&context, reply);
    ResultChunk message;
    bool open = true;
    if (s.header_first) {
      *message.mutable_header() = s.header;
      open = writer->Write(message);
    }
    for (const TensorChunk& c : s.chunks) {
      if (!open) break;
      *message.mutable_chunk() = c;
      open = writer->Write(message);
    }
    writer->WritesDone();
    return writer->Finish();
  }

  void ExpectRefused(const Submission& s, grpc::StatusCode code, const std::string& words) {
    SubmitReply reply;
    grpc::Status status = Submit(s, &reply);
    EXPECT_EQ(status.error_code(), code) << status.error_message();
    EXPECT_TRUE(absl::StrContains(status.error_message(), words)) << status.error_message();
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
  std::unique_ptr<Coordinator::Stub> stub_;
  ExperimentConfig config_;
  std::unique_ptr<Learner> learner_;
};

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

TEST_F(ProtocolTest, JoinRefusesAnotherConfigModelOrProtocol) {
  JoinReply reply;
  JoinRequest request = GoodJoin();
  request.set_config_fingerprint(ConfigFingerprint(LoadNamedConfig("sine", {"inner.learning_rate=0.5"})));
  grpc::Status status = Call(&Coordinator::Stub::Join, request, &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "config fingerprint")) << status.error_message();

  request = GoodJoin();
  request.set_layout_fingerprint("0123");
  status = Call(&Coordinator::Stub::Join, request, &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "layout")) << status.error_message();

  request = GoodJoin();
  request.set_protocol_version(kProtocolVersion + 1);
  status = Call(&Coordinator::Stub::Join, request, &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "protocol")) << status.error_message();

  // A worker that was never admitted gets no work.
  WorkRequest work;
  work.set_worker_id(4242);
  WorkReply work_reply;
  status = Call(&Coordinator::Stub::GetWork, work, &work_reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(FinishWithRealWorker(), ThreadsReference());
}

TEST_F(ProtocolTest, BadResultsAreRefusedAndTheTaskIsRedone) {
  const uint64_t worker = Join();
  WorkReply work = GetWork(worker);
  ASSERT_EQ(work.kind(), WorkReply::TRAIN);
  const MetaState state = Fetch(worker, work.state_version());
  WorkItem item{WorkKind::kTrain, work.spec()};
  auto computed = learner_->Run(state, item);
  ASSERT_TRUE(computed.ok()) << computed.status();
  const TaskResult& result = *computed;
  const int64_t numel = result.delta.numel();

  // Each refusal puts the task back; the next GetWork hands the same task out
  // again under a new lease.
  auto next_lease = [&](const char* after) {
    WorkReply again = GetWork(worker);
    EXPECT_EQ(again.spec().SerializeAsString(), work.spec().SerializeAsString()) << "not redone after " << after;
    EXPECT_NE(again.lease_id(), work.lease_id());
    work = again;
  };

  Submission wrong_size = Good(worker, work, result);
  wrong_size.header.set_num_parameters(numel + 1);
  ExpectRefused(wrong_size, grpc::StatusCode::INVALID_ARGUMENT, "parameters");
  next_lease("wrong size");

  torch::Tensor poisoned = result.delta.clone();
  poisoned[numel / 2] = std::numeric_limits<float>::quiet_NaN();
  TaskResult nan_result = result;
  nan_result.delta = poisoned;
  ExpectRefused(Good(worker, work, nan_result), grpc::StatusCode::INVALID_ARGUMENT, "nan");
  next_lease("NaN");

  TaskResult inf_result = result;
  inf_result.delta = result.delta.clone();
  inf_result.delta[0] = std::numeric_limits<float>::infinity();
  ExpectRefused(Good(worker, work, inf_result), grpc::StatusCode::INVALID_ARGUMENT, "inf");
  next_lease("Inf");

  Submission bad_dtype = Good(worker, work, result);
  bad_dtype.header.set_delta_dtype(static_cast<DeltaDtype>(7));
  ExpectRefused(bad_dtype, grpc::StatusCode::INVALID_ARGUMENT, "dtype");
  next_lease("bad dtype");

  Submission half_dtype = Good(worker, work, result);  // fp32 bytes declared as fp16: twice too long
  half_dtype.header.set_delta_dtype(DELTA_FP16);
  ExpectRefused(half_dtype, grpc::StatusCode::INVALID_ARGUMENT, "oversized");
  next_lease("mislabelled dtype");

  Submission oversized = Good(worker, work, result);
  TensorChunk extra = oversized.chunks.back();
  extra.set_offset(extra.offset() + extra.data().size());
  oversized.chunks.push_back(extra);
  ExpectRefused(oversized, grpc::StatusCode::INVALID_ARGUMENT, "oversized");
  next_lease("oversized");

  Submission truncated = Good(worker, work, result);
  truncated.chunks.back().mutable_data()->resize(truncated.chunks.back().data().size() / 2);
  ExpectRefused(truncated, grpc::StatusCode::INVALID_ARGUMENT, "truncated");
  next_lease("truncated");

  Submission out_of_order = Good(worker, work, result);
  out_of_order.chunks.back().set_offset(8);
  ExpectRefused(out_of_order, grpc::StatusCode::INVALID_ARGUMENT, "out of order");
  next_lease("out of order");

  Submission headless = Good(worker, work, result);
  headless.header_first = false;
  ExpectRefused(headless, grpc::StatusCode::INVALID_ARGUMENT, "ResultHeader");

  Submission unknown_lease = Good(worker, work, result);
  unknown_lease.header.set_lease_id(987654321);
  ExpectRefused(unknown_lease, grpc::StatusCode::NOT_FOUND, "unknown lease");

  Submission stale = Good(worker, work, result);
  stale.header.set_state_version(work.state_version() - 1);
  ExpectRefused(stale, grpc::StatusCode::FAILED_PRECONDITION, "stale");

  const uint64_t other = Join();
  Submission stolen = Good(worker, work, result);
  stolen.header.set_worker_id(other);
  ExpectRefused(stolen, grpc::StatusCode::PERMISSION_DENIED, "belongs to worker");

  // The good result counts once; the same submission again is a duplicate.
  SubmitReply reply;
  grpc::Status status = Submit(Good(worker, work, result), &reply);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(reply.duplicate());
  status = Submit(Good(worker, work, result), &reply);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(reply.duplicate());

  // The coordinator is still serving, logged the refusals, and the run ends
  // exactly as an undisturbed one.
  for (uint64_t id : {worker, other}) {
    LeaveRequest leave;
    leave.set_worker_id(id);
    LeaveReply left;
    EXPECT_TRUE(Call(&Coordinator::Stub::Leave, leave, &left).ok());
  }
  EXPECT_EQ(FinishWithRealWorker(), ThreadsReference());
  EXPECT_TRUE(absl::StrContains(coordinator_->err(), "is redone")) << coordinator_->err();
}

TEST_F(ProtocolTest, RandomlyMangledSubmissionsNeverHurtTheRun) {
  // Every task gets a correct result, mangled at random: a wrong size, dtype,
  // offset, tensor index or length, NaN bytes, unexpected moments, or broken
  // counts. The server must refuse each mangled one (or accept it only when
  // the mangling happened to change nothing), and the run must end exactly
  // as an undisturbed one.
  const uint64_t worker = Join();
  std::mt19937_64 rng(2026);
  int refused = 0;
  uint64_t version = 0;
  MetaState state;
  for (int trial = 0; trial < 120; ++trial) {
    WorkReply work = GetWork(worker);
    if (work.kind() != WorkReply::TRAIN) break;
    if (work.state_version() != version) {
      state = Fetch(worker, work.state_version());
      version = work.state_version();
    }
    auto result = learner_->Run(state, WorkItem{WorkKind::kTrain, work.spec()});
    ASSERT_TRUE(result.ok()) << result.status();
    Submission s = Good(worker, work, *result);
    std::string* data = s.chunks.back().mutable_data();
    switch (rng() % 8) {
      case 0:
        s.header.set_num_parameters(s.header.num_parameters() + 1 + static_cast<int64_t>(rng() % 1000));
        break;
      case 1:
        s.header.set_delta_dtype(static_cast<DeltaDtype>(rng() % 5));
        break;
      case 2:
        s.chunks.back().set_offset(rng() % 100000);
        break;
      case 3:
        s.chunks.back().set_tensor(static_cast<uint32_t>(rng() % 4));
        break;
      case 4:
        data->resize(rng() % (data->size() * 2 + 1));
        break;
      case 5:
        for (int n = 0; n < 4; ++n) std::memset(data->data() + (rng() % (data->size() / 4)) * 4, 0xff, 4);
        break;
      case 6:
        s.header.set_has_moments(true);
        break;
      default:
        s.header.set_predictions(-1 - static_cast<int64_t>(rng() % 5));
        break;
    }
    SubmitReply reply;
    grpc::Status status = Submit(s, &reply);
    if (status.ok()) continue;  // the mangling was a no-op, e.g. the same dtype drawn again
    ++refused;
    EXPECT_NE(status.error_message(), "") << "a refusal must say why";
    ASSERT_TRUE(coordinator_->running()) << coordinator_->err();
  }
  EXPECT_GT(refused, 50);
  LeaveRequest leave;
  leave.set_worker_id(worker);
  LeaveReply left;
  EXPECT_TRUE(Call(&Coordinator::Stub::Leave, leave, &left).ok());
  EXPECT_EQ(FinishWithRealWorker(), ThreadsReference());
}

}  // namespace
}  // namespace reptile::testing
