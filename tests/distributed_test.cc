// The gRPC runtime end to end with real processes on loopback: a coordinator
// process and `reptile worker` processes, SIGKILLed, SIGTERMed, added and
// removed while they train. Every run must end with exactly the parameters of
// the same config trained in one process with threads.
#include <signal.h>

#include <filesystem>
#include <map>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/child_process.h"
#include "tests/test_support.h"

namespace reptile::testing {
namespace {

// Omniglot 5-way 1-shot, Adam state carried, 5 tasks a round: the
// configuration with the most state on the wire. Short heartbeats so that
// killed workers are noticed within a second or two.
std::vector<std::string> OmniglotOverrides(int rounds) {
  return {"task.data_dir=" + OmniglotDir(),
          absl::StrCat("outer.rounds=", rounds),
          "eval.every_rounds=0",
          "eval.final_episodes=10",
          "runtime.checkpoint_every_rounds=10",
          "runtime.heartbeat_seconds=0.3",
          "runtime.worker_timeout_seconds=1.5",
          "runtime.log_every_seconds=1"};
}

std::vector<std::string> Concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

class DistributedTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = TempDir("logs"); }

  std::string Log(const std::string& name) { return dir_ + "/" + name; }

  // The parameters the config reaches in one process with two threads.
  std::string ThreadsReference(const std::string& config, const std::vector<std::string>& overrides) {
    static std::map<std::string, std::string> cache;
    const std::string key = config + absl::StrJoin(overrides, " ");
    if (cache.count(key)) return cache[key];
    const std::string run = TempDir("threads_reference");
    auto child = ChildProcess::Start(Concat({REPTILE_BINARY, "train", "--config", SourcePath(config), "--run_dir",
                                             run, "--workers", "2", "runtime.local_workers=THREADS"},
                                            overrides),
                                     Log("reference"));
    EXPECT_EQ(child->ExitCode(300), 0) << child->err();
    const std::string sha = ParameterSha(child->out());
    EXPECT_EQ(sha.size(), 64u) << child->out();
    return cache[key] = sha;
  }

  // `reptile train` of configs/demo.textproto with 2 worker processes.
  std::unique_ptr<ChildProcess> TrainDemo(const std::vector<std::string>& overrides) {
    return ChildProcess::Start(Concat({REPTILE_BINARY, "train", "--config", SourcePath("configs/demo.textproto"),
                                       "--run_dir", TempDir("run"), "--workers", "2"},
                                      overrides),
                               Log("train"));
  }

  // Starts a coordinator on `port` (0: any) and returns once it listens.
  std::unique_ptr<ChildProcess> StartCoordinator(const std::string& config, const std::vector<std::string>& overrides,
                                                 const std::string& run_dir, int port, const std::string& log) {
    auto child = StartListening(Concat({REPTILE_BINARY, "coordinator", "--config", SourcePath(config), "--run_dir",
                                        run_dir, "--listen", absl::StrCat("127.0.0.1:", port)},
                                       overrides),
                                run_dir, Log(log), &port_);
    EXPECT_GT(port_, 0) << child->err();
    return child;
  }

  std::unique_ptr<ChildProcess> StartWorker(const std::string& log) {
    return StartLoopbackWorker(REPTILE_BINARY, port_, Log(log));
  }

  // Rounds recorded in the run directory's metrics so far.
  static int RoundsDone(const std::string& run_dir) {
    int rounds = 0;
    for (absl::string_view line : absl::StrSplit(ReadWholeFile(run_dir + "/metrics.jsonl"), '\n'))
      if (absl::StrContains(line, "\"kind\":\"round\"")) ++rounds;
    return rounds;
  }

