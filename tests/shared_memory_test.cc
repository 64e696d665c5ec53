// Worker processes on shared memory (`reptile train --workers N`, the
// default): the same parameters as threads for any number of workers and
// any grouping of tasks, workers SIGKILLed or stopped mid-run, and, in process, claims
// and results that a broken worker leaves on the board.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "tests/child_process.h"
#include "tests/test_support.h"
#include "core/flat_parameters.h"
#include "core/models/models.h"
#include "transport/wire/result_codec.h"
#include "transport/wire/shared_folder.h"
#include "transport/local/local_transport.h"
#include "transport/shared_memory/shared_memory_transport.h"
#include "transport/shared_memory/shared_memory_worker.h"

namespace reptile::testing {
namespace {

std::vector<std::string> Concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Sine with Adam's moments carried, 5 tasks a round and evaluations.
std::vector<std::string> SineOverrides(int rounds) {
  return {absl::StrCat("outer.rounds=", rounds), "outer.meta_batch_size=5", "eval.every_rounds=40",
          "eval.episodes=6", "eval.final_episodes=12", "runtime.checkpoint_every_rounds=0"};
}

struct Trained {
  std::string sha, err;
};

Trained Train(const std::vector<std::string>& arguments, const std::string& name) {
  const std::string run = TempDir(name);
  auto child = ChildProcess::Start(
      Concat({REPTILE_BINARY, "train", "--config", SourcePath("configs/sine.textproto"), "--run_dir", run}, arguments),
      run + ".log");
  EXPECT_EQ(child->ExitCode(300), 0) << child->err();
  return {ParameterSha(child->out()), child->err()};
}

TEST(SharedMemoryTest, AnyWorkerCountAndGroupingGivesTheBitsOfThreads) {
  for (const char* grouping : {"runtime.tasks_per_item=1", "runtime.tasks_per_item=2"}) {
    std::vector<std::string> overrides = SineOverrides(60);
    overrides.push_back(grouping);
    const Trained threads =
        Train(Concat({"--workers", "2", "runtime.local_workers=THREADS"}, overrides), "threads");
    ASSERT_EQ(threads.sha.size(), 64u) << threads.err;
    for (int workers = 1; workers <= 4; ++workers) {
      const Trained processes = Train(Concat({"--workers", absl::StrCat(workers)}, overrides), "processes");
      EXPECT_EQ(processes.sha, threads.sha) << grouping << ", " << workers << " workers\n" << processes.err;
      EXPECT_TRUE(absl::StrContains(processes.err, "(shared memory in")) << processes.err;
    }
  }
}

// The pids of `parent`'s children, whichever of its threads started them.
std::vector<pid_t> ChildrenOf(pid_t parent) {
  std::vector<pid_t> pids;
  std::error_code error;
  for (const auto& task : std::filesystem::directory_iterator(absl::StrCat("/proc/", parent, "/task"), error)) {
    std::ifstream in(task.path() / "children");
    for (pid_t pid; in >> pid;) pids.push_back(pid);
  }
  return pids;
}

int RoundsDone(const std::string& run) {
  return CountOccurrences(ReadWholeFile(run + "/metrics.jsonl"), "\"kind\":\"round\"");
}

// Two workers SIGKILLed and one stopped (SIGSTOP: alive, but its heartbeat
// stops, so the coordinator kills it) during one run.
TEST(SharedMemoryTest, WorkersKilledOrStoppedMidRunChangeNothing) {
  std::vector<std::string> overrides = SineOverrides(3000);
  overrides.insert(overrides.end(), {"runtime.metrics_every_rounds=1", "runtime.heartbeat_seconds=0.2",
                                     "runtime.worker_timeout_seconds=1"});
  const Trained threads = Train(Concat({"--workers", "2", "runtime.local_workers=THREADS"}, overrides), "threads");
  const std::string run = TempDir("killed");
  auto train = ChildProcess::Start(Concat({REPTILE_BINARY, "train", "--config", SourcePath("configs/sine.textproto"),
                                           "--run_dir", run, "--workers", "2"},
                                          overrides),
                                   run + ".log");
  int signalled = 0;
  for (auto [at, signal] : {std::pair{200, SIGKILL}, std::pair{600, SIGSTOP}, std::pair{1000, SIGKILL}}) {
    while (train->running() && RoundsDone(run) < at) usleep(2000);
    const std::vector<pid_t> workers = ChildrenOf(train->pid());
    if (!train->running() || workers.empty()) break;
    kill(workers[signalled % workers.size()], signal);
    ++signalled;
  }
  ASSERT_EQ(train->ExitCode(300), 0) << train->err();
  EXPECT_EQ(signalled, 3) << "the run ended before every signal";
  EXPECT_EQ(ParameterSha(train->out()), threads.sha) << train->err();
  EXPECT_EQ(CountOccurrences(train->err(), "sent no heartbeat for 1s; killing it"), 1) << train->err();
  EXPECT_GE(CountOccurrences(train->err(), "starting another"), 3) << train->err();
  EXPECT_GE(CountOccurrences(train->err(), " is gone ("), 2) << train->err();  // and the one killed
}

// Each line of `report` (one per attempt of a hostile worker), and how
// many the kernel refused.
std::pair<int, int> Attempts(const std::string& report) {
  int lines = 0, refused = 0;
  for (absl::string_view line : absl::StrSplit(report, '\n', absl::SkipEmpty())) {
    if (!absl::StrContains(line, ": ")) continue;
    ++lines;
    if (absl::StrContains(line, ": refused (Operation not permitted)")) ++refused;
  }
  return {lines, refused};
}

// Two workers turn on the board in turn (tests/hostile_board_worker.cc, each
// put in one of the coordinator's own worker places). The first tries to
// shrink every shared file and to write those only the coordinator writes
// (the kernel refuses all 11 attempts), writes the stop, batch and cursor
// words (put back), registers the coordinator and a bystander as workers
// (never signalled), and hands back NaN results (refused; evicted and
// killed after three). Its replacement claims an item and holds it while
// its heartbeat lives (killed at runtime.task_timeout_seconds). The run ends
// with the bits of threads.
TEST(SharedMemoryTest, HostileWorkersAreEvictedAndTheRunEndsWithTheBitsOfThreads) {
  std::vector<std::string> overrides = SineOverrides(3000);
  overrides.insert(overrides.end(), {"runtime.metrics_every_rounds=1", "runtime.task_timeout_seconds=1"});
  const Trained threads = Train(Concat({"--workers", "2", "runtime.local_workers=THREADS"}, overrides), "threads");
  const std::string run = TempDir("turned"), hostile = TempDir("hostile");
  auto bystander = ChildProcess::Start({"/bin/sleep", "300"}, TempDir("bystander"));
  auto train = ChildProcess::Start(Concat({REPTILE_BINARY, "train", "--config", SourcePath("configs/sine.textproto"),
                                           "--run_dir", run, "--workers", "2"},
                                          overrides),
                                   run + ".log", REPTILE_SOURCE_DIR,
                                   {"LD_PRELOAD=" HOSTILE_EXEC_LIBRARY, "HOSTILE_BINARY=" HOSTILE_BOARD_WORKER,
                                    "HOSTILE_MODES=honest,scribble,hold", "HOSTILE_DIR=" + hostile,
                                    absl::StrCat("HOSTILE_BYSTANDER=", bystander->pid())});
  ASSERT_EQ(train->ExitCode(300), 0) << train->err();
  EXPECT_EQ(ParameterSha(train->out()), threads.sha) << train->err();
  EXPECT_TRUE(bystander->running()) << "a process that is no worker was signalled";
  bystander->Signal(SIGKILL);

  const std::string scribbled = ReadWholeFile(hostile + "/scribble.report");
  EXPECT_EQ(Attempts(scribbled), std::make_pair(11, 11)) << scribbled;
  EXPECT_TRUE(absl::StrContains(scribbled, "scribbled the board")) << scribbled;
  EXPECT_TRUE(absl::StrContains(scribbled, "NaN result 1")) << scribbled;
  EXPECT_TRUE(absl::StrContains(ReadWholeFile(hostile + "/hold.report"), "holding an item")) << train->err();
  const std::string& log = train->err();
  EXPECT_TRUE(absl::StrContains(log, "stop or batch word; put back")) << log;
  EXPECT_TRUE(absl::StrContains(log, "3 results refused in a row")) << log;
  EXPECT_TRUE(absl::StrContains(log, "(runtime.task_timeout_seconds); killing it")) << log;
  EXPECT_EQ(CountOccurrences(log, "; killing it"), 2) << log;
  std::set<std::string> joined;  // each once: an evicted worker is not counted again
  for (absl::string_view line : absl::StrSplit(log, '\n'))
    if (absl::StrContains(line, " joined (")) EXPECT_TRUE(joined.insert(std::string(line.substr(0, line.find(" joined")))).second) << log;
  EXPECT_GE(joined.size(), 4u) << log;  // two workers and their replacements
}

// The private folders a killed `reptile train` leaves in /dev/shm are
// removed by the next one once no process holds their owner lock, whatever
// their pid names: in another pid namespace that pid may be anyone's. A
// folder named for a live process but unlocked goes; one whose lock is held
// (by flock(1) here) stays though its pid is gone; one without an owner
// file (an older version's) goes once its pid is gone.
TEST(SharedMemoryTest, LeftOverFoldersGoOnceTheirOwnerLockIsFree) {
  if (access("/dev/shm", W_OK | X_OK) != 0) GTEST_SKIP() << "no writable /dev/shm";
  auto folder = [](pid_t pid, const char* suffix) {
    const std::string path = absl::StrCat("/dev/shm/reptile-", pid, "-", suffix);
    std::filesystem::create_directories(path);
    return path;
  };
  const pid_t gone = 4194303;  // above any pid this machine hands out (pid_max is at most 2^22)
  const std::string unlocked = folder(getpid(), "unlckd"), locked = folder(gone, "locked"),
                    old_dead = folder(gone, "oldver"), old_alive = folder(getpid(), "oldliv");
  for (const std::string& path : {unlocked, locked}) std::ofstream(path + "/owner");
  auto holder = ChildProcess::Start({"/usr/bin/flock", locked + "/owner", "/bin/sleep", "120"}, TempDir("holder"));
  auto held = [&locked] {
    const int fd = open((locked + "/owner").c_str(), O_RDONLY | O_CLOEXEC);
    const bool taken = flock(fd, LOCK_EX | LOCK_NB) != 0;
    close(fd);  // releases it if it was ours
    return taken;
  };
  for (int i = 0; i < 250 && !held(); ++i) usleep(20000);
  ASSERT_TRUE(held());
  const Trained trained = Train({"--workers", "1", "outer.rounds=2", "eval.every_rounds=0", "eval.final_episodes=1"},
                                "orphans");
  ASSERT_EQ(trained.sha.size(), 64u) << trained.err;
  EXPECT_FALSE(std::filesystem::exists(unlocked));
  EXPECT_TRUE(std::filesystem::exists(locked));
  EXPECT_FALSE(std::filesystem::exists(old_dead));
  EXPECT_TRUE(std::filesystem::exists(old_alive));
  holder->Signal(SIGKILL);
  for (const std::string& path : {locked, old_alive}) std::filesystem::remove_all(path);
}

// In process: the coordinator's side against a real worker (a thread running
// RunSharedMemoryWorker) and a broken one that writes on the board directly.
class BoardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = LoadNamedConfig("sine");
    tasks_ = SharedTaskSource(config_);
    auto model = MakeModel(config_, config_.seed());
    FlatParameters flat(**model);
    state_ = MetaState{flat.values().clone(), {}, {}, 0};
    transport_ = *SharedMemoryTransport::Create(config_, TempDir("board"), [this](const std::string& line) {
      absl::MutexLock lock(&log_mu_);
      log_ += line + "\n";
    });
  }
  void TearDown() override {
    if (coordinator_.joinable()) {  // a test that stopped halfway
      transport_->Interrupt("the test failed");
      coordinator_.join();
    }
    transport_->Finish();
    stop_.Notify();
    if (worker_.joinable()) worker_.join();
    EXPECT_TRUE(worker_status_.ok()) << worker_status_;
  }

