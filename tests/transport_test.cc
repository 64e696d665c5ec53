#include "gtest/gtest.h"
#include "test_support.h"
#include "transport/local/local_transport.h"

namespace reptile {
namespace {

MetaState InitialState(const ExperimentConfig& config) {
  auto model = MakeModel(config, config.seed());
  FlatParameters flat(**model);
  return MetaState{flat.values().clone(), {}, {}, 0};
}

std::vector<WorkItem> SineItems(int n) {
  std::vector<WorkItem> items(n, WorkItem{WorkKind::kTrain, {TaskSpec()}});
  for (int i = 0; i < n; ++i) {
    items[i].tasks[0].set_family(SINE);
    items[i].tasks[0].set_seed(100 + i);
    items[i].tasks[0].set_support_shots(50);
  }
  return items;
}

TEST(LocalTransportTest, ResultsComeBackInItemOrderWhateverTheWorkerCount) {
  ExperimentConfig config = testing::LoadNamedConfig("sine");
  auto tasks = TaskSource::Create(config.task());
  const MetaState state = InitialState(config);
  auto one = LocalTransport::Create(config, *tasks, 1);
  auto three = LocalTransport::Create(config, *tasks, 3);
  ASSERT_TRUE(one.ok() && three.ok());
  EXPECT_EQ((*three)->num_workers(), 3);
  auto a = (*one)->Run(state, SineItems(7));
  auto b = (*three)->Run(state, SineItems(7));
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->size(), 7u);
  for (size_t i = 0; i < a->size(); ++i) EXPECT_TRUE(torch::equal((*a)[i].delta, (*b)[i].delta)) << i;
  EXPECT_FALSE(torch::equal((*a)[0].delta, (*a)[1].delta));
}

TEST(LocalTransportTest, AFailedItemIsNamedAndTheTransportKeepsWorking) {
  ExperimentConfig config = testing::LoadNamedConfig("sine");
  auto tasks = TaskSource::Create(config.task());
  auto transport = LocalTransport::Create(config, *tasks, 2);
  const MetaState state = InitialState(config);
  std::vector<WorkItem> items = SineItems(4);
  items[2].tasks[0].set_family(OMNIGLOT);  // does not fit a sine source
  auto failed = (*transport)->Run(state, items);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(failed.status().message().find("work item 2"), std::string::npos) << failed.status();
  auto next = (*transport)->Run(state, SineItems(4));
  EXPECT_TRUE(next.ok()) << next.status();
  EXPECT_TRUE((*transport)->Run(state, {}).ok());
  EXPECT_EQ(LocalTransport::Create(config, *tasks, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace reptile
