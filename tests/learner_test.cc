#include <limits>

#include "gtest/gtest.h"
#include "test_support.h"
#include "core/models/batch_norm_relu.h"
#include "worker/learner.h"

namespace reptile {
namespace {

using testing::LoadNamedConfig;
using testing::SharedTaskSource;

MetaState InitialState(const ExperimentConfig& config, bool carry) {
  auto model = MakeModel(config, config.seed());
  EXPECT_TRUE(model.ok());
  FlatParameters flat(**model);
  MetaState state;
  state.parameters = flat.values().clone();
  if (carry) {
    const CarriedMoments carried = CarriedMomentsOf(config);
    if (carried.first) state.adam_m = torch::zeros_like(state.parameters);
    if (carried.second) state.adam_v = torch::zeros_like(state.parameters);
  }
  return state;
}

WorkItem TrainItem(const ExperimentConfig& config, uint64_t seed) {
  WorkItem item{WorkKind::kTrain, {TaskSpec()}};
  item.tasks[0].set_family(config.task().family());
  item.tasks[0].set_seed(seed);
  if (config.task().family() == SINE) {
    item.tasks[0].set_support_shots(config.task().sine_train_points());
  } else {
    item.tasks[0].set_support_shots(config.task().train_shots());
    for (int c = 0; c < config.task().ways(); ++c) item.tasks[0].add_class_ids(c * 7);
  }
  return item;
}

TEST(FlatParametersTest, ParametersAndGradientsAreViewsOfTheFlatBuffers) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s");
  auto model = MakeModel(config, 3);
  ASSERT_TRUE(model.ok());
  int64_t expected = 0;
  for (const auto& p : (*model)->parameters()) expected += p.numel();
  FlatParameters flat(**model);
  EXPECT_GE(flat.numel(), expected);
  EXPECT_LT(flat.numel(), expected + 16 * static_cast<int64_t>(flat.layout().size()));
  for (const auto& p : (*model)->parameters())
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p.data_ptr()) % 64, 0u) << "parameters start on 64-byte boundaries";
  EXPECT_EQ(flat.layout().size(), (*model)->parameters().size());
  torch::Tensor x = torch::rand({4, 1, 28, 28});
  (*model)->forward(x).sum().backward();
  EXPECT_GT(flat.grads().abs().sum().item<double>(), 0.0);
  flat.values().zero_();
  for (const auto& p : (*model)->parameters()) EXPECT_EQ(p.abs().sum().item<double>(), 0.0);
}

TEST(ModelTest, ShapesOfThePapersNetworks) {
  ExperimentConfig config = LoadNamedConfig("omniglot_20w1s");
  auto omniglot = MakeModel(config);
  ASSERT_TRUE(omniglot.ok());
  EXPECT_EQ((*omniglot)->forward(torch::rand({3, 1, 28, 28})).sizes(), (std::vector<int64_t>{3, 20}));
  // The reference code's feature counts: 2x2x64 and 6x6x32.
  EXPECT_EQ((*omniglot)->named_parameters()["classifier.weight"].sizes(), (std::vector<int64_t>{20, 256}));
  config.mutable_model()->set_arch(CONV_MINIIMAGENET);
  config.mutable_task()->set_family(IMAGE_FOLDER);
  config.mutable_task()->set_image_size(84);
  config.mutable_task()->set_ways(5);
  auto mini = MakeModel(config);
  ASSERT_TRUE(mini.ok());
  EXPECT_EQ((*mini)->forward(torch::rand({2, 3, 84, 84})).sizes(), (std::vector<int64_t>{2, 5}));
  EXPECT_EQ((*mini)->named_parameters()["classifier.weight"].sizes(), (std::vector<int64_t>{5, 1152}));
  auto sine = MakeModel(LoadNamedConfig("sine"));
  ASSERT_TRUE(sine.ok());
  EXPECT_EQ((*sine)->forward(torch::rand({7, 1})).sizes(), (std::vector<int64_t>{7, 1}));
  EXPECT_EQ((*sine)->parameters().size(), 6u);
}