  static bool WaitForRounds(const std::string& run_dir, int rounds, ChildProcess* coordinator) {
    for (int i = 0; i < 3000; ++i) {
      if (RoundsDone(run_dir) >= rounds) return true;
      if (!coordinator->running()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  std::string dir_;
  int port_ = 0;
};

TEST_F(DistributedTest, TrainRunsWorkerProcessesByDefaultAndMatchesThreads) {
  const std::vector<std::string> overrides = OmniglotOverrides(40);
  const std::string reference = ThreadsReference("configs/demo.textproto", overrides);
  auto train = TrainDemo(overrides);
  ASSERT_EQ(train->ExitCode(300), 0) << train->err();
  EXPECT_TRUE(absl::StrContains(train->err(), "starting 2 worker processes (shared memory")) << train->err();
  EXPECT_TRUE(absl::StrContains(train->err(), "joined (2 alive)")) << train->err();
  EXPECT_EQ(ParameterSha(train->out()), reference);
}

TEST_F(DistributedTest, TrainRunsWorkerProcessesOverGrpcOnRequestAndMatchesThreads) {
  std::vector<std::string> overrides = OmniglotOverrides(40);
  const std::string reference = ThreadsReference("configs/demo.textproto", overrides);
  overrides.push_back("runtime.local_workers=GRPC_PROCESSES");
  auto train = TrainDemo(overrides);
  ASSERT_EQ(train->ExitCode(300), 0) << train->err();
  EXPECT_TRUE(absl::StrContains(train->err(), "starting 2 worker processes (coordinator on unix:")) << train->err();
  EXPECT_TRUE(absl::StrContains(train->err(), "2 alive")) << train->err();
  EXPECT_EQ(ParameterSha(train->out()), reference);
  // The workers were told the run was over and left; none is left behind.
  EXPECT_TRUE(absl::StrContains(train->err(), "0 left")) << train->err();
}

// One worker process with 3 learner threads is one node to the
// coordinator: it fetches each round's state once, runs the round's 5 tasks
// on its learners (3, then 2) and sends one upload, the exact sum of all
// five, about the state's size, instead of 5 results of that size.
TEST_F(DistributedTest, AWorkerWithThreeLearnersFetchesEachStateOnceUploadsSumsAndMatchesThreads) {
  const std::vector<std::string> overrides = OmniglotOverrides(20);
  const std::string reference = ThreadsReference("configs/demo.textproto", overrides);
  const std::string run = TempDir("run");
  auto coordinator = StartCoordinator("configs/demo.textproto", overrides, run, 0, "coordinator");
  auto worker = StartLoopbackWorker(REPTILE_BINARY, port_, Log("worker"), {"--learners", "3"});
  ASSERT_EQ(coordinator->ExitCode(300), 0) << coordinator->err();
  EXPECT_EQ(worker->ExitCode(30), 0) << worker->err();
  EXPECT_EQ(ParameterSha(coordinator->out()), reference);
  EXPECT_TRUE(absl::StrContains(coordinator->err(), ", 3 learners) joined; 1 alive")) << coordinator->err();
  EXPECT_EQ(CountOccurrences(worker->err(), "the run is finished (this worker: "), 1) << worker->err();
  std::string last_round;
  for (absl::string_view line : absl::StrSplit(ReadWholeFile(run + "/metrics.jsonl"), '\n'))
    if (absl::StrContains(line, "\"kind\":\"round\"")) last_round = std::string(line);
  auto field = [&](const std::string& name) {
    const size_t at = last_round.find("\"" + name + "\":");
    return at == std::string::npos ? int64_t{-1} : std::stoll(last_round.substr(at + name.size() + 3));
  };
  ASSERT_GT(field("bytes_out"), 0) << last_round;
  EXPECT_GT(field("bytes_in"), field("bytes_out") / 2) << last_round;
  EXPECT_LT(field("bytes_in"), field("bytes_out") * 11 / 10) << last_round;
}

// Nodes of several learners send one exact sum per reply. Whatever the
// layout and however the tasks are grouped into items, the parameters are
// those of threads: Adam's m and v are summed too.
TEST_F(DistributedTest, NodeSumsMatchThreadsForOneToThreeNodesOfOneToFourLearners) {
  const std::vector<std::string> overrides = {"outer.rounds=40",         "outer.meta_batch_size=7",
                                              "eval.every_rounds=0",     "eval.final_episodes=10",
                                              "inner.optimizer=ADAM",    "inner.state_mode=CARRY",
                                              "inner.adam_beta1=0.5",    "inner.adam_beta2=0.99",
                                              "inner.adam_epsilon=1e-8", "inner.learning_rate=0.01"};
  const std::string reference = ThreadsReference("configs/sine.textproto", overrides);
  for (int per_item : {1, 2}) {
    for (int nodes = 1; nodes <= 3; ++nodes) {
      for (int learners = 1; learners <= 4; ++learners) {
        const std::string name = absl::StrCat(nodes, "x", learners, "_items_of_", per_item);
        // Every node takes part, however slow to start: a round of 40 is
        // shorter than a worker's start-up on a loaded machine.
        auto coordinator = StartCoordinator(
            "configs/sine.textproto",
            Concat(overrides, {absl::StrCat("runtime.tasks_per_item=", per_item),
                               absl::StrCat("runtime.start_with_learners=", nodes * learners)}),
            TempDir("run" + name), 0, "c" + name);
        std::vector<std::unique_ptr<ChildProcess>> pool;
        for (int n = 0; n < nodes; ++n)
          pool.push_back(StartLoopbackWorker(REPTILE_BINARY, port_, Log(absl::StrCat("w", name, "_", n)),
                                             {"--learners", std::to_string(learners)}));
        ASSERT_EQ(coordinator->ExitCode(300), 0) << coordinator->err();
        EXPECT_EQ(ParameterSha(coordinator->out()), reference) << name;
        for (auto& worker : pool) EXPECT_EQ(worker->ExitCode(30), 0) << worker->err();
      }
    }
  }
}

// A node SIGKILLed while its learners run costs only the items it held:
// every task redone was that node's, the other node's sums stand, and the
// parameters are those of threads.
TEST_F(DistributedTest, ANodeKilledMidRoundCostsOnlyItsOwnTasks) {
  const std::vector<std::string> overrides = OmniglotOverrides(120);
  const std::string reference = ThreadsReference("configs/demo.textproto", overrides);
  const std::string run = TempDir("run");
  auto coordinator = StartCoordinator("configs/demo.textproto", overrides, run, 0, "coordinator");
  const std::vector<std::string> two_learners = {"--learners", "2"};
  auto survivor = StartLoopbackWorker(REPTILE_BINARY, port_, Log("survivor"), two_learners);
  std::vector<std::string> victims;  // worker ids of the nodes killed
  std::mt19937 rng(3);
  for (int attempt = 0; attempt < 6 && coordinator->running(); ++attempt) {
    auto victim = StartLoopbackWorker(REPTILE_BINARY, port_, Log(absl::StrCat("victim", attempt)), two_learners);
    // Until it has joined and taken part in a few rounds.
    const int rounds = RoundsDone(run);
    for (int i = 0; i < 600 && coordinator->running(); ++i) {
      if (absl::StrContains(victim->err(), "as worker") && RoundsDone(run) >= rounds + 3) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 40)(rng)));
    victim->Signal(SIGKILL);
    victim->Wait(10);
    const std::string err = victim->err();
    const size_t at = err.find("as worker ");
    if (at != std::string::npos) victims.push_back(err.substr(at + 10, err.find('\n', at) - at - 10));
    if (CountOccurrences(coordinator->err(), "is redone") >= 3) break;
  }
  ASSERT_EQ(coordinator->ExitCode(300), 0) << coordinator->err();
  EXPECT_EQ(survivor->ExitCode(30), 0) << survivor->err();
  EXPECT_EQ(ParameterSha(coordinator->out()), reference);
  int redone = 0;
  for (absl::string_view line : absl::StrSplit(coordinator->err(), '\n')) {
    if (!absl::StrContains(line, "is redone")) continue;
    ++redone;
    const bool victims_task = std::any_of(victims.begin(), victims.end(), [&](const std::string& id) {
      return absl::StrContains(line, absl::StrCat("redone: worker ", id, " lost"));
    });
    EXPECT_TRUE(victims_task) << line;
  }
  EXPECT_GE(redone, 1) << coordinator->err();
}

// runtime.start_with_learners holds the first round until workers with that
// many learners in all have joined; then the run goes on as any other.
TEST_F(DistributedTest, TheFirstRoundWaitsForTheLearnersItIsToldToStartWith) {
  const std::vector<std::string> overrides = {"outer.rounds=40", "outer.meta_batch_size=3", "eval.every_rounds=0",
                                              "eval.final_episodes=10"};
  const std::string reference = ThreadsReference("configs/sine.textproto", overrides);
  const std::string run = TempDir("run");
  auto coordinator = StartCoordinator("configs/sine.textproto",
                                      Concat(overrides, {"runtime.start_with_learners=3"}), run, 0, "coordinator");
  auto node = StartLoopbackWorker(REPTILE_BINARY, port_, Log("node"), {"--learners", "2"});
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_EQ(RoundsDone(run), 0) << "a round ran with 2 of the 3 learners";
  EXPECT_TRUE(absl::StrContains(coordinator->err(), "waiting for workers with 3 learners")) << coordinator->err();
  auto single = StartWorker("single");
  ASSERT_EQ(coordinator->ExitCode(120), 0) << coordinator->err();
  EXPECT_EQ(ParameterSha(coordinator->out()), reference);
  EXPECT_EQ(node->ExitCode(30), 0) << node->err();
  EXPECT_EQ(single->ExitCode(30), 0) << single->err();
}

TEST_F(DistributedTest, OneWorkerOrSixGiveTheSameParameters) {
  const std::vector<std::string> overrides = {"outer.rounds=300", "outer.meta_batch_size=6", "eval.every_rounds=0",
                                              "eval.final_episodes=20"};
  const std::string reference = ThreadsReference("configs/sine.textproto", overrides);
  for (int workers : {1, 6}) {
    const std::string run = TempDir(absl::StrCat("run", workers));
    auto coordinator = StartCoordinator("configs/sine.textproto", overrides, run, 0, absl::StrCat("c", workers));
    std::vector<std::unique_ptr<ChildProcess>> pool;
    for (int w = 0; w < workers; ++w) pool.push_back(StartWorker(absl::StrCat("w", workers, "_", w)));
    ASSERT_EQ(coordinator->ExitCode(300), 0) << coordinator->err();
    EXPECT_EQ(ParameterSha(coordinator->out()), reference) << workers << " workers";
    for (auto& worker : pool) EXPECT_EQ(worker->ExitCode(30), 0) << worker->err();
  }
}

// Work items of several tasks come back as one exact sum from the worker
// that ran them: the parameters are those of one task per item, in process.
TEST_F(DistributedTest, WorkerSummedItemsMatchPerTaskThreadsForOneToFourWorkers) {
  const std::vector<std::string> overrides = OmniglotOverrides(30);
  const std::string reference = ThreadsReference("configs/demo.textproto", overrides);
  for (auto [workers, per_item] : std::vector<std::pair<int, int>>{{1, 2}, {2, 3}, {3, 2}, {4, 5}}) {
    std::vector<std::string> grouped = overrides;
    grouped.push_back(absl::StrCat("runtime.tasks_per_item=", per_item));
    const std::string name = absl::StrCat(workers, "x", per_item);
    auto coordinator = StartCoordinator("configs/demo.textproto", grouped, TempDir("run" + name), 0, "c" + name);
    std::vector<std::unique_ptr<ChildProcess>> pool;
    for (int w = 0; w < workers; ++w) pool.push_back(StartWorker(absl::StrCat("w", name, "_", w)));
    ASSERT_EQ(coordinator->ExitCode(300), 0) << coordinator->err();
    EXPECT_EQ(ParameterSha(coordinator->out()), reference) << workers << " workers, items of " << per_item;
    for (auto& worker : pool) EXPECT_EQ(worker->ExitCode(30), 0) << worker->err();
  }
}

TEST_F(DistributedTest, WorkersKilledAtRandomMomentsChangeNothing) {
  const std::vector<std::string> overrides = OmniglotOverrides(150);
  const std::string reference = ThreadsReference("configs/demo.textproto", overrides);
  const std::string run = TempDir("run");
  auto coordinator = StartCoordinator("configs/demo.textproto", overrides, run, 0, "coordinator");
  std::vector<std::unique_ptr<ChildProcess>> pool;
  int started = 0;
  for (; started < 3; ++started) pool.push_back(StartWorker(absl::StrCat("worker", started)));
  // Six SIGKILLs at random moments, each of a worker that has joined and is
  // working (a worker needs a second or two to load Omniglot first); each
  // is replaced by a new process.
  std::mt19937 rng(7);
  int kills = 0;
  while (coordinator->running() && kills < 6) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(500, 2500)(rng)));
    std::vector<size_t> working;
    for (size_t w = 0; w < pool.size(); ++w)
      if (absl::StrContains(pool[w]->err(), "joined")) working.push_back(w);
    if (!coordinator->running() || RoundsDone(run) < 5 || working.size() < 2) continue;
    const size_t victim = working[std::uniform_int_distribution<size_t>(0, working.size() - 1)(rng)];
    pool[victim]->Signal(SIGKILL);
    pool[victim]->Wait(10);
    ++kills;
    pool[victim] = StartWorker(absl::StrCat("worker", started++));
  }
  ASSERT_EQ(coordinator->ExitCode(300), 0) << coordinator->err();
  EXPECT_GE(kills, 3);
  EXPECT_TRUE(absl::StrContains(coordinator->err(), "lost")) << coordinator->err();
  EXPECT_EQ(ParameterSha(coordinator->out()), reference) << "after " << kills << " kills";
}

