// The shared folder: state and results as files for workers on the
// coordinator's Unix socket. The file functions refuse what a hostile file
// could be (a symlink, a FIFO, a wrong size); the coordinator offers the
// folder over its Unix socket only, takes results from it only from there,
// and hands the round engine the same tensors either way.
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/config.h"
#include "core/flat_parameters.h"
#include "coordinator/task_sampler.h"
#include "core/models/models.h"
#include "gtest/gtest.h"
#include "tests/test_support.h"
#include "transport/grpc/coordinator_client.h"
#include "transport/grpc/grpc_transport.h"
#include "transport/wire/shared_folder.h"
#include "transport/wire/tensor_stream.h"
#include "worker/learner.h"

namespace reptile::testing {
namespace {

TEST(SharedFolderFilesTest, TensorsComeBackAsWrittenAndAnOverwriteCutsTheFileToSize) {
  const std::string dir = TempDir("files");
  const std::string path = dir + "/state-1";
  ASSERT_TRUE(WriteTensorFile(path, {"abc", "defgh"}).ok());
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));
  absl::StatusOr<std::vector<std::string>> read = ReadTensorFile(path, {3, 5});
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, (std::vector<std::string>{"abc", "defgh"}));
  struct stat info;
  ASSERT_EQ(stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);

  const std::string result = SharedResultPath(dir, 42);
  ASSERT_TRUE(OverwriteTensorFile(result, {"0123456789"}).ok());
  ASSERT_TRUE(OverwriteTensorFile(result, {"xy", "z"}).ok());
  read = ReadTensorFile(result, {2, 1});
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, (std::vector<std::string>{"xy", "z"}));
}

TEST(SharedFolderFilesTest, AFileOfAnotherSizeASymlinkAFifoOrNoFileIsRefused) {
  const std::string dir = TempDir("hostile");
  const std::string path = dir + "/result-1";
  ASSERT_TRUE(OverwriteTensorFile(path, {"abcd"}).ok());
  absl::StatusOr<std::vector<std::string>> read = ReadTensorFile(path, {2, 3});
  EXPECT_TRUE(absl::IsInvalidArgument(read.status())) << read.status();
  EXPECT_TRUE(absl::StrContains(read.status().message(), "holds 4 bytes, not 5")) << read.status();

  const std::string link = dir + "/result-2";
  std::filesystem::create_symlink(path, link);
  EXPECT_FALSE(ReadTensorFile(link, {4}).ok());
  EXPECT_FALSE(OverwriteTensorFile(link, {"x"}).ok());  // never written through
  EXPECT_EQ(*ReadTensorFile(path, {4}), std::vector<std::string>{"abcd"});

  const std::string fifo = dir + "/result-3";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  read = ReadTensorFile(fifo, {4});  // returns at once: nobody writes to it
  EXPECT_TRUE(absl::IsInvalidArgument(read.status())) << read.status();
  EXPECT_TRUE(absl::StrContains(read.status().message(), "not a regular file")) << read.status();

  EXPECT_TRUE(absl::IsNotFound(ReadTensorFile(dir + "/state-9", {4}).status()));
}

// A full file system (a tmpfs of 64 KiB, as a container's small /dev/shm
// is) gives an error that names the file and the fixes, and leaves no file.
TEST(SharedFolderFilesTest, AFullFolderSaysHowToGiveItRoom) {
  const std::string dir = TempDir("small_tmpfs");
  ASSERT_EQ(system(absl::StrCat("mount -t tmpfs -o size=64k tmpfs ", dir).c_str()), 0)
      << "the tests run as root, which may mount a tmpfs";
  const std::string path = dir + "/result-1";
  const std::string megabyte(1 << 20, 'x');
  const absl::Status written = WriteTensorFile(path, {megabyte});
  EXPECT_TRUE(absl::IsResourceExhausted(written)) << written;
  EXPECT_TRUE(absl::StrContains(written.message(), absl::StrCat("write ", (1 << 20) + 16, " bytes to ", path,
                                                                 ".partial")))
      << written;
  EXPECT_TRUE(absl::StrContains(written.message(), "--shm-size")) << written;
  EXPECT_TRUE(absl::StrContains(written.message(), "runtime.local_workers=THREADS")) << written;
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));
  EXPECT_TRUE(absl::IsResourceExhausted(OverwriteTensorFile(path, {megabyte})));
  EXPECT_EQ(system(absl::StrCat("umount ", dir).c_str()), 0);
}

