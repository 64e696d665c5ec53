#include <algorithm>
#include <atomic>
#include <random>
#include <thread>

#include "core/aggregator.h"
#include "gtest/gtest.h"

namespace reptile {
namespace {

constexpr CarriedMoments kNone{false, false};
constexpr CarriedMoments kVOnly{false, true};  // CARRY, adam_beta1 = 0
constexpr CarriedMoments kMAndV{true, true};   // CARRY, adam_beta1 != 0

std::vector<int> OneTaskEach(int items) { return std::vector<int>(items, 1); }

// The exact sums of `results`' tensors, standing for the item it is added
// as and the items `summed_with`.
TaskResult SumOf(const std::vector<TaskResult>& results, int meta_batch, CarriedMoments carried,
                 std::vector<int> summed_with = {}) {
  TaskResult sum;
  sum.sums.emplace(results[0].delta.numel(), meta_batch, carried);
  for (const TaskResult& r : results) EXPECT_TRUE(sum.sums->Add(r.delta, r.adam_m, r.adam_v).ok());
  sum.summed_with = std::move(summed_with);
  return sum;
}

std::vector<TaskResult> RandomResults(int slots, int64_t numel, CarriedMoments carried) {
  torch::manual_seed(1);
  std::vector<TaskResult> results(slots);
  for (TaskResult& r : results) {
    // Values of very different magnitudes make float sums order-sensitive.
    r.delta = torch::randn({numel}) * torch::pow(10.0, torch::randint(-6, 6, {numel}));
    if (carried.first) r.adam_m = torch::randn({numel});
    if (carried.second) r.adam_v = torch::rand({numel});
  }
  return results;
}

MetaState Apply(const std::vector<TaskResult>& results, const std::vector<int>& arrival, CarriedMoments carried) {
  const int64_t numel = results[0].delta.numel();
  Aggregator aggregator(numel, OneTaskEach(static_cast<int>(results.size())), carried);
  for (int slot : arrival) EXPECT_TRUE(aggregator.Add(slot, results[slot]).ok());
  MetaState state;
  state.parameters = torch::linspace(-1, 1, numel);
  if (carried.first) state.adam_m = torch::zeros({numel});
  if (carried.second) state.adam_v = torch::zeros({numel});
  EXPECT_TRUE(aggregator.Apply(0.7, 5, &state).ok());
  return state;
}

TEST(AggregatorTest, ArrivalOrderDoesNotChangeABit) {
  const auto results = RandomResults(9, 10000, kMAndV);
  std::vector<int> order(9);
  std::iota(order.begin(), order.end(), 0);
  const MetaState reference = Apply(results, order, kMAndV);
  std::mt19937 shuffle(5);
  for (int trial = 0; trial < 10; ++trial) {
    std::shuffle(order.begin(), order.end(), shuffle);
    const MetaState state = Apply(results, order, kMAndV);
    EXPECT_TRUE(torch::equal(state.parameters, reference.parameters));
    EXPECT_TRUE(torch::equal(state.adam_m, reference.adam_m));
    EXPECT_TRUE(torch::equal(state.adam_v, reference.adam_v));
    EXPECT_EQ(state.adam_step, 9 * 5);  // 5 inner steps for each of 9 tasks
  }
}

// With adam_beta1 = 0 only v is carried: the same parameters, v and step
// count as when m is carried too, and no m in the state.
TEST(AggregatorTest, WithoutAFirstMomentOnlyVIsAveraged) {
  std::vector<TaskResult> with_m = RandomResults(5, 1000, kMAndV);
  std::vector<TaskResult> without_m = with_m;
  for (TaskResult& r : without_m) r.adam_m = torch::Tensor();
  const std::vector<int> order = {3, 0, 4, 1, 2};
  const MetaState both = Apply(with_m, order, kMAndV);
  const MetaState v_only = Apply(without_m, order, kVOnly);
  EXPECT_FALSE(v_only.adam_m.defined());
  EXPECT_TRUE(both.adam_m.defined());
  EXPECT_TRUE(torch::equal(v_only.parameters, both.parameters));
  EXPECT_TRUE(torch::equal(v_only.adam_v, both.adam_v));
  EXPECT_EQ(v_only.adam_step, both.adam_step);
}

TEST(AggregatorTest, AppliesTheMeanDeltaScaledByTheStepSize) {
  Aggregator aggregator(3, OneTaskEach(2), kNone);
  TaskResult a, b;
  a.delta = torch::tensor({1.0f, 2.0f, 3.0f});
  b.delta = torch::tensor({3.0f, 2.0f, 1.0f});
  ASSERT_TRUE(aggregator.Add(1, b).ok());
  EXPECT_FALSE(aggregator.complete());
  ASSERT_TRUE(aggregator.Add(0, a).ok());
  MetaState state;
  state.parameters = torch::tensor({0.0f, 1.0f, 2.0f});
  ASSERT_TRUE(aggregator.Apply(0.5, 5, &state).ok());
  EXPECT_TRUE(torch::equal(state.parameters, torch::tensor({1.0f, 2.0f, 3.0f})));
}

TEST(AggregatorTest, MalformedAndDuplicateResultsAreRefused) {
  Aggregator aggregator(4, OneTaskEach(2), kNone);
  TaskResult good;
  good.delta = torch::ones({4});
  TaskResult wrong_size;
  wrong_size.delta = torch::ones({5});
  TaskResult wrong_dtype;
  wrong_dtype.delta = torch::ones({4}, torch::kFloat64);
  TaskResult nan;
  nan.delta = torch::tensor({1.0f, NAN, 0.0f, 0.0f});
  TaskResult inf;
  inf.delta = torch::tensor({1.0f, INFINITY, 0.0f, 0.0f});
  EXPECT_EQ(aggregator.Add(0, wrong_size).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(aggregator.Add(0, wrong_dtype).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(aggregator.Add(0, nan).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(aggregator.Add(0, inf).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(aggregator.Add(2, good).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(aggregator.Add(-1, good).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(aggregator.Add(0, good).ok());
  EXPECT_EQ(aggregator.Add(0, good).code(), absl::StatusCode::kAlreadyExists);
  MetaState state;
  state.parameters = torch::zeros({4});
  EXPECT_EQ(aggregator.Apply(1.0, 1, &state).code(), absl::StatusCode::kFailedPrecondition);
  Aggregator carry(4, OneTaskEach(1), kMAndV);
  EXPECT_EQ(carry.Add(0, good).code(), absl::StatusCode::kInvalidArgument);  // moments missing
  TaskResult v_only = good;
  v_only.adam_v = torch::ones({4});
  EXPECT_EQ(carry.Add(0, v_only).code(), absl::StatusCode::kInvalidArgument);  // m missing (beta1 != 0)
  Aggregator no_m(4, OneTaskEach(1), kVOnly);
  TaskResult with_m = v_only;
  with_m.adam_m = torch::ones({4});
  EXPECT_EQ(no_m.Add(0, with_m).code(), absl::StatusCode::kInvalidArgument);  // m not carried (beta1 = 0)
  EXPECT_EQ(no_m.Add(0, good).code(), absl::StatusCode::kInvalidArgument);    // v missing
  EXPECT_TRUE(no_m.Add(0, v_only).ok());
}

// MPI reductions and nodes hand over one result holding the sums over
// several items, and the other items' results with scalars only.
TEST(AggregatorTest, ASumOverItemsStandsForTheirOwnTensors) {
  TaskResult a, b, c, scalars_only;
  a.delta = torch::tensor({1.0f, 2.0f});
  b.delta = torch::tensor({3.0f, 6.0f});
  c.delta = torch::tensor({2.0f, 1.0f});
  const TaskResult sum_ab = SumOf({a, b}, 3, kNone, {1});
  scalars_only.tensors_elsewhere = true;
  auto apply = [](const std::vector<TaskResult>& results) {
    Aggregator aggregator(2, OneTaskEach(3), kNone);
    for (size_t item = 0; item < results.size(); ++item) EXPECT_TRUE(aggregator.Add(item, results[item]).ok());
    MetaState state;
    state.parameters = torch::zeros({2});
    EXPECT_TRUE(aggregator.Apply(1.5, 1, &state).ok());
    return state.parameters;
  };
  EXPECT_TRUE(torch::equal(apply({sum_ab, scalars_only, c}), apply({a, b, c})));
  EXPECT_TRUE(torch::equal(apply({a, b, c}), torch::tensor({3.0f, 4.5f})));
}

// Items of several tasks (a worker's exact sum), one sum over all items
// (MPI), and one task per item give the same bits.
TEST(AggregatorTest, AnyGroupingOfTheTasksGivesTheSameBits) {
  const int tasks = 7;
  const auto results = RandomResults(tasks, 5000, kVOnly);
  auto apply = [](Aggregator& aggregator, std::vector<TaskResult> item_results) {
    for (size_t item = 0; item < item_results.size(); ++item)
      EXPECT_TRUE(aggregator.Add(item, std::move(item_results[item])).ok()) << item;
    MetaState state;
    state.parameters = torch::linspace(-1, 1, 5000);
    state.adam_v = torch::zeros({5000});
    EXPECT_TRUE(aggregator.Apply(0.9, 5, &state).ok());
    return state;
  };
  Aggregator per_task(5000, OneTaskEach(tasks), kVOnly);
  const MetaState reference = apply(per_task, results);
  // Items of 3, 3 and 1 tasks.
  Aggregator grouped(5000, {3, 3, 1}, kVOnly);
  const MetaState by_items = apply(grouped, {SumOf({results[0], results[1], results[2]}, tasks, kVOnly),
                                             SumOf({results[3], results[4], results[5]}, tasks, kVOnly), results[6]});
  // One sum over all, added in another order.
  std::vector<TaskResult> reversed(results.rbegin(), results.rend());
  std::vector<TaskResult> one_sum(3);
  one_sum[0] = SumOf(reversed, tasks, kVOnly, {1, 2});
  one_sum[1].tensors_elsewhere = one_sum[2].tensors_elsewhere = true;
  Aggregator summed(5000, {3, 3, 1}, kVOnly);
  const MetaState by_sum = apply(summed, one_sum);
  for (const MetaState* state : {&by_items, &by_sum}) {
    EXPECT_TRUE(torch::equal(state->parameters, reference.parameters));
    EXPECT_TRUE(torch::equal(state->adam_v, reference.adam_v));
    EXPECT_EQ(state->adam_step, reference.adam_step);
  }
}

TEST(AggregatorTest, ResultsMustCoverTheTasksOfTheirItems) {
  const auto results = RandomResults(3, 10, kNone);
  Aggregator aggregator(10, {2, 1}, kNone);
  EXPECT_EQ(aggregator.Add(0, results[0]).code(), absl::StatusCode::kInvalidArgument)
      << "fp32 tensors of one task for an item of two";
  EXPECT_EQ(aggregator.Add(0, SumOf({results[0]}, 3, kNone)).code(), absl::StatusCode::kInvalidArgument)
      << "a sum of one task for an item of two";
  EXPECT_EQ(aggregator.Add(0, SumOf({results[0], results[1]}, 4, kNone)).code(),
            absl::StatusCode::kInvalidArgument)
      << "a sum made for another meta-batch";
  EXPECT_TRUE(aggregator.Add(0, SumOf({results[0], results[1]}, 3, kNone)).ok());
  EXPECT_TRUE(aggregator.Add(1, results[2]).ok());
  EXPECT_TRUE(aggregator.complete());
}

TEST(AggregatorTest, SumsThatLeaveSlotsUncoveredOrOverlapAreRefused) {
  TaskResult one, scalars_only;
  one.delta = torch::ones({2});
  const TaskResult sum_of_two = SumOf({one, one}, 2, kNone, {1});
  const TaskResult sum_too_long = SumOf({one, one}, 2, kNone, {1, 2});
  scalars_only.tensors_elsewhere = true;
  MetaState state;
  state.parameters = torch::zeros({2});
  Aggregator too_long(2, OneTaskEach(2), kNone);
  EXPECT_EQ(too_long.Add(0, sum_too_long).code(), absl::StatusCode::kInvalidArgument);
  Aggregator uncovered(2, OneTaskEach(2), kNone);
  ASSERT_TRUE(uncovered.Add(0, scalars_only).ok());
  ASSERT_TRUE(uncovered.Add(1, one).ok());
  EXPECT_EQ(uncovered.Apply(1.0, 1, &state).code(), absl::StatusCode::kInvalidArgument);
  Aggregator overlap(2, OneTaskEach(2), kNone);
  ASSERT_TRUE(overlap.Add(0, sum_of_two).ok());
  EXPECT_EQ(overlap.Add(1, one).code(), absl::StatusCode::kInvalidArgument) << "a third task in a batch of two";
  ASSERT_TRUE(overlap.Add(1, scalars_only).ok());
  EXPECT_TRUE(overlap.Apply(1.0, 1, &state).ok());
  EXPECT_TRUE(torch::equal(state.parameters, torch::ones({2})));
  state.parameters = torch::zeros({2});
  EXPECT_TRUE(torch::equal(state.parameters, torch::zeros({2})));
}

// A node's sum covers whichever items its learners were leased, in any
// order, beside items that come with their own tensors: the same bits as
// one task per item, whatever arrives first.
TEST(AggregatorTest, NodeSumsOverScatteredItemsGiveTheSameBitsInAnyArrivalOrder) {
  const auto results = RandomResults(6, 3000, kMAndV);
  std::vector<int> order(6);
  std::iota(order.begin(), order.end(), 0);
  const MetaState reference = Apply(results, order, kMAndV);
  // Node A ran items 4, 1 and 3; node B items 0 and 5; item 2 came alone.
  std::vector<TaskResult> arrived(6);
  arrived[4] = SumOf({results[4], results[1], results[3]}, 6, kMAndV, {1, 3});
  arrived[0] = SumOf({results[5], results[0]}, 6, kMAndV, {5});
  arrived[2] = results[2];
  for (int item : {1, 3, 5}) arrived[item].tensors_elsewhere = true;
  std::mt19937 shuffle(11);
  for (int trial = 0; trial < 6; ++trial) {
    std::shuffle(order.begin(), order.end(), shuffle);
    Aggregator aggregator(3000, OneTaskEach(6), kMAndV);
    for (int item : order) ASSERT_TRUE(aggregator.Add(item, arrived[item]).ok()) << item;
    MetaState state;
    state.parameters = torch::linspace(-1, 1, 3000);
    state.adam_m = torch::zeros({3000});
    state.adam_v = torch::zeros({3000});
    ASSERT_TRUE(aggregator.Apply(0.7, 5, &state).ok());
    EXPECT_TRUE(torch::equal(state.parameters, reference.parameters));
    EXPECT_TRUE(torch::equal(state.adam_m, reference.adam_m));
    EXPECT_TRUE(torch::equal(state.adam_v, reference.adam_v));
  }
}

TEST(AggregatorTest, ASumOverAnItemAlreadyInOrNamedTwiceIsRefusedAndAddsNothing) {
  const auto results = RandomResults(3, 10, kNone);
  Aggregator aggregator(10, OneTaskEach(3), kNone);
  ASSERT_TRUE(aggregator.Add(2, results[2]).ok());
  EXPECT_EQ(aggregator.Add(0, SumOf({results[0], results[2]}, 3, kNone, {2})).code(),
            absl::StatusCode::kInvalidArgument)
      << "item 2's tensors are in already";
  EXPECT_EQ(aggregator.Add(0, SumOf({results[0], results[1]}, 3, kNone, {0})).code(),
            absl::StatusCode::kInvalidArgument)
      << "a sum that names its own item again";
  EXPECT_EQ(aggregator.Add(0, SumOf({results[0], results[1]}, 3, kNone, {1, 1})).code(),
            absl::StatusCode::kInvalidArgument)
      << "an item named twice";
  EXPECT_EQ(aggregator.Add(0, SumOf({results[0], results[1]}, 3, kNone, {3})).code(),
            absl::StatusCode::kInvalidArgument)
      << "an item outside the batch";
  TaskResult lying = results[1];
  lying.tensors_elsewhere = true;
  EXPECT_EQ(aggregator.Add(1, lying).code(), absl::StatusCode::kInvalidArgument)
      << "tensors in a result that says they are elsewhere";
  // Nothing refused was added: the honest sum still fits.
  ASSERT_TRUE(aggregator.Add(0, SumOf({results[0], results[1]}, 3, kNone, {1})).ok());
  TaskResult scalars_only;
  scalars_only.tensors_elsewhere = true;
  ASSERT_TRUE(aggregator.Add(1, scalars_only).ok());
  MetaState state;
  state.parameters = torch::zeros({10});
  ASSERT_TRUE(aggregator.Apply(1.0, 1, &state).ok());
  EXPECT_TRUE(torch::allclose(state.parameters, (results[0].delta + results[1].delta + results[2].delta) / 3));
}

// A result's sums as a node sends them: in the compact form, checked.
TaskResult CompactOf(TaskResult sum) {
  auto compact = [&sum](const ExactSum& exact) {
    absl::StatusOr<CompactSum> checked =
        CompactSum::Check(exact.EncodeCompact(), exact.numel(), exact.terms(), exact.max_terms());
    EXPECT_TRUE(checked.ok()) << checked.status();
    return *std::move(checked);
  };
  CompactTensorSums sums{compact(sum.sums->delta), std::nullopt, std::nullopt};
  if (sum.sums->adam_m) sums.adam_m = compact(*sum.sums->adam_m);
  if (sum.sums->adam_v) sums.adam_v = compact(*sum.sums->adam_v);
  sum.sums.reset();
  sum.compact_sums = std::move(sums);
  return sum;
}

// Results added from 4 threads at once, into shards of 64 elements (79 of
// them), in every form (fp32 tensors, sums, compact sums, scalars of items
// summed elsewhere), give the bits of adding them one at a time.
TEST(AggregatorTest, ResultsAddedFromSeveralThreadsAtOnceGiveTheSameBits) {
  const int tasks = 24;
  const int64_t numel = 5000;
  const auto results = RandomResults(tasks, numel, kMAndV);
  // Items 0-11 one task each; 12-17 summed by item 12; 18-23 by item 18,
  // compact.
  std::vector<TaskResult> items(results.begin(), results.begin() + 12);
  items.push_back(SumOf({results.begin() + 12, results.begin() + 18}, tasks, kMAndV, {13, 14, 15, 16, 17}));
  for (int i = 13; i < 18; ++i) items.emplace_back().tensors_elsewhere = true;
  items.push_back(
      CompactOf(SumOf({results.begin() + 18, results.end()}, tasks, kMAndV, {19, 20, 21, 22, 23})));
  for (int i = 19; i < 24; ++i) items.emplace_back().tensors_elsewhere = true;
  auto initial = [numel] {
    MetaState state;
    state.parameters = torch::linspace(-1, 1, numel);
    state.adam_m = torch::zeros({numel});
    state.adam_v = torch::zeros({numel});
    return state;
  };
  const MetaState reference = Apply(results, [] {
    std::vector<int> order(24);
    std::iota(order.begin(), order.end(), 0);
    return order;
  }(), kMAndV);
  for (int trial = 0; trial < 20; ++trial) {
    Aggregator aggregator(numel, OneTaskEach(tasks), kMAndV, 64);
    ASSERT_EQ(aggregator.num_shards(), 79);
    std::atomic<int> next{0}, refused{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&] {
        for (int item = next++; item < tasks; item = next++)
          if (!aggregator.Add(item, items[item]).ok()) ++refused;
      });
    for (std::thread& thread : threads) thread.join();
    ASSERT_EQ(refused.load(), 0);
    MetaState state = initial();
    ASSERT_TRUE(aggregator.Apply(0.7, 5, &state).ok());
    ASSERT_TRUE(torch::equal(state.parameters, reference.parameters)) << "trial " << trial;
    ASSERT_TRUE(torch::equal(state.adam_m, reference.adam_m)) << "trial " << trial;
    ASSERT_TRUE(torch::equal(state.adam_v, reference.adam_v)) << "trial " << trial;
  }
}

// The same item from 8 threads at once (a result and its duplicates racing
// in): one is added, the others are told it already has one.
TEST(AggregatorTest, OneOfSeveralResultsForAnItemArrivingAtOnceIsAdded) {
  const int64_t numel = 20000;
  const auto results = RandomResults(2, numel, kNone);
  for (int trial = 0; trial < 20; ++trial) {
    Aggregator aggregator(numel, OneTaskEach(2), kNone, 64);
    std::atomic<int> added{0}, already{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
      threads.emplace_back([&] {
        const absl::Status status = aggregator.Add(0, results[0]);
        if (status.ok()) ++added;
        if (absl::IsAlreadyExists(status)) ++already;
      });
    for (std::thread& thread : threads) thread.join();
    ASSERT_EQ(added.load(), 1);
    ASSERT_EQ(already.load(), 7);
    ASSERT_TRUE(aggregator.Add(1, results[1]).ok());
    MetaState state;
    state.parameters = torch::zeros({numel});
    ASSERT_TRUE(aggregator.Apply(1.0, 1, &state).ok());
    ASSERT_TRUE(torch::allclose(state.parameters, (results[0].delta + results[1].delta) / 2)) << "trial " << trial;
  }
}

}  // namespace
}  // namespace reptile