TEST_F(DistributedTest, CoordinatorKilledAndRestartedResumesAndWorkersRejoin) {
  const std::vector<std::string> overrides = OmniglotOverrides(100);
  const std::string reference = ThreadsReference("configs/demo.textproto", overrides);
  const std::string run = TempDir("run");
  auto coordinator = StartCoordinator("configs/demo.textproto", overrides, run, 0, "coordinator1");
  const int port = port_;
  auto worker_a = StartWorker("worker_a");
  auto worker_b = StartWorker("worker_b");
  ASSERT_TRUE(WaitForRounds(run, 35, coordinator.get())) << coordinator->err();
  coordinator->Signal(SIGKILL);
  ASSERT_EQ(coordinator->ExitCode(10), 128 + SIGKILL);
  std::this_thread::sleep_for(std::chrono::seconds(1));  // the workers find nobody there
  auto restarted = StartCoordinator("configs/demo.textproto", overrides, run, port, "coordinator2");
  ASSERT_EQ(restarted->ExitCode(300), 0) << restarted->err();
  EXPECT_TRUE(absl::StrContains(restarted->err(), "resuming")) << restarted->err();
  EXPECT_EQ(ParameterSha(restarted->out()), reference);
  EXPECT_EQ(worker_a->ExitCode(30), 0) << worker_a->err();
  EXPECT_EQ(worker_b->ExitCode(30), 0) << worker_b->err();
  EXPECT_TRUE(absl::StrContains(worker_a->err(), "joined again")) << worker_a->err();
}