  void StartWorker() {
    worker_ = std::thread([this] { worker_status_ = RunSharedMemoryWorker(transport_->board_path(), &stop_); });
  }
  // A real worker process on this test's board; killed when the object goes.
  std::unique_ptr<ChildProcess> StartWorkerProcess(const std::string& name) {
    return ChildProcess::Start({REPTILE_BINARY, "worker", "--shared_memory", transport_->board_path()},
                               TempDir(name) + "/worker");
  }

  // Each item's delta, as handed over; fails if one is handed over twice.
  static absl::StatusOr<std::vector<torch::Tensor>> RunAll(Transport& transport, const MetaState& state,
                                                           const std::vector<WorkItem>& items) {
    std::vector<torch::Tensor> deltas(items.size());
    absl::Status status = transport.Run(state, items, [&](size_t item, TaskResult result) -> absl::Status {
      if (item >= deltas.size() || deltas[item].defined()) return absl::InternalError("handed over twice");
      deltas[item] = result.delta.clone();
      return absl::OkStatus();
    });
    if (!status.ok()) return status;
    return deltas;
  }

  std::vector<torch::Tensor> Reference(const std::vector<WorkItem>& items) {
    auto threads = LocalTransport::Create(config_, tasks_, 1);
    EXPECT_TRUE(threads.ok()) << threads.status();
    return *RunAll(**threads, state_, items);
  }

