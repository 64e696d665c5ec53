// Reptile learns: meta-trained initialisations adapt far better than random
// ones on held-out tasks.
#include "coordinator/round_engine.h"
#include "gtest/gtest.h"
#include "test_support.h"
#include "transport/local/local_transport.h"

namespace reptile {
namespace {

using testing::LoadNamedConfig;
using testing::SharedTaskSource;

struct Outcome {
  EvaluationSummary before, after;
};

Outcome TrainAndEvaluate(const ExperimentConfig& config, int episodes) {
  auto tasks = SharedTaskSource(config);
  auto transport = LocalTransport::Create(config, tasks, 2);
  EXPECT_TRUE(transport.ok()) << transport.status();
  auto engine = RoundEngine::Create(config, *tasks, transport->get(), {});
  EXPECT_TRUE(engine.ok()) << engine.status();
  Outcome outcome;
  outcome.before = *(*engine)->Evaluate(episodes);
  EXPECT_TRUE((*engine)->Run().ok());
  outcome.after = *(*engine)->Evaluate(episodes);
  return outcome;
}

TEST(LearningTest, SineMetaTrainingBeatsRandomInitialisation) {
  ExperimentConfig config = LoadNamedConfig("sine", {"outer.rounds=10000", "eval.every_rounds=0", "eval.final_episodes=0"});
  const Outcome outcome = TrainAndEvaluate(config, 300);
  std::cout << "sine post-adaptation MSE: random init " << outcome.before.loss << " ± " << outcome.before.loss_ci95
            << ", after 10000 rounds " << outcome.after.loss << " ± " << outcome.after.loss_ci95 << std::endl;
  EXPECT_LT(outcome.after.loss + outcome.after.loss_ci95, 0.4 * (outcome.before.loss - outcome.before.loss_ci95));
}

TEST(LearningTest, ShortOmniglotRunIsWellAboveChance) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s", {"outer.rounds=400", "eval.every_rounds=0",
                                                              "eval.final_episodes=0", "eval.inner_iterations=20"});
  const Outcome outcome = TrainAndEvaluate(config, 200);
  std::cout << "Omniglot 5-way 1-shot: random init " << FormatEvaluation(outcome.before, true) << "; after 400 rounds "
            << FormatEvaluation(outcome.after, true) << std::endl;
  EXPECT_GT(outcome.after.accuracy - outcome.after.accuracy_ci95, 0.40);
  EXPECT_GT(outcome.after.accuracy_inductive - outcome.after.accuracy_inductive_ci95, 0.35);
  EXPECT_GT(outcome.after.accuracy, outcome.before.accuracy + 0.1);
}

}  // namespace
}  // namespace reptile