TEST_F(DistributedTest, WorkersJoinAndLeaveWhileTrainingGoesOn) {
  const std::vector<std::string> overrides = OmniglotOverrides(150);
  const std::string reference = ThreadsReference("configs/demo.textproto", overrides);
  const std::string run = TempDir("run");
  auto coordinator = StartCoordinator("configs/demo.textproto", overrides, run, 0, "coordinator");
  std::vector<std::unique_ptr<ChildProcess>> pool;
  pool.push_back(StartWorker("worker0"));
  ASSERT_TRUE(WaitForRounds(run, 15, coordinator.get())) << coordinator->err();
  for (int w = 1; w < 6; ++w) pool.push_back(StartWorker(absl::StrCat("worker", w)));
  ASSERT_TRUE(WaitForRounds(run, 60, coordinator.get())) << coordinator->err();
  EXPECT_TRUE(absl::StrContains(coordinator->err(), "6 alive")) << coordinator->err();
  // Shrink to 2: SIGTERM lets a worker finish its task and leave.
  for (int w = 0; w < 4; ++w) {
    pool[w]->Signal(SIGTERM);
    EXPECT_EQ(pool[w]->ExitCode(30), 0) << pool[w]->err();
  }
  ASSERT_EQ(coordinator->ExitCode(300), 0) << coordinator->err();
  EXPECT_TRUE(absl::StrContains(coordinator->err(), "left; 2 left")) << coordinator->err();
  EXPECT_EQ(ParameterSha(coordinator->out()), reference);
}

