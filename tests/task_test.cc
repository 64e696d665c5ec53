#include <limits>
#include <set>

#include "coordinator/task_sampler.h"
#include "core/rng.h"
#include "core/tasks/task_source.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_support.h"

namespace reptile {
namespace {

using ::testing::HasSubstr;
using testing::LoadNamedConfig;
using testing::SharedTaskSource;

TEST(RngTest, SameSeedSameStreamAndChooseIsDistinct) {
  Rng a(7), b(7), c(8);
  EXPECT_EQ(a.Next(), b.Next());
  EXPECT_NE(Rng(7).Next(), c.Next());
  EXPECT_NE(Rng::Derive(1, 2), Rng::Derive(1, 3));
  Rng r(3);
  for (int trial = 0; trial < 100; ++trial) {
    std::vector<int> picks = r.Choose(20, 6);
    EXPECT_EQ(std::set<int>(picks.begin(), picks.end()).size(), 6u);
    for (int p : picks) EXPECT_TRUE(p >= 0 && p < 20);
  }
  // Below() is unbiased enough to hit every value.
  std::set<uint64_t> seen;
  for (int i = 0; i < 1000; ++i) seen.insert(r.Below(5));
  EXPECT_EQ(seen.size(), 5u);
}

TEST(TaskSamplerTest, ItemsDependOnlyOnRoundAndSeed) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s");
  TaskSampler sampler(config, 4800, 423), again(config, 4800, 423);
  auto round3 = sampler.TrainingItems(3);
  ASSERT_EQ(round3.size(), 5u);
  for (size_t i = 0; i < round3.size(); ++i)
    EXPECT_EQ(round3[i].tasks[0].SerializeAsString(), again.TrainingItems(3)[i].tasks[0].SerializeAsString());
  EXPECT_NE(round3[0].tasks[0].seed(), sampler.TrainingItems(4)[0].tasks[0].seed());
  EXPECT_NE(round3[0].tasks[0].seed(), round3[1].tasks[0].seed());
  for (const WorkItem& item : round3) {
    EXPECT_EQ(item.tasks[0].class_ids_size(), 5);
    EXPECT_EQ(item.tasks[0].support_shots(), 10);
    EXPECT_FALSE(item.tasks[0].meta_test());
  }
  auto eval = sampler.EvaluationItems(10);
  for (const WorkItem& item : eval) {
    EXPECT_TRUE(item.tasks[0].meta_test());
    EXPECT_EQ(item.tasks[0].support_shots(), 1);
    EXPECT_EQ(item.tasks[0].query_shots(), 1);
    for (int id : item.tasks[0].class_ids()) EXPECT_LT(id, 423);
  }
  config.set_seed(1);
  EXPECT_NE(TaskSampler(config, 4800, 423).TrainingItems(3)[0].tasks[0].seed(), round3[0].tasks[0].seed());
}

TEST(TaskSamplerTest, EvaluationsDuringTrainingDrawFromTheValidationSplitWhereThereIsOne) {
  const ExperimentConfig config = LoadNamedConfig("omniglot_5w1s");
  const TaskSampler with_validation(config, 64, 20, 16), without(config, 64, 20);
  for (const WorkItem& item : with_validation.EvaluationItems(30, /*validation=*/true)) {
    const TaskSpec& spec = item.tasks.at(0);
    EXPECT_TRUE(spec.meta_test() && spec.validation());
    for (int id : spec.class_ids()) EXPECT_LT(id, 16);
  }
  for (const WorkItem& item : with_validation.EvaluationItems(3, /*validation=*/false))
    EXPECT_FALSE(item.tasks.at(0).validation());
  // No validation split: the meta-test split, the same episodes as ever.
  const std::vector<WorkItem> fallback = without.EvaluationItems(3, /*validation=*/true);
  const std::vector<WorkItem> test = without.EvaluationItems(3);
  for (size_t e = 0; e < test.size(); ++e)
    EXPECT_EQ(fallback[e].tasks.at(0).SerializeAsString(), test[e].tasks.at(0).SerializeAsString());
}

TEST(TaskSourceTest, SineTasksFollowTheirSpec) {
  ExperimentConfig config = LoadNamedConfig("sine");
  auto source = TaskSource::Create(config.task());
  ASSERT_TRUE(source.ok());
  TaskSpec spec;
  spec.set_family(SINE);
  spec.set_seed(11);
  spec.set_support_shots(50);
  spec.set_query_shots(100);
  auto a = (*source)->Materialize(spec);
  auto b = (*source)->Materialize(spec);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(torch::equal(a->support_x, b->support_x));
  EXPECT_TRUE(torch::equal(a->query_y, b->query_y));
  EXPECT_EQ(a->support_x.sizes(), (std::vector<int64_t>{50, 1}));
  EXPECT_EQ(a->query_x.size(0), 100);
  EXPECT_LE(a->support_x.abs().max().item<float>(), 5.0f);
  EXPECT_LE(a->support_y.abs().max().item<float>(), 5.0f);
  // y = A sin(x + phi): y / sin-shaped, so its range is at most 2A <= 10 and nonzero.
  EXPECT_GT(a->support_y.abs().max().item<float>(), 0.0f);
  spec.set_seed(12);
  EXPECT_FALSE(torch::equal(a->support_y, (*source)->Materialize(spec)->support_y));
}

// OpenAI's demo protocol: training tasks are the 50-point grid, evaluation
// supports are grid points, and the query is the whole grid.
TEST(TaskSourceTest, SineOnTheDemoGrid) {
  ExperimentConfig config = LoadNamedConfig("sine_grid");
  auto source = TaskSource::Create(config.task());
  ASSERT_TRUE(source.ok()) << source.status();
  const TaskSampler sampler(config, 0, 0);
  const TaskSpec training = sampler.TrainingItems(3)[0].tasks[0];
  auto task = (*source)->Materialize(training);
  ASSERT_TRUE(task.ok()) << task.status();
  const torch::Tensor grid = torch::linspace(-5, 5, 50).unsqueeze(1);
  EXPECT_TRUE(torch::allclose(task->support_x, grid));
  const TaskSpec evaluation = sampler.EvaluationItems(1)[0].tasks[0];
  auto episode = (*source)->Materialize(evaluation);
  ASSERT_TRUE(episode.ok()) << episode.status();
  EXPECT_EQ(episode->support_x.size(0), 10);
  EXPECT_TRUE(torch::allclose(episode->query_x, grid));
  for (int i = 0; i < 10; ++i) {
    const float x = episode->support_x[i][0].item<float>();
    EXPECT_LT((grid - x).abs().min().item<float>(), 1e-6) << x << " is not a grid point";
  }
  // The grid is every task's training and query set: counts must agree.
  config.mutable_task()->set_sine_query_points(100);
  EXPECT_THAT(ValidateConfig(config).message(), HasSubstr("task.sine_grid_points"));
}

TEST(TaskSourceTest, OmniglotSplitAndEpisodes) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s");
  auto source = SharedTaskSource(config);
  ASSERT_NE(source, nullptr);
  EXPECT_EQ(source->num_classes(false), 4800);
  EXPECT_EQ(source->num_classes(true), 423);
  TaskSampler sampler(config, 4800, 423);
  const TaskSpec spec = sampler.EvaluationItems(1)[0].tasks[0];
  auto a = source->Materialize(spec);
  auto b = source->Materialize(spec);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->support_x.sizes(), (std::vector<int64_t>{5, 1, 28, 28}));
  EXPECT_EQ(a->query_x.sizes(), (std::vector<int64_t>{5, 1, 28, 28}));
  EXPECT_TRUE(torch::equal(a->support_x, b->support_x));
  EXPECT_TRUE(torch::equal(a->query_x, b->query_x));
  EXPECT_TRUE(torch::equal(a->support_y, torch::arange(5)));
  // Support and query of a class are different drawers.
  for (int c = 0; c < 5; ++c) EXPECT_FALSE(torch::equal(a->support_x[c], a->query_x[c]));
  EXPECT_GE(a->support_x.min().item<float>(), 0.0f);
  EXPECT_LE(a->support_x.max().item<float>(), 1.0f);

  // Rotations: training classes 4k..4k+3 are one character turned by 0..3
  // quarters counter-clockwise; equal seeds pick the same drawer.
  TaskSpec upright;
  upright.set_family(OMNIGLOT);
  upright.set_seed(5);
  upright.set_support_shots(1);
  upright.add_class_ids(8);
  TaskSpec turned = upright;
  turned.set_class_ids(0, 9);
  auto u = source->Materialize(upright);
  auto t = source->Materialize(turned);
  ASSERT_TRUE(u.ok() && t.ok());
  EXPECT_TRUE(torch::equal(torch::rot90(u->support_x[0], 1, {1, 2}), t->support_x[0]));
}