  // Starts a Run of `items` on another thread (its deltas into `deltas`) and
  // opens, as a broken worker would, the board and the batch it publishes.
  void StartRunAndOpenItsBatch(const std::vector<WorkItem>& items,
                               absl::StatusOr<std::vector<torch::Tensor>>* deltas) {
    coordinator_ = std::thread([this, &items, deltas] { *deltas = RunAll(*transport_, state_, items); });
    folder_ = transport_->board_path().substr(0, transport_->board_path().rfind('/'));
    absl::StatusOr<SharedBoard> board = SharedBoard::Open(folder_);
    ASSERT_TRUE(board.ok()) << board.status();
    board_.emplace(*std::move(board));
    while (board_->header().batch.load() == 0) usleep(1000);
    const uint64_t number = board_->header().batch.load();
    absl::StatusOr<SharedBatch> batch = SharedBatch::Open(folder_, number);
    ASSERT_TRUE(batch.ok()) << batch.status();
    batch_.emplace(*std::move(batch));
  }

  // Starts the real worker, waits for the Run StartRunAndOpenItsBatch began,
  // and checks that it handed over `reference` after refusing one result as
  // invalid and running `redone` items again; the fake worker then leaves
  // the board.
  void FinishAfterOneRefusal(const absl::StatusOr<std::vector<torch::Tensor>>& deltas,
                             const std::vector<torch::Tensor>& reference, int redone) {
    StartWorker();
    coordinator_.join();
    board_->header().worker_pids[kMaxSharedWorkers - 1].store(0);
    ASSERT_TRUE(deltas.ok()) << deltas.status();
    for (size_t i = 0; i < reference.size(); ++i) EXPECT_TRUE(torch::equal((*deltas)[i], reference[i])) << i;
    const TransportStats stats = transport_->Stats();
    EXPECT_EQ(stats.results_refused, 1);
    EXPECT_EQ(stats.results_refused_by_reason.at("invalid_result"), 1);
    EXPECT_EQ(stats.tasks_redone, redone);
  }