TEST_F(DistributedTest, SigtermCheckpointsAndTheRunResumesWhereItStopped) {
  const std::vector<std::string> overrides = OmniglotOverrides(80);
  const std::string reference = ThreadsReference("configs/demo.textproto", overrides);
  const std::string run = TempDir("run");
  auto coordinator = StartCoordinator("configs/demo.textproto", overrides, run, 0, "coordinator1");
  auto worker = StartWorker("worker1");
  ASSERT_TRUE(WaitForRounds(run, 23, coordinator.get())) << coordinator->err();
  coordinator->Signal(SIGTERM);
  ASSERT_EQ(coordinator->ExitCode(30), 0) << coordinator->err();
  EXPECT_TRUE(absl::StrContains(coordinator->err(), "stopping")) << coordinator->err();
  const int stopped_at = RoundsDone(run);
  EXPECT_LT(stopped_at, 80);
  worker->Signal(SIGTERM);
  EXPECT_EQ(worker->ExitCode(30), 0) << worker->err();

  auto resumed = StartCoordinator("configs/demo.textproto", overrides, run, 0, "coordinator2");
  auto worker2 = StartWorker("worker2");
  ASSERT_EQ(resumed->ExitCode(300), 0) << resumed->err();
  EXPECT_TRUE(absl::StrContains(resumed->err(), absl::StrCat("at round ", stopped_at))) << resumed->err();
  EXPECT_EQ(ParameterSha(resumed->out()), reference);
}