// A result file rewritten while the coordinator reads it (a worker told by a
// forged board word that its last result was taken) is refused, never read
// as a mix of two results: every read that succeeds holds one write's bytes.
TEST(SharedFolderFilesTest, AFileRewrittenWhileItIsReadIsRefusedNotMixed) {
  const std::string dir = TempDir("rewritten");
  const std::string path = dir + "/result-1";
  const std::string ones(4 << 20, '\x11'), twos(4 << 20, '\x22');
  ASSERT_TRUE(OverwriteTensorFile(path, {ones}).ok());
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (int i = 0; !done.load(); ++i) ASSERT_TRUE(OverwriteTensorFile(path, {i % 2 ? ones : twos}).ok());
  });
  int mixed = 0, refused = 0, whole = 0;
  for (int i = 0; i < 400; ++i) {
    absl::StatusOr<std::vector<std::string>> read = ReadTensorFile(path, {ones.size()});
    if (!read.ok()) {
      EXPECT_TRUE(absl::StrContains(read.status().message(), "changed while it was read")) << read.status();
      ++refused;
    } else if ((*read)[0] == ones || (*read)[0] == twos) {
      ++whole;
    } else {
      ++mixed;
    }
  }
  done = true;
  writer.join();
  EXPECT_EQ(mixed, 0) << whole << " whole, " << refused << " refused";
  EXPECT_GT(refused, 0) << "the writer never overlapped a read";
}

// A coordinator in this process serving TCP and a Unix socket with a shared
// folder, one training item of the sine config per batch, and clients on
// either way in.
class SharedFolderTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Short: a Unix socket's path has at most 107 characters.
    char pattern[] = "/tmp/reptile-test-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    folder_ = pattern;
    config_ = LoadNamedConfig("sine");
    GrpcTransport::Options options;
    options.unix_socket = folder_ + "/coordinator.sock";
    options.shared_folder = folder_;
    absl::StatusOr<std::unique_ptr<GrpcTransport>> transport = GrpcTransport::Create(config_, options);
    ASSERT_TRUE(transport.ok()) << transport.status();
    transport_ = *std::move(transport);
    absl::StatusOr<std::unique_ptr<Learner>> learner = Learner::Create(config_, SharedTaskSource(config_));
    ASSERT_TRUE(learner.ok()) << learner.status();
    learner_ = *std::move(learner);
    absl::StatusOr<std::shared_ptr<MetaModel>> model = MakeModel(config_, 7);
    ASSERT_TRUE(model.ok()) << model.status();
    FlatParameters flat(**model);
    state_.parameters = flat.values().clone();
    const CarriedMoments moments = CarriedMomentsOf(config_);
    if (moments.first) state_.adam_m = torch::rand_like(state_.parameters);
    if (moments.second) state_.adam_v = torch::rand_like(state_.parameters);
    items_ = {TaskSampler(config_, 0, 0).TrainingItems(0).at(0)};
    run_ = std::thread([this] {
      run_status_ = transport_->Run(state_, items_, [this](size_t, TaskResult result) {
        absl::MutexLock lock(&mu_);
        taken_ = std::move(result);
        return absl::OkStatus();
      });
    });
  }

  void TearDown() override {
    if (transport_ != nullptr) transport_->Interrupt("test over");
    if (run_.joinable()) run_.join();
    transport_.reset();
    std::filesystem::remove_all(folder_);
  }

  std::unique_ptr<CoordinatorClient> Client(bool unix_socket) {
    const std::string address = unix_socket ? absl::StrCat("unix:", folder_, "/coordinator.sock")
                                            : absl::StrCat("127.0.0.1:", transport_->port());
    return std::make_unique<CoordinatorClient>(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()), "");
  }

  absl::StatusOr<JoinReply> Join(CoordinatorClient& client) {
    JoinRequest join;
    join.set_worker_name("shared-folder-test");
    join.set_protocol_version(kProtocolVersion);
    join.set_config_fingerprint(ConfigFingerprint(config_));
    join.set_layout_fingerprint(LayoutFingerprint(learner_->layout()));
    return client.Join(join);
  }

  WorkReply Lease(CoordinatorClient& client, uint64_t worker) {
    for (int attempt = 0; attempt < 20; ++attempt) {
      absl::StatusOr<WorkReply> reply = client.GetWork(worker);
      EXPECT_TRUE(reply.ok()) << reply.status();
      if (!reply.ok() || reply->kind() == WorkReply::TRAIN) return reply.ok() ? *reply : WorkReply();
    }
    ADD_FAILURE() << "no lease came";
    return {};
  }

  bool Taken() {
    absl::MutexLock lock(&mu_);
    return taken_.has_value();
  }

  std::string folder_;
  ExperimentConfig config_;
  std::unique_ptr<GrpcTransport> transport_;
  std::unique_ptr<Learner> learner_;
  MetaState state_;
  std::vector<WorkItem> items_;
  std::thread run_;
  absl::Status run_status_;
  absl::Mutex mu_;
  std::optional<TaskResult> taken_ ABSL_GUARDED_BY(mu_);
};

