// The determinism contract: the same config and seed give bitwise-identical
// parameters whatever the number of workers, and a run resumed from a
// checkpoint ends where an uninterrupted one does.
#include "coordinator/round_engine.h"
#include "gtest/gtest.h"
#include "test_support.h"
#include "transport/local/local_transport.h"

namespace reptile {
namespace {

using testing::LoadNamedConfig;
using testing::SharedTaskSource;

// Trains `config` with `workers` threads up to `until` rounds (all if < 0) in
// `run_dir` (none if empty); returns the parameters' fingerprint.
std::string Train(const ExperimentConfig& config, int workers, const std::string& run_dir = "",
                  int64_t until = -1) {
  auto tasks = SharedTaskSource(config);
  auto transport = LocalTransport::Create(config, tasks, workers);
  EXPECT_TRUE(transport.ok()) << transport.status();
  std::unique_ptr<RunDirectory> dir;
  RoundEngine::Options options;
  if (!run_dir.empty()) {
    dir = *RunDirectory::Open(run_dir);
    options.run_dir = dir.get();
  }
  auto engine = RoundEngine::Create(config, *tasks, transport->get(), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  absl::Status status = (*engine)->Run(until);
  EXPECT_TRUE(status.ok()) << status;
  return (*engine)->Fingerprint();
}

TEST(DeterminismTest, SineIsBitwiseIdenticalForOneToFourWorkers) {
  ExperimentConfig config =
      LoadNamedConfig("sine", {"outer.rounds=30", "outer.meta_batch_size=6", "eval.final_episodes=0"});
  const std::string one = Train(config, 1);
  EXPECT_EQ(Train(config, 2), one);
  EXPECT_EQ(Train(config, 4), one);
  config.set_seed(1);
  EXPECT_NE(Train(config, 1), one);
}

TEST(DeterminismTest, OmniglotWithCarriedAdamStateIsBitwiseIdenticalForAnyWorkerCount) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s", {"outer.rounds=4", "eval.final_episodes=0"});
  const std::string one = Train(config, 1);
  EXPECT_EQ(Train(config, 3), one);
}

TEST(DeterminismTest, ResumedRunMatchesUninterruptedRun) {
  ExperimentConfig config = LoadNamedConfig(
      "sine", {"outer.rounds=40", "outer.meta_batch_size=3", "eval.every_rounds=10", "eval.episodes=5",
               "eval.final_episodes=0", "runtime.checkpoint_every_rounds=7"});
  const std::string uninterrupted = Train(config, 2, testing::TempDir("straight"));
  const std::string resumed_dir = testing::TempDir("resumed");
  const std::string halfway = Train(config, 1, resumed_dir, 17);
  EXPECT_NE(halfway, uninterrupted);
  EXPECT_EQ(Train(config, 3, resumed_dir), uninterrupted);
}

TEST(DeterminismTest, ResumedOmniglotRunWithCarriedStateMatches) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s", {"outer.rounds=6", "eval.final_episodes=0"});
  const std::string uninterrupted = Train(config, 2, testing::TempDir("straight"));
  const std::string resumed_dir = testing::TempDir("resumed");
  Train(config, 2, resumed_dir, 3);
  EXPECT_EQ(Train(config, 1, resumed_dir), uninterrupted);
}

TEST(DeterminismTest, ResumingWithAnotherConfigIsRefused) {
  ExperimentConfig config = LoadNamedConfig("sine", {"outer.rounds=4", "eval.final_episodes=0"});
  const std::string dir_path = testing::TempDir("run");
  Train(config, 1, dir_path, 2);
  config.mutable_inner()->set_learning_rate(0.5);
  auto tasks = SharedTaskSource(config);
  auto transport = LocalTransport::Create(config, tasks, 1);
  auto dir = RunDirectory::Open(dir_path);
  RoundEngine::Options options;
  options.run_dir = dir->get();
  auto engine = RoundEngine::Create(config, *tasks, transport->get(), options);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(engine.status().message().find("learning_rate"), std::string::npos) << engine.status();
}

TEST(DeterminismTest, StepSizeAnnealsLinearly) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s", {"outer.rounds=100"});
  auto tasks = SharedTaskSource(config);
  auto transport = LocalTransport::Create(config, tasks, 1);
  auto engine = RoundEngine::Create(config, *tasks, transport->get(), {});
  EXPECT_DOUBLE_EQ((*engine)->StepSize(0), 1.0);
  EXPECT_DOUBLE_EQ((*engine)->StepSize(50), 0.5);
  EXPECT_NEAR((*engine)->StepSize(99), 0.01, 1e-12);
}

}  // namespace
}  // namespace reptile
