#include <optional>

#include "gtest/gtest.h"
#include "test_support.h"
#include "transport/local/local_transport.h"

namespace reptile {
namespace {

using testing::SineItems;

MetaState InitialState(const ExperimentConfig& config) {
  auto model = MakeModel(config, config.seed());
  FlatParameters flat(**model);
  return MetaState{flat.values().clone(), {}, {}, 0};
}

// Runs the items and collects each result by item; fails if one is handed
// over twice.
absl::StatusOr<std::vector<TaskResult>> RunAll(Transport& transport, const MetaState& state,
                                               const std::vector<WorkItem>& items) {
  std::vector<std::optional<TaskResult>> taken(items.size());
  absl::Status status = transport.Run(state, items, [&](size_t item, TaskResult result) -> absl::Status {
    if (item >= taken.size() || taken[item].has_value()) return absl::InternalError("handed over twice");
    taken[item] = std::move(result);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  std::vector<TaskResult> results;
  for (auto& result : taken) {
    if (!result.has_value()) return absl::InternalError("an item's result was never handed over");
    results.push_back(*std::move(result));
  }
  return results;
}

TEST(LocalTransportTest, EachItemsResultIsHandedOverOnceWhateverTheWorkerCount) {
  ExperimentConfig config = testing::LoadNamedConfig("sine");
  auto tasks = TaskSource::Create(config.task());
  const MetaState state = InitialState(config);
  auto one = LocalTransport::Create(config, *tasks, 1);
  auto three = LocalTransport::Create(config, *tasks, 3);
  ASSERT_TRUE(one.ok() && three.ok());
  EXPECT_EQ((*three)->num_workers(), 3);
  auto a = RunAll(**one, state, SineItems(7));
  auto b = RunAll(**three, state, SineItems(7));
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
  auto failed = RunAll(**transport, state, items);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(failed.status().message().find("work item 2"), std::string::npos) << failed.status();
  auto next = RunAll(**transport, state, SineItems(4));
  EXPECT_TRUE(next.ok()) << next.status();
  EXPECT_TRUE(RunAll(**transport, state, {}).ok());
  // A result the round engine refuses fails the batch the same way.
  const absl::Status refused = (*transport)->Run(state, SineItems(4), [](size_t item, TaskResult) {
    return item == 3 ? absl::InvalidArgumentError("out of range") : absl::OkStatus();
  });
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("work item 3: out of range"), std::string::npos) << refused;
  EXPECT_TRUE(RunAll(**transport, state, SineItems(4)).ok());
  EXPECT_EQ(LocalTransport::Create(config, *tasks, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace reptile