TEST_F(SharedFolderTransportTest, AWorkerOnTheUnixSocketPassesStateAndResultAsFilesWithTheSameBits) {
  std::unique_ptr<CoordinatorClient> client = Client(/*unix_socket=*/true);
  absl::StatusOr<JoinReply> joined = Join(*client);
  ASSERT_TRUE(joined.ok()) << joined.status();
  ASSERT_EQ(joined->shared_folder(), folder_);
  const WorkReply work = Lease(*client, joined->worker_id());
  ASSERT_EQ(work.kind(), WorkReply::TRAIN);
  EXPECT_TRUE(std::filesystem::exists(SharedStatePath(folder_, work.state_version())));
  absl::StatusOr<MetaState> state = client->FetchState(joined->worker_id(), work.state_version(),
                                                       state_.parameters.numel(), CarriedMomentsOf(config_), folder_);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_TRUE(torch::equal(state->parameters, state_.parameters));
  if (state_.adam_v.defined()) EXPECT_TRUE(torch::equal(state->adam_v, state_.adam_v));

  absl::StatusOr<TaskResult> result = learner_->Run(*state, WorkItem{WorkKind::kTrain, {work.tasks(0)}});
  ASSERT_TRUE(result.ok()) << result.status();
  const std::vector<ResultChunk> messages = CoordinatorClient::ResultMessages(
      joined->worker_id(), work, result, DELTA_FP32, state_.parameters.numel(), folder_);
  ASSERT_EQ(messages.size(), 1u);  // the header alone: the tensors are in the file
  EXPECT_TRUE(messages[0].header().in_shared_folder());
  absl::StatusOr<SubmitReply> reply = client->Submit(messages);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_FALSE(reply->duplicate());
  run_.join();
  ASSERT_TRUE(run_status_.ok()) << run_status_;
  absl::MutexLock lock(&mu_);
  ASSERT_TRUE(taken_.has_value());
  EXPECT_TRUE(torch::equal(taken_->delta, result->delta));
  if (result->adam_v.defined()) EXPECT_TRUE(torch::equal(taken_->adam_v, result->adam_v));
  EXPECT_FALSE(std::filesystem::exists(SharedStatePath(folder_, work.state_version())))
      << "a state's file goes with its batch";
}

// A worker that reads the folder learns of its lease's state from the lease
// itself and reads it with no FetchState call; one that holds that state
// already, or asks over TCP, gets no header.
TEST_F(SharedFolderTransportTest, ALeaseOnTheUnixSocketNamesItsStateFileUnlessTheWorkerHoldsIt) {
  std::unique_ptr<CoordinatorClient> client = Client(/*unix_socket=*/true);
  absl::StatusOr<JoinReply> joined = Join(*client);
  ASSERT_TRUE(joined.ok()) << joined.status();
  absl::StatusOr<WorkReply> work = client->GetWork(joined->worker_id(), /*shared_folder=*/true, 0);
  ASSERT_TRUE(work.ok()) << work.status();
  ASSERT_EQ(work->kind(), WorkReply::TRAIN);
  ASSERT_TRUE(work->has_folder_state());
  EXPECT_TRUE(work->folder_state().in_shared_folder());
  const CarriedMoments moments = CarriedMomentsOf(config_);
  absl::StatusOr<MetaState> state = ReadFolderState(work->folder_state(), work->state_version(),
                                                    state_.parameters.numel(), moments, folder_);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_TRUE(torch::equal(state->parameters, state_.parameters));
  if (state_.adam_v.defined()) EXPECT_TRUE(torch::equal(state->adam_v, state_.adam_v));
  const int64_t state_bytes = state_.parameters.numel() * 4 * (1 + moments.first + moments.second);
  EXPECT_EQ(transport_->Stats().bytes_out, state_bytes) << "a read from the folder counts as a fetch";
  // Read as another version, or with another model's size, it is refused.
  EXPECT_TRUE(absl::IsDataLoss(ReadFolderState(work->folder_state(), work->state_version() + 1,
                                               state_.parameters.numel(), moments, folder_)
                                   .status()));
  EXPECT_TRUE(absl::IsDataLoss(
      ReadFolderState(work->folder_state(), work->state_version(), state_.parameters.numel() + 1, moments, folder_)
          .status()));

  // The lease goes back when its worker leaves; a worker holding the state
  // is not told where it is, and neither is one over TCP.
  ASSERT_TRUE(client->Leave(joined->worker_id()).ok());
  absl::StatusOr<JoinReply> holder = Join(*client);
  ASSERT_TRUE(holder.ok()) << holder.status();
  absl::StatusOr<WorkReply> again = client->GetWork(holder->worker_id(), true, work->state_version());
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->kind(), WorkReply::TRAIN);
  EXPECT_FALSE(again->has_folder_state());
  ASSERT_TRUE(client->Leave(holder->worker_id()).ok());
  std::unique_ptr<CoordinatorClient> tcp = Client(/*unix_socket=*/false);
  absl::StatusOr<JoinReply> remote = Join(*tcp);
  ASSERT_TRUE(remote.ok()) << remote.status();
  absl::StatusOr<WorkReply> over_tcp = tcp->GetWork(remote->worker_id(), true, 0);
  ASSERT_TRUE(over_tcp.ok()) << over_tcp.status();
  ASSERT_EQ(over_tcp->kind(), WorkReply::TRAIN);
  EXPECT_FALSE(over_tcp->has_folder_state());
  EXPECT_EQ(transport_->Stats().bytes_out, state_bytes);
}