  ExperimentConfig config_;
  std::shared_ptr<const TaskSource> tasks_;
  MetaState state_;
  std::unique_ptr<SharedMemoryTransport> transport_;
  absl::Notification stop_;
  absl::Status worker_status_;
  std::thread worker_;
  std::thread coordinator_;           // StartRunAndOpenItsBatch()
  std::optional<SharedBoard> board_;
  std::optional<SharedBatch> batch_;
  std::string folder_;
  // What the transport logged: joins, refusals, evictions.
  absl::Mutex log_mu_;
  std::string log_ ABSL_GUARDED_BY(log_mu_);

  std::string Log() {
    absl::MutexLock lock(&log_mu_);
    return log_;
  }
};

TEST_F(BoardTest, AWorkerProcessGivesTheResultsOfAThread) {
  StartWorker();
  const std::vector<WorkItem> items = SineItems(7);
  const std::vector<torch::Tensor> reference = Reference(items);
  for (int batch = 0; batch < 3; ++batch) {
    absl::StatusOr<std::vector<torch::Tensor>> deltas = RunAll(*transport_, state_, items);
    ASSERT_TRUE(deltas.ok()) << deltas.status();
    for (size_t i = 0; i < items.size(); ++i) EXPECT_TRUE(torch::equal((*deltas)[i], reference[i])) << i;
  }
  EXPECT_EQ(transport_->num_workers(), 1);
  EXPECT_EQ(transport_->Stats().results_refused, 0);
}