TEST(TaskSourceTest, FashionMnistSplitsClassesZeroToFourFromFiveToNine) {
  ExperimentConfig config = LoadNamedConfig("fashion_mnist_5w1s");
  auto source = SharedTaskSource(config);
  ASSERT_NE(source, nullptr);
  EXPECT_EQ(source->num_classes(false), 5);
  EXPECT_EQ(source->num_classes(true), 5);
  TaskSampler sampler(config, 5, 5);
  auto task = source->Materialize(sampler.TrainingItems(0)[0].tasks[0]);
  ASSERT_TRUE(task.ok()) << task.status();
  EXPECT_EQ(task->support_x.sizes(), (std::vector<int64_t>{50, 1, 28, 28}));
  EXPECT_GT(task->support_x.max().item<float>(), 0.5f);
}

TEST(TaskSourceTest, HostileSpecsAreRefused) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s");
  auto source = SharedTaskSource(config);
  ASSERT_NE(source, nullptr);
  TaskSpec spec;
  spec.set_family(OMNIGLOT);
  spec.set_support_shots(1);
  spec.add_class_ids(5000);
  EXPECT_EQ(source->Materialize(spec).status().code(), absl::StatusCode::kInvalidArgument);
  spec.set_class_ids(0, 3);
  spec.set_support_shots(25);
  EXPECT_EQ(source->Materialize(spec).status().code(), absl::StatusCode::kInvalidArgument);
  spec.set_support_shots(-1);
  EXPECT_EQ(source->Materialize(spec).status().code(), absl::StatusCode::kInvalidArgument);
  spec.set_family(SINE);
  EXPECT_EQ(source->Materialize(spec).status().code(), absl::StatusCode::kInvalidArgument);
}