TEST_F(DistributedTest, ModelOfOver50MegabytesStreamsInChunks) {
  // 1-3700-3700-1: 13.7M parameters, 55 MB, far past gRPC's 4 MB messages.
  const std::vector<std::string> overrides = {"model.hidden_units=3700", "inner.learning_rate=0.00002", "outer.rounds=3", "outer.meta_batch_size=2",
                                              "eval.every_rounds=0", "eval.final_episodes=2"};
  const std::string reference = ThreadsReference("configs/sine.textproto", overrides);
  const std::string run = TempDir("run");
  auto train = ChildProcess::Start(Concat({REPTILE_BINARY, "train", "--config", SourcePath("configs/sine.textproto"),
                                           "--run_dir", run, "--workers", "2", "runtime.local_workers=GRPC_PROCESSES"},
                                          overrides),
                                   Log("train"));
  ASSERT_EQ(train->ExitCode(300), 0) << train->err();
  EXPECT_EQ(ParameterSha(train->out()), reference);
  // Three rounds of two 55 MB deltas came in, in 1 MiB chunks.
  const std::string metrics = ReadWholeFile(run + "/metrics.jsonl");
  const size_t at = metrics.rfind("\"bytes_in\":");
  ASSERT_NE(at, std::string::npos) << metrics;
  EXPECT_GE(std::atof(metrics.c_str() + at + 11), 6 * 54.8e6) << metrics;
}

TEST_F(DistributedTest, Bf16DeltasAreTheSameOverTheWireAsInProcess) {
  const std::vector<std::string> bf16 = {"outer.rounds=200", "outer.meta_batch_size=4", "eval.every_rounds=0",
                                         "eval.final_episodes=0", "outer.delta_dtype=DELTA_BF16"};
  const std::vector<std::string> fp32 = {"outer.rounds=200", "outer.meta_batch_size=4", "eval.every_rounds=0",
                                         "eval.final_episodes=0"};
  const std::string reference = ThreadsReference("configs/sine.textproto", bf16);
  EXPECT_NE(reference, ThreadsReference("configs/sine.textproto", fp32));
  const std::string run = TempDir("run");
  auto train = ChildProcess::Start(Concat({REPTILE_BINARY, "train", "--config", SourcePath("configs/sine.textproto"),
                                           "--run_dir", run, "--workers", "2"},
                                          bf16),
                                   Log("train"));
  ASSERT_EQ(train->ExitCode(300), 0) << train->err();
  EXPECT_EQ(ParameterSha(train->out()), reference);
}

}  // namespace
}  // namespace reptile::testing