// A worker that claims items in a dead process's name, or hands back a
// header that does not parse: its items go to the real worker, the refusal
// is counted, and the batch ends with the right results.
TEST_F(BoardTest, ClaimsOfTheDeadAndUnreadableResultsAreRunAgain) {
  const std::vector<WorkItem> items = SineItems(5);
  const std::vector<torch::Tensor> reference = Reference(items);
  absl::StatusOr<std::vector<torch::Tensor>> deltas;
  StartRunAndOpenItsBatch(items, &deltas);
  ASSERT_FALSE(HasFatalFailure());
  BoardHeader& header = board_->header();
  SharedBatch& batch = *batch_;
  // Item 0: claimed by a pid that is no process.
  batch.next_item().store(2);
  uint64_t open = ClaimWord(0, ItemStage::kOpen);
  ASSERT_TRUE(batch.item(0).claim.compare_exchange_strong(open, ClaimWord(0x3ffffff0, ItemStage::kClaimed)));
  // Item 1: done by this (live, registered) process, with a header longer
  // than its slot.
  int32_t free = 0;
  ASSERT_TRUE(header.worker_pids[kMaxSharedWorkers - 1].compare_exchange_strong(free, getpid()));
  batch.item(1).result_bytes = 1 << 30;
  open = ClaimWord(0, ItemStage::kOpen);
  ASSERT_TRUE(batch.item(1).claim.compare_exchange_strong(open, ClaimWord(getpid(), ItemStage::kClaimed)));
  batch.item(1).claim.store(ClaimWord(getpid(), ItemStage::kDone));
  header.result_signal.fetch_add(1);
  FutexWakeAll(&header.result_signal);
  FinishAfterOneRefusal(deltas, reference, /*redone=*/2);
  EXPECT_TRUE(absl::StrContains(Log(), "work item 1 from worker process " + std::to_string(getpid()) +
                                           " refused: its result header claims 1073741824 bytes; the slot holds 1000"))
      << Log();
}

// A worker that hands back a well-formed result holding a NaN (a diverged
// learner, or a hostile one): refused as invalid, counted, run again by the
// real worker, and the batch ends with the right results.
TEST_F(BoardTest, ANonFiniteResultIsRefusedAndRunAgain) {
  const std::vector<WorkItem> items = SineItems(3);
  const std::vector<torch::Tensor> reference = Reference(items);
  auto threads = LocalTransport::Create(config_, tasks_, 1);
  ASSERT_TRUE(threads.ok()) << threads.status();
  TaskResult poisoned;
  ASSERT_TRUE((*threads)
                  ->Run(state_, {items[0]},
                        [&](size_t, TaskResult result) {
                          poisoned = std::move(result);
                          return absl::OkStatus();
                        })
                  .ok());
  poisoned.delta[7] = std::numeric_limits<float>::quiet_NaN();

  absl::StatusOr<std::vector<torch::Tensor>> deltas;
  StartRunAndOpenItsBatch(items, &deltas);
  ASSERT_FALSE(HasFatalFailure());
  BoardHeader& header = board_->header();
  SharedBatch& batch = *batch_;
  int32_t free = 0;
  ASSERT_TRUE(header.worker_pids[kMaxSharedWorkers - 1].compare_exchange_strong(free, getpid()));
  batch.next_item().store(1);
  uint64_t open = ClaimWord(0, ItemStage::kOpen);
  ASSERT_TRUE(batch.item(0).claim.compare_exchange_strong(open, ClaimWord(getpid(), ItemStage::kClaimed)));
  const EncodedResult encoded = EncodeResult(poisoned, config_.outer().delta_dtype(), batch.header().numel);
  ASSERT_TRUE(OverwriteTensorFile(SharedResultPath(folder_, static_cast<uint64_t>(getpid())), encoded.tensors).ok());
  const std::string bytes = encoded.header.SerializeAsString();
  ASSERT_LE(bytes.size(), kResultHeaderBytes);
  std::memcpy(batch.item(0).result, bytes.data(), bytes.size());
  batch.item(0).result_bytes = static_cast<uint32_t>(bytes.size());
  batch.item(0).claim.store(ClaimWord(getpid(), ItemStage::kDone));
  header.result_signal.fetch_add(1);
  FutexWakeAll(&header.result_signal);
  // The refusal must come before a real worker could have run the item
  // (the heartbeat keeps this fake worker from being killed as stalled).
  for (int waited_ms = 0; transport_->Stats().results_refused == 0 && waited_ms < 5000; ++waited_ms) {
    header.worker_beats[kMaxSharedWorkers - 1].fetch_add(1);
    usleep(1000);
  }
  EXPECT_EQ(transport_->Stats().results_refused, 1) << "the NaN result was not refused";
  FinishAfterOneRefusal(deltas, reference, /*redone=*/1);
  unlink(SharedResultPath(folder_, static_cast<uint64_t>(getpid())).c_str());
}