// A spec from the network is checked before anything is allocated: each of
// these would otherwise throw from LibTorch, allocate without bound or
// silently build a wrong task. The error names the field and the value.
TEST(TaskSourceTest, HostileSpecsAreRefusedBeforeAllocatingNamingTheField) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s");
  auto source = SharedTaskSource(config);
  ASSERT_NE(source, nullptr);
  TaskSpec good;
  good.set_family(OMNIGLOT);
  good.set_seed(1);
  good.set_support_shots(10);
  for (int id : {0, 7, 14, 21, 28}) good.add_class_ids(id);
  ASSERT_TRUE(source->Materialize(good).ok());
  constexpr int kHuge = std::numeric_limits<int32_t>::max();

  auto refused = [&](const TaskSpec& spec, const std::string& field, const std::string& value) {
    const absl::Status status = source->Materialize(spec).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("task spec field " + field)) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(value)) << status;
  };
  TaskSpec spec = good;
  spec.set_support_shots(kHuge);  // 5 x 2^31 images: overflows, then a multi-terabyte tensor
  refused(spec, "support_shots", std::to_string(kHuge));
  spec = good;
  spec.set_query_shots(kHuge);  // support + query overflows int
  refused(spec, "support_shots", std::to_string(kHuge));
  spec = good;
  spec.set_query_shots(-3);
  refused(spec, "query_shots", "-3");
  spec = good;
  spec.set_support_shots(0);
  refused(spec, "support_shots", "got 0");
  spec = good;
  spec.set_class_ids(2, -1);
  refused(spec, "class_ids", "class id -1");
  spec = good;
  spec.set_class_ids(4, 4800);
  refused(spec, "class_ids", "class id 4800 outside the meta-training split of 4800");
  spec = good;
  spec.set_meta_test(true);  // 423 held-out classes
  spec.set_class_ids(4, 423);
  refused(spec, "class_ids", "class id 423 outside the meta-test split");
  spec = good;
  spec.set_class_ids(3, 7);  // one class under two labels
  refused(spec, "class_ids", "class id 7 named twice");
  spec = good;
  spec.clear_class_ids();
  for (int i = 0; i < 100000; ++i) spec.add_class_ids(i % 10);  // a long list of repeats
  refused(spec, "class_ids", "named twice");
  spec = good;
  spec.clear_class_ids();
  refused(spec, "class_ids", "names no classes");
  spec = good;
  spec.set_family(SINE);
  refused(spec, "family", "SINE");
  spec = good;
  spec.set_family(static_cast<TaskFamily>(77));  // not a family at all
  refused(spec, "family", "does not match");
  EXPECT_TRUE(source->Materialize(good).ok()) << "a refused spec leaves the source usable";

  auto sine = TaskSource::Create(LoadNamedConfig("sine").task());
  ASSERT_TRUE(sine.ok());
  TaskSpec points;
  points.set_family(SINE);
  points.set_support_shots(kHuge);
  EXPECT_THAT(std::string((*sine)->Materialize(points).status().message()),
              HasSubstr("task spec field support_shots: 2147483647 sine points"));
  points.set_support_shots(10);
  points.set_query_shots(kHuge);
  EXPECT_THAT(std::string((*sine)->Materialize(points).status().message()), HasSubstr("task spec field query_shots"));
  points.set_query_shots(0);
  points.add_class_ids(1);
  EXPECT_THAT(std::string((*sine)->Materialize(points).status().message()), HasSubstr("task spec field class_ids"));
}

}  // namespace
}  // namespace reptile