// The fused batch norm + ReLU against LibTorch's own: values, gradients and
// the running statistics it moves.
TEST(ModelTest, BatchNormReluMatchesLibTorch) {
  torch::manual_seed(7);
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{10, 64, 14, 14}, {5, 3, 2, 2}, {4, 6, 1, 1}}) {
    const torch::Tensor x0 = torch::randn(shape) * 3 + 1;
    const torch::Tensor w0 = torch::rand({shape[1]}) + 0.5, b0 = torch::randn({shape[1]});
    const torch::Tensor upstream = torch::randn(shape);
    auto run = [&](bool fused) {
      torch::Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
      torch::Tensor mean = torch::full({shape[1]}, 0.5), var = torch::full({shape[1]}, 2.0);
      torch::Tensor y = fused ? BatchNormRelu(x, w, b, 1e-5, mean, var, 0.1)
                              : torch::relu(torch::batch_norm(x, w, b, mean, var, true, 0.1, 1e-5, false));
      (y * upstream).sum().backward();
      return std::vector<torch::Tensor>{y, x.grad(), w.grad(), b.grad(), mean, var};
    };
    const auto fused = run(true), reference = run(false);
    const char* names[] = {"output", "grad x", "grad weight", "grad bias", "running mean", "running var"};
    for (int i = 0; i < 6; ++i)
      EXPECT_TRUE(torch::allclose(fused[i], reference[i], 1e-4, 1e-4))
          << names[i] << " of " << shape[0] << "x" << shape[1] << ": max difference "
          << (fused[i] - reference[i]).abs().max().item<float>();
  }
}

TEST(LearnerTest, TrainingIsAFunctionOfStateAndSpec) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s");
  auto tasks = SharedTaskSource(config);
  ASSERT_NE(tasks, nullptr);
  auto a = Learner::Create(config, tasks);
  auto b = Learner::Create(config, tasks);
  ASSERT_TRUE(a.ok() && b.ok());
  MetaState state = InitialState(config, /*carry=*/true);
  auto first = (*a)->Run(state, TrainItem(config, 1));
  (*a)->Run(state, TrainItem(config, 2)).IgnoreError();  // leaves other state behind in `a`
  auto again = (*a)->Run(state, TrainItem(config, 1));
  auto other = (*b)->Run(state, TrainItem(config, 1));
  ASSERT_TRUE(first.ok() && again.ok() && other.ok()) << first.status();
  EXPECT_TRUE(torch::equal(first->delta, again->delta));
  EXPECT_TRUE(torch::equal(first->delta, other->delta));
  EXPECT_TRUE(torch::equal(first->adam_v, other->adam_v));
  EXPECT_GT(first->delta.abs().max().item<float>(), 0.0f);
  EXPECT_EQ(first->predictions, 50);  // 5 iterations x batch 10
  EXPECT_GT(first->loss, 0.0);
}

TEST(LearnerTest, AdamWithBetaOneZeroTakesSignLikeStepsOfTheLearningRate) {
  // With beta1 = 0 and fresh moments, Adam's first step is lr * g / (|g| + eps):
  // every coordinate with a gradient moves by almost exactly lr.
  ExperimentConfig config = LoadNamedConfig("sine", {"inner.optimizer=ADAM", "inner.learning_rate=0.01",
                                                     "inner.adam_beta2=0.999", "inner.adam_epsilon=1e-8",
                                                     "inner.state_mode=RESET", "inner.iterations=1"});
  auto tasks = TaskSource::Create(config.task());
  auto learner = Learner::Create(config, *tasks);
  ASSERT_TRUE(learner.ok());
  auto result = (*learner)->Run(InitialState(config, false), TrainItem(config, 4));
  ASSERT_TRUE(result.ok());
  torch::Tensor moved = result->delta.abs().masked_select(result->delta.abs() > 1e-6);
  EXPECT_GT(moved.numel(), result->delta.numel() / 2);
  EXPECT_NEAR(moved.max().item<float>(), 0.01f, 1e-5f);
}