TEST_F(SharedFolderTransportTest, OverTcpTheFolderIsNeitherOfferedNorTaken) {
  std::unique_ptr<CoordinatorClient> client = Client(/*unix_socket=*/false);
  absl::StatusOr<JoinReply> joined = Join(*client);
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_EQ(joined->shared_folder(), "");
  const WorkReply work = Lease(*client, joined->worker_id());
  ASSERT_EQ(work.kind(), WorkReply::TRAIN);
  // Asking for the folder over TCP gets the state on the stream.
  absl::StatusOr<MetaState> state = client->FetchState(joined->worker_id(), work.state_version(),
                                                       state_.parameters.numel(), CarriedMomentsOf(config_), folder_);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_TRUE(torch::equal(state->parameters, state_.parameters));

  // A result said to be in the folder, over TCP, is refused even though the
  // file is there, and the item stays open.
  absl::StatusOr<TaskResult> result = learner_->Run(*state, WorkItem{WorkKind::kTrain, {work.tasks(0)}});
  ASSERT_TRUE(result.ok()) << result.status();
  const std::vector<ResultChunk> messages = CoordinatorClient::ResultMessages(
      joined->worker_id(), work, result, DELTA_FP32, state_.parameters.numel(), folder_);
  ASSERT_TRUE(std::filesystem::exists(SharedResultPath(folder_, joined->worker_id())));
  absl::StatusOr<SubmitReply> reply = client->Submit(messages);
  EXPECT_TRUE(absl::IsInvalidArgument(reply.status())) << reply.status();
  EXPECT_TRUE(absl::StrContains(reply.status().message(), "only over the coordinator's Unix socket"))
      << reply.status();
  EXPECT_FALSE(Taken());
  EXPECT_EQ(transport_->Stats().results_refused, 1);
}

TEST_F(SharedFolderTransportTest, AResultFileOfTheWrongSizeIsRefusedAndTheItemRedone) {
  std::unique_ptr<CoordinatorClient> client = Client(/*unix_socket=*/true);
  absl::StatusOr<JoinReply> joined = Join(*client);
  ASSERT_TRUE(joined.ok()) << joined.status();
  const WorkReply work = Lease(*client, joined->worker_id());
  ASSERT_EQ(work.kind(), WorkReply::TRAIN);
  absl::StatusOr<MetaState> state = client->FetchState(joined->worker_id(), work.state_version(),
                                                       state_.parameters.numel(), CarriedMomentsOf(config_), folder_);
  ASSERT_TRUE(state.ok()) << state.status();
  absl::StatusOr<TaskResult> result = learner_->Run(*state, WorkItem{WorkKind::kTrain, {work.tasks(0)}});
  ASSERT_TRUE(result.ok()) << result.status();
  std::vector<ResultChunk> messages = CoordinatorClient::ResultMessages(
      joined->worker_id(), work, result, DELTA_FP32, state_.parameters.numel(), folder_);
  ASSERT_TRUE(OverwriteTensorFile(SharedResultPath(folder_, joined->worker_id()), {"short"}).ok());
  absl::StatusOr<SubmitReply> reply = client->Submit(messages);
  EXPECT_TRUE(absl::IsInvalidArgument(reply.status())) << reply.status();
  EXPECT_TRUE(absl::StrContains(reply.status().message(), "holds 5 bytes")) << reply.status();
  EXPECT_FALSE(Taken());

  // The refused item goes to another worker; sent whole, it is taken.
  absl::StatusOr<JoinReply> other = Join(*client);
  ASSERT_TRUE(other.ok()) << other.status();
  const WorkReply again = Lease(*client, other->worker_id());
  ASSERT_EQ(again.kind(), WorkReply::TRAIN);
  messages = CoordinatorClient::ResultMessages(other->worker_id(), again, result, DELTA_FP32,
                                               state_.parameters.numel(), folder_);
  reply = client->Submit(messages);
  ASSERT_TRUE(reply.ok()) << reply.status();
  run_.join();
  EXPECT_TRUE(run_status_.ok()) << run_status_;
  EXPECT_TRUE(Taken());
}

}  // namespace
}  // namespace reptile::testing