// An item that fails on every worker (its spec does not fit the task
// source), on two worker processes that have shown they can do others:
// left to the other worker after the first refusal, it fails its batch
// naming both, and nobody is evicted, so the next batch runs.
TEST_F(BoardTest, AnItemRefusedOnTwoProvenWorkersFailsItsBatchNamingBothAndTheNextBatchRuns) {
  std::vector<std::unique_ptr<ChildProcess>> workers;
  for (const char* name : {"a", "b"}) workers.push_back(StartWorkerProcess(name));
  // Were both workers evicted, the batch would wait for workers forever.
  absl::Notification done;
  std::thread deadline([&] {
    if (!done.WaitForNotificationWithTimeout(absl::Seconds(60))) transport_->Interrupt("the test's deadline passed");
  });
  absl::Cleanup stop_deadline = [&] {
    done.Notify();
    deadline.join();
  };
  for (int waited_ms = 0; transport_->num_workers() < 2 && waited_ms < 60000; waited_ms += 10) usleep(10000);
  ASSERT_EQ(transport_->num_workers(), 2);
  // Sixteen items a batch: each worker has results accepted before the
  // last item fails.
  for (int batch = 0; batch < 3; ++batch) ASSERT_TRUE(RunAll(*transport_, state_, SineItems(16)).ok());
  std::vector<WorkItem> items = SineItems(16);
  items[15].tasks[0].set_family(OMNIGLOT);
  absl::StatusOr<std::vector<torch::Tensor>> failed = RunAll(*transport_, state_, items);
  ASSERT_FALSE(failed.ok());
  const std::string message(failed.status().message());
  EXPECT_TRUE(absl::StrContains(message, "work item 15 failed on 2 different workers, so the task")) << message;
  for (const auto& worker : workers)
    EXPECT_TRUE(absl::StrContains(message, absl::StrCat("worker ", worker->pid(), ": the worker failed")))
        << message;
  EXPECT_EQ(transport_->Stats().results_refused_by_reason.at("worker_error"), 2);
  EXPECT_EQ(transport_->Stats().workers_evicted, 0);
  EXPECT_TRUE(RunAll(*transport_, state_, SineItems(16)).ok());
}

// A worker whose results are refused three times in a row (here the test
// process, handing back headers that do not parse) is evicted, and its items
// go to a real worker process: the batch ends with the right results.
TEST_F(BoardTest, AWorkerRefusedThreeTimesInARowIsEvictedAndOthersRunItsItems) {
  const std::vector<WorkItem> items = SineItems(5);
  const std::vector<torch::Tensor> reference = Reference(items);
  absl::StatusOr<std::vector<torch::Tensor>> deltas;
  StartRunAndOpenItsBatch(items, &deltas);
  ASSERT_FALSE(HasFatalFailure());
  BoardHeader& header = board_->header();
  SharedBatch& batch = *batch_;
  int32_t free = 0;
  ASSERT_TRUE(header.worker_pids[kMaxSharedWorkers - 1].compare_exchange_strong(free, getpid()));
  batch.next_item().store(3);
  for (int i = 0; i < 3; ++i) {
    uint64_t open = ClaimWord(0, ItemStage::kOpen);
    ASSERT_TRUE(batch.item(i).claim.compare_exchange_strong(open, ClaimWord(getpid(), ItemStage::kClaimed)));
    const char garbage[] = "\xff\xff\xff\xff not a header";
    std::memcpy(batch.item(i).result, garbage, sizeof(garbage));
    batch.item(i).result_bytes = sizeof(garbage);
    batch.item(i).claim.store(ClaimWord(getpid(), ItemStage::kDone));
  }
  header.result_signal.fetch_add(1);
  FutexWakeAll(&header.result_signal);
  auto worker = StartWorkerProcess("real");
  coordinator_.join();
  ASSERT_TRUE(deltas.ok()) << deltas.status();
  for (size_t i = 0; i < reference.size(); ++i) EXPECT_TRUE(torch::equal((*deltas)[i], reference[i])) << i;
  const TransportStats stats = transport_->Stats();
  EXPECT_EQ(stats.results_refused, 3);
  EXPECT_EQ(stats.workers_evicted, 1);
  EXPECT_EQ(stats.tasks_redone, 3);
  EXPECT_EQ(header.worker_pids[kMaxSharedWorkers - 1].load(), 0) << "the evicted worker keeps its place";
}

TEST_F(BoardTest, InterruptEndsARunThatHasNoWorkers) {
  std::thread interrupter([this] {
    usleep(200000);
    transport_->Interrupt("stopping");
  });
  const absl::Status status = transport_->Run(state_, SineItems(2), [](size_t, TaskResult) { return absl::OkStatus(); });
  interrupter.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_EQ(transport_->num_workers(), 0);
}

}  // namespace
}  // namespace reptile::testing