// With adam_beta1 = 0 (the paper's setting) the first step overwrites m with
// the gradient: m is not carried, and a state that still holds one (an old
// coordinator's) gives bitwise the same delta and v as a state without.
TEST(LearnerTest, CarryWithBetaOneZeroNeitherNeedsNorReturnsTheFirstMoment) {
  const std::vector<std::string> carry = {"inner.optimizer=ADAM", "inner.adam_beta2=0.999", "inner.adam_epsilon=1e-8",
                                          "inner.state_mode=CARRY", "inner.iterations=3"};
  ExperimentConfig config = LoadNamedConfig("sine", carry);
  ASSERT_EQ(config.inner().adam_beta1(), 0.0f);
  EXPECT_EQ(CarriedMomentsOf(config), (CarriedMoments{false, true}));
  auto tasks = TaskSource::Create(config.task());
  auto learner = Learner::Create(config, *tasks);
  ASSERT_TRUE(learner.ok());
  MetaState state = InitialState(config, /*carry=*/true);
  EXPECT_FALSE(state.adam_m.defined());
  torch::manual_seed(3);
  state.adam_v = torch::rand_like(state.parameters) * 1e-4;
  state.adam_step = 120;
  auto without_m = (*learner)->Run(state, TrainItem(config, 4));
  ASSERT_TRUE(without_m.ok()) << without_m.status();
  EXPECT_FALSE(without_m->adam_m.defined());
  ASSERT_TRUE(without_m->adam_v.defined());
  state.adam_m = torch::randn_like(state.parameters);
  auto with_m = (*learner)->Run(state, TrainItem(config, 4));
  ASSERT_TRUE(with_m.ok()) << with_m.status();
  EXPECT_TRUE(torch::equal(without_m->delta, with_m->delta));
  EXPECT_TRUE(torch::equal(without_m->adam_v, with_m->adam_v));
}

// With adam_beta1 != 0 m is carried as before: required, returned, and it
// changes the steps.
TEST(LearnerTest, CarryWithBetaOneNonZeroCarriesTheFirstMoment) {
  ExperimentConfig config =
      LoadNamedConfig("sine", {"inner.optimizer=ADAM", "inner.adam_beta1=0.9", "inner.adam_beta2=0.999",
                               "inner.adam_epsilon=1e-8", "inner.state_mode=CARRY", "inner.iterations=3"});
  EXPECT_EQ(CarriedMomentsOf(config), (CarriedMoments{true, true}));
  auto tasks = TaskSource::Create(config.task());
  auto learner = Learner::Create(config, *tasks);
  ASSERT_TRUE(learner.ok());
  MetaState state = InitialState(config, /*carry=*/true);
  ASSERT_TRUE(state.adam_m.defined() && state.adam_v.defined());
  auto zero_m = (*learner)->Run(state, TrainItem(config, 4));
  ASSERT_TRUE(zero_m.ok()) << zero_m.status();
  ASSERT_TRUE(zero_m->adam_m.defined() && zero_m->adam_v.defined());
  torch::manual_seed(3);
  state.adam_m = torch::randn_like(state.parameters) * 1e-2;
  auto other_m = (*learner)->Run(state, TrainItem(config, 4));
  ASSERT_TRUE(other_m.ok()) << other_m.status();
  EXPECT_FALSE(torch::equal(zero_m->delta, other_m->delta));
  MetaState no_m = state;
  no_m.adam_m = torch::Tensor();
  EXPECT_EQ((*learner)->Run(no_m, TrainItem(config, 4)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LearnerTest, FomamlReturnsOnlyTheLastStep) {
  ExperimentConfig reptile = LoadNamedConfig("sine");
  ExperimentConfig fomaml = LoadNamedConfig("sine", {"outer.algorithm=FOMAML"});
  auto tasks = TaskSource::Create(reptile.task());
  auto r = Learner::Create(reptile, *tasks);
  auto f = Learner::Create(fomaml, *tasks);
  MetaState state = InitialState(reptile, false);
  auto full = (*r)->Run(state, TrainItem(reptile, 9));
  auto last = (*f)->Run(state, TrainItem(fomaml, 9));
  ASSERT_TRUE(full.ok() && last.ok());
  // SGD: the last step is -lr * grad of the last minibatch; smaller than the whole path.
  EXPECT_LT(last->delta.norm().item<double>(), full->delta.norm().item<double>());
  EXPECT_GT(last->delta.norm().item<double>(), 0.0);
}

TEST(LearnerTest, EvaluationCountsBothModes) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s", {"eval.inner_iterations=5", "task.query_shots=2"});
  auto tasks = SharedTaskSource(config);
  auto learner = Learner::Create(config, tasks);
  WorkItem item{WorkKind::kTrain, {TaskSpec()}};
  item.kind = WorkKind::kEvaluate;
  item.tasks[0].set_family(OMNIGLOT);
  item.tasks[0].set_seed(3);
  item.tasks[0].set_meta_test(true);
  item.tasks[0].set_support_shots(1);
  item.tasks[0].set_query_shots(2);
  for (int c : {1, 2, 3, 4, 5}) item.tasks[0].add_class_ids(c);
  auto result = (*learner)->Run(InitialState(config, true), item);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->predictions, 10);
  EXPECT_LE(result->correct, 10);
  EXPECT_LE(result->correct_inductive, 10);
  EXPECT_FALSE(result->delta.defined());
}

TEST(LearnerTest, MismatchedStateIsRefused) {
  ExperimentConfig config = LoadNamedConfig("sine");
  auto tasks = TaskSource::Create(config.task());
  auto learner = Learner::Create(config, *tasks);
  MetaState state;
  state.parameters = torch::zeros({10});
  EXPECT_EQ((*learner)->Run(state, TrainItem(config, 1)).status().code(), absl::StatusCode::kInvalidArgument);
  state.parameters = torch::zeros({(*learner)->num_parameters()}, torch::kFloat64);
  EXPECT_EQ((*learner)->Run(state, TrainItem(config, 1)).status().code(), absl::StatusCode::kInvalidArgument);
}

// What a coordinator sends is checked against the learner's own config
// before anything is allocated; LibTorch failures come back as a Status.
TEST(LearnerTest, SpecsThatDoNotFitTheConfigAreRefusedAndTheLearnerKeepsWorking) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s");
  auto learner = Learner::Create(config, SharedTaskSource(config));
  ASSERT_TRUE(learner.ok());
  const MetaState state = InitialState(config, true);
  auto refused = [&](const WorkItem& item, const std::string& message) {
    absl::StatusOr<TaskResult> result;
    EXPECT_NO_THROW(result = (*learner)->Run(state, item));
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
    EXPECT_NE(result.status().message().find(message), std::string::npos) << result.status();
  };
  const WorkItem good = TrainItem(config, 4);
  WorkItem item = good;
  item.tasks[0].set_support_shots(std::numeric_limits<int32_t>::max());
  refused(item, "task spec field support_shots: 2147483647, but a training task has 10 (task.train_shots)");
  item = good;
  item.tasks[0].set_support_shots(20);  // a class has that many, the config asks for 10
  refused(item, "task spec field support_shots: 20");
  item = good;
  item.tasks[0].set_query_shots(1);
  refused(item, "task spec field query_shots: 1, but a training task has 0");
  item = good;
  item.tasks[0].add_class_ids(50);  // 6 ways for a 5-way model
  refused(item, "task spec field class_ids (count): 6, but a training task has 5 (task.ways)");
  item = good;
  item.tasks[0].set_meta_test(true);  // training on held-out classes
  refused(item, "task spec field meta_test: 1");
  item = good;
  item.kind = WorkKind::kEvaluate;  // an episode with training shots and no queries
  refused(item, "task spec field meta_test: 0");
  item = good;
  item.tasks[0].set_family(SINE);
  refused(item, "task spec field family: SINE");
  item = good;
  item.tasks[0].set_class_ids(0, 99999);  // the right shape, a class that does not exist
  refused(item, "task spec field class_ids: class id 99999");

  auto result = (*learner)->Run(state, good);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->delta.numel(), (*learner)->num_parameters());
}

}  // namespace
}  // namespace reptile
