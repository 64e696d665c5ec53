// The lease policy on a fake clock: no network, no threads, no sleeping.
#include "transport/lease_scheduler.h"

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace reptile {
namespace {

constexpr int kTrain = 0;
constexpr int kEvaluate = 1;

class LeaseSchedulerTest : public ::testing::Test {
 protected:
  absl::Time At(double seconds) { return absl::UnixEpoch() + absl::Seconds(seconds); }

  LeaseScheduler scheduler_{LeasePolicy()};
};

TEST_F(LeaseSchedulerTest, OneLeaseUntilAResultThenTwo) {
  scheduler_.AddWorker(1, "a", At(0));
  scheduler_.StartBatch(std::vector<int>(4, kTrain));
  auto first = scheduler_.Lease(1, At(0));
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->item, 0u);
  EXPECT_FALSE(scheduler_.Lease(1, At(0)).has_value()) << "an unproven worker holds one lease";
  ASSERT_TRUE(scheduler_.BeginUpload(1, {first->lease}).ok());
  EXPECT_TRUE(scheduler_.Accept({first->lease}, At(0.1)));
  auto second = scheduler_.Lease(1, At(0.1));
  auto third = scheduler_.Lease(1, At(0.1));
  ASSERT_TRUE(second.has_value() && third.has_value());
  EXPECT_EQ(second->item, 1u);
  EXPECT_EQ(third->item, 2u);
  EXPECT_FALSE(scheduler_.Lease(1, At(0.1)).has_value()) << "at most max_leases";
}

TEST_F(LeaseSchedulerTest, RefusalsAreCountedByReason) {
  scheduler_.AddWorker(1, "a", At(0));
  scheduler_.AddWorker(2, "b", At(0));
  scheduler_.StartBatch(std::vector<int>(3, kTrain));
  const std::vector<std::pair<RefusalReason, std::string>> refusals = {
      {RefusalReason::kWorkerError, "the worker failed: out of memory"},
      {RefusalReason::kUploadTooSlow, "upload too slow; cut off"}};
  uint64_t worker = 1;
  for (const auto& [reason, text] : refusals) {
    auto lease = scheduler_.Lease(worker, At(0));
    ASSERT_TRUE(lease.has_value());
    ASSERT_TRUE(scheduler_.BeginUpload(worker, {lease->lease}).ok());
    scheduler_.Refuse({lease->lease}, text, reason);
    worker = 3 - worker;
  }
  auto lease = scheduler_.Lease(worker, At(0));
  ASSERT_TRUE(lease.has_value());
  ASSERT_TRUE(scheduler_.BeginUpload(worker, {lease->lease}).ok());
  scheduler_.Refuse({lease->lease}, "delta has NaN at 7");  // the default reason
  const SchedulerCounters& counters = scheduler_.counters();
  EXPECT_EQ(counters.results_refused, 3);
  EXPECT_EQ(counters.results_refused_by_reason,
            (std::map<std::string, int64_t>{{"worker_error", 1}, {"upload_too_slow", 1}, {"invalid_result", 1}}));
  EXPECT_STREQ(RefusalReasonLabel(RefusalReason::kInvalidResult), "invalid_result");
}

TEST_F(LeaseSchedulerTest, SilentWorkerIsDroppedAndItsLeaseRedone) {
  scheduler_.AddWorker(1, "a", At(0));
  scheduler_.AddWorker(2, "b", At(0));
  scheduler_.StartBatch({kTrain});
  auto lease = scheduler_.Lease(1, At(0));
  ASSERT_TRUE(lease.has_value());
  ASSERT_TRUE(scheduler_.Touch(2, At(5)).ok());
  EXPECT_EQ(scheduler_.last_lost(), absl::InfinitePast());
  scheduler_.Tick(At(6.5));
  EXPECT_FALSE(scheduler_.has_worker(1));
  EXPECT_EQ(scheduler_.last_lost(), At(6.5)) << "when, so that a finishing coordinator waits for it";
  EXPECT_EQ(scheduler_.Touch(1, At(6.5)).code(), absl::StatusCode::kNotFound) << "a dropped worker joins again";
  auto redone = scheduler_.Lease(2, At(6.5));
  ASSERT_TRUE(redone.has_value());
  EXPECT_EQ(redone->item, 0u);
  EXPECT_EQ(scheduler_.counters().tasks_redone, 1);
}

TEST_F(LeaseSchedulerTest, WorkerRefusedThreeTimesInARowIsEvictedAndTheRunGoesOn) {
  scheduler_.AddWorker(1, "bad", At(0));
  scheduler_.AddWorker(2, "good", At(0));
  scheduler_.StartBatch(std::vector<int>(5, kTrain));
  for (int i = 0; i < 3; ++i) {
    auto lease = scheduler_.Lease(1, At(i));
    ASSERT_TRUE(lease.has_value());
    ASSERT_TRUE(scheduler_.BeginUpload(1, {lease->lease}).ok());
    scheduler_.Refuse({lease->lease}, "delta has NaN at 7");
  }
  EXPECT_FALSE(scheduler_.has_worker(1));
  EXPECT_EQ(scheduler_.Touch(1, At(3)).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(scheduler_.counters().workers_evicted, 1);
  EXPECT_EQ(scheduler_.counters().results_refused, 3);
  EXPECT_TRUE(scheduler_.failure().empty()) << "one bad worker never fails the batch";
  for (int done = 0; done < 5; ++done) {
    auto lease = scheduler_.Lease(2, At(4));
    ASSERT_TRUE(lease.has_value());
    ASSERT_TRUE(scheduler_.BeginUpload(2, {lease->lease}).ok());
    EXPECT_TRUE(scheduler_.Accept({lease->lease}, At(4)));
  }
  EXPECT_TRUE(scheduler_.batch_done());
}

TEST_F(LeaseSchedulerTest, AcceptedResultResetsTheRefusalCount) {
  scheduler_.AddWorker(1, "flaky", At(0));
  scheduler_.StartBatch(std::vector<int>(8, kTrain));
  for (int i = 0; i < 4; ++i) {
    auto bad = scheduler_.Lease(1, At(i));
    ASSERT_TRUE(bad.has_value());
    ASSERT_TRUE(scheduler_.BeginUpload(1, {bad->lease}).ok());
    scheduler_.Refuse({bad->lease}, "loss is nan");
    auto good = scheduler_.Lease(1, At(i));
    ASSERT_TRUE(good.has_value());
    ASSERT_TRUE(scheduler_.BeginUpload(1, {good->lease}).ok());
    scheduler_.Accept({good->lease}, At(i));
  }
  EXPECT_TRUE(scheduler_.has_worker(1));
}

TEST_F(LeaseSchedulerTest, TaskRefusedOnTwoWorkersFailsTheBatchNamingBoth) {
  scheduler_.AddWorker(1, "a", At(0));
  scheduler_.AddWorker(2, "b", At(0));
  // Both have shown they can do other tasks.
  scheduler_.StartBatch({kTrain, kTrain});
  for (uint64_t w : {1, 2}) {
    auto lease = scheduler_.Lease(w, At(0));
    ASSERT_TRUE(scheduler_.BeginUpload(w, {lease->lease}).ok());
    ASSERT_TRUE(scheduler_.Accept({lease->lease}, At(0)));
  }
  scheduler_.StartBatch({kTrain, kTrain});
  auto a = scheduler_.Lease(1, At(0));
  ASSERT_EQ(a->item, 0u);
  ASSERT_TRUE(scheduler_.BeginUpload(1, {a->lease}).ok());
  scheduler_.Refuse({a->lease}, "learner: spec does not fit");
  // The refused task goes to the other worker first.
  auto again = scheduler_.Lease(1, At(0));
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->item, 1u);
  auto b = scheduler_.Lease(2, At(0));
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->item, 0u);
  ASSERT_TRUE(scheduler_.BeginUpload(2, {b->lease}).ok());
  scheduler_.Refuse({b->lease}, "learner: spec does not fit");
  EXPECT_TRUE(absl::StrContains(scheduler_.failure(), "work item 0 failed on 2 different workers"))
      << scheduler_.failure();
  EXPECT_TRUE(absl::StrContains(scheduler_.failure(), "worker 1: learner")) << scheduler_.failure();
  EXPECT_TRUE(absl::StrContains(scheduler_.failure(), "worker 2: learner")) << scheduler_.failure();
}

TEST_F(LeaseSchedulerTest, WorkersThatFailEverythingNeverFailATaskHoweverMany) {
  for (uint64_t w = 1; w <= 4; ++w) scheduler_.AddWorker(w, "nan", At(0));
  scheduler_.StartBatch({kTrain});
  for (uint64_t w = 1; w <= 4; ++w) {
    auto lease = scheduler_.Lease(w, At(0));
    ASSERT_TRUE(lease.has_value()) << w;
    ASSERT_TRUE(scheduler_.BeginUpload(w, {lease->lease}).ok());
    scheduler_.Refuse({lease->lease}, "nan");
  }
  EXPECT_TRUE(scheduler_.failure().empty()) << scheduler_.failure();
}

TEST_F(LeaseSchedulerTest, LoneWorkerMayRetryATaskItWasRefusedOn) {
  scheduler_.AddWorker(1, "only", At(0));
  scheduler_.StartBatch({kTrain});
  auto lease = scheduler_.Lease(1, At(0));
  ASSERT_TRUE(scheduler_.BeginUpload(1, {lease->lease}).ok());
  scheduler_.Refuse({lease->lease}, "stream truncated");
  auto retry = scheduler_.Lease(1, At(0));
  ASSERT_TRUE(retry.has_value());
  EXPECT_EQ(retry->item, 0u);
}

TEST_F(LeaseSchedulerTest, UploadsAreOnePerLeaseAndDuplicatesAreRecognised) {
  scheduler_.AddWorker(1, "a", At(0));
  scheduler_.AddWorker(2, "b", At(0));
  scheduler_.StartBatch({kTrain});
  auto lease = scheduler_.Lease(1, At(0));
  ASSERT_TRUE(scheduler_.BeginUpload(1, {lease->lease}).ok());
  EXPECT_EQ(scheduler_.BeginUpload(1, {lease->lease}).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(scheduler_.BeginUpload(2, {lease->lease}).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(scheduler_.BeginUpload(1, {999}).status().code(), absl::StatusCode::kNotFound);
  scheduler_.Lost({lease->lease});  // cut off in transit: not the worker's fault
  EXPECT_EQ(scheduler_.counters().results_refused, 0);
  auto retry = scheduler_.Lease(1, At(0.1));
  ASSERT_TRUE(retry.has_value());
  ASSERT_TRUE(scheduler_.BeginUpload(1, {retry->lease}).ok());
  EXPECT_TRUE(scheduler_.Accept({retry->lease}, At(0.2)));
  EXPECT_EQ(scheduler_.BeginUpload(1, {retry->lease}).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(LeaseSchedulerTest, StragglerCopyGoesToAWorkerThatHasReturnedResults) {
  scheduler_.AddWorker(1, "slow", At(0));
  scheduler_.AddWorker(2, "new", At(0));
  scheduler_.AddWorker(3, "proven", At(0));
  scheduler_.StartBatch({kTrain, kTrain});
  auto slow = scheduler_.Lease(1, At(0));
  auto quick = scheduler_.Lease(3, At(0));
  ASSERT_TRUE(scheduler_.BeginUpload(3, {quick->lease}).ok());
  ASSERT_TRUE(scheduler_.Accept({quick->lease}, At(0.1)));  // typical: 0.1 s
  EXPECT_FALSE(scheduler_.Lease(2, At(0.5)).has_value()) << "too early for a copy";
  EXPECT_FALSE(scheduler_.Lease(2, At(1.5)).has_value()) << "copies go to proven workers";
  auto copy = scheduler_.Lease(3, At(1.5));
  ASSERT_TRUE(copy.has_value());
  EXPECT_EQ(copy->item, slow->item);
  ASSERT_TRUE(scheduler_.BeginUpload(3, {copy->lease}).ok());
  EXPECT_TRUE(scheduler_.Accept({copy->lease}, At(1.6)));
  EXPECT_TRUE(scheduler_.batch_done());
  EXPECT_EQ(scheduler_.BeginUpload(1, {slow->lease}).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(LeaseSchedulerTest, HoarderIsEvictedWithinSecondsOnceTaskTimesAreKnown) {
  scheduler_.AddWorker(1, "hoarder", At(0));
  scheduler_.AddWorker(2, "honest", At(0));
  scheduler_.StartBatch({kTrain, kTrain, kTrain});
  auto hoarded = scheduler_.Lease(1, At(0));
  for (int i = 0; i < 2; ++i) {
    auto lease = scheduler_.Lease(2, At(0.1 * i));
    ASSERT_TRUE(lease.has_value());
    ASSERT_TRUE(scheduler_.BeginUpload(2, {lease->lease}).ok());
    scheduler_.Accept({lease->lease}, At(0.1 * i + 0.1));
  }
  ASSERT_TRUE(scheduler_.Touch(1, At(2.5)).ok());
  ASSERT_TRUE(scheduler_.Touch(2, At(2.5)).ok());
  scheduler_.Tick(At(2.5));
  EXPECT_TRUE(scheduler_.has_worker(1)) << "within max(3 s, 10 x typical)";
  scheduler_.Tick(At(3.1));
  EXPECT_FALSE(scheduler_.has_worker(1));
  EXPECT_EQ(scheduler_.Touch(1, At(3.1)).code(), absl::StatusCode::kPermissionDenied);
  auto redone = scheduler_.Lease(2, At(3.1));
  ASSERT_TRUE(redone.has_value());
  EXPECT_EQ(redone->item, hoarded->item);
}

TEST_F(LeaseSchedulerTest, AWorkerCutOffMidTaskIsDroppedAsSilentNotEvicted) {
  scheduler_.AddWorker(1, "cut off", At(0));
  scheduler_.AddWorker(2, "honest", At(0));
  scheduler_.StartBatch({kTrain, kTrain});
  auto quick = scheduler_.Lease(2, At(0));
  ASSERT_TRUE(scheduler_.BeginUpload(2, {quick->lease}).ok());
  ASSERT_TRUE(scheduler_.Accept({quick->lease}, At(0.1)));
  ASSERT_TRUE(scheduler_.Lease(1, At(0.2)).has_value());
  // Its link goes down at 0.5 s: no more calls. Past the hoard patience it
  // is still only silent, and the worker_timeout rule drops it.
  ASSERT_TRUE(scheduler_.Touch(1, At(0.5)).ok());
  for (double t = 1; t <= 7; t += 0.5) {
    ASSERT_TRUE(scheduler_.Touch(2, At(t)).ok());
    scheduler_.Tick(At(t));
  }
  EXPECT_FALSE(scheduler_.has_worker(1));
  EXPECT_EQ(scheduler_.counters().workers_evicted, 0);
  EXPECT_EQ(scheduler_.Touch(1, At(7.5)).code(), absl::StatusCode::kNotFound) << "it may join again";
}

TEST_F(LeaseSchedulerTest, NobodyIsEvictedForTimeBeforeAnyTaskOfThatKindFinished) {
  scheduler_.AddWorker(1, "first", At(0));
  scheduler_.StartBatch({kEvaluate});
  auto lease = scheduler_.Lease(1, At(0));
  ASSERT_TRUE(scheduler_.Touch(1, At(100)).ok());
  scheduler_.Tick(At(100));
  EXPECT_TRUE(scheduler_.has_worker(1));
  ASSERT_TRUE(scheduler_.Touch(1, At(601)).ok());
  scheduler_.Tick(At(601));  // runtime.task_timeout_seconds is the bound
  EXPECT_TRUE(scheduler_.has_worker(1));
  EXPECT_EQ(scheduler_.counters().tasks_redone, 1);
}

TEST_F(LeaseSchedulerTest, ThreeHoardersAndOneHonestWorkerFinishBatchesQuickly) {
  for (uint64_t id = 1; id <= 3; ++id) scheduler_.AddWorker(id, "hoarder", At(0));
  scheduler_.AddWorker(9, "honest", At(0));
  double now = 0;
  for (int batch = 0; batch < 20; ++batch) {
    scheduler_.StartBatch(std::vector<int>(5, kTrain));
    while (!scheduler_.batch_done()) {
      for (uint64_t id = 1; id <= 3; ++id) {
        if (scheduler_.Touch(id, At(now)).ok()) scheduler_.Lease(id, At(now));
      }
      ASSERT_TRUE(scheduler_.Touch(9, At(now)).ok());
      auto lease = scheduler_.Lease(9, At(now));
      now += 0.05;  // the honest worker's task time, or its wait for work
      if (lease.has_value()) {
        ASSERT_TRUE(scheduler_.BeginUpload(9, {lease->lease}).ok());
        scheduler_.Accept({lease->lease}, At(now));
      }
      scheduler_.Tick(At(now));
      ASSERT_LT(now, 60) << "batch " << batch << " stalled";
    }
  }
  EXPECT_EQ(scheduler_.counters().workers_evicted, 3);
  EXPECT_LT(now, 3 + 20 * 5 * 0.05 + 2) << "hoarders cost a few seconds, once";
}

TEST_F(LeaseSchedulerTest, EvictedWorkersRefusalsNoLongerCountAgainstTasks) {
  scheduler_.AddWorker(1, "broken", At(0));
  scheduler_.AddWorker(2, "broken again", At(0));
  scheduler_.StartBatch(std::vector<int>(3, kTrain));
  for (int i = 0; i < 3; ++i) {
    auto lease = scheduler_.Lease(1, At(0));
    ASSERT_TRUE(scheduler_.BeginUpload(1, {lease->lease}).ok());
    scheduler_.Refuse({lease->lease}, "nan");
  }
  ASSERT_FALSE(scheduler_.has_worker(1));
  // The same broken machine, joined again, fails task 0 once more: one bad
  // machine is not two workers agreeing that the task is bad.
  auto lease = scheduler_.Lease(2, At(1));
  ASSERT_TRUE(lease.has_value());
  ASSERT_TRUE(scheduler_.BeginUpload(2, {lease->lease}).ok());
  scheduler_.Refuse({lease->lease}, "nan");
  EXPECT_TRUE(scheduler_.failure().empty()) << scheduler_.failure();
}

TEST_F(LeaseSchedulerTest, TheRefusalThatEvictsAWorkerDoesNotCountAgainstItsTask) {
  scheduler_.AddWorker(1, "honest", At(0));
  scheduler_.AddWorker(2, "broken", At(0));
  scheduler_.StartBatch(std::vector<int>(3, kTrain));
  auto honest = scheduler_.Lease(1, At(0));
  ASSERT_EQ(honest->item, 0u);
  for (size_t item : {1u, 2u}) {
    auto lease = scheduler_.Lease(2, At(0));
    ASSERT_EQ(lease->item, item);
    ASSERT_TRUE(scheduler_.BeginUpload(2, {lease->lease}).ok());
    scheduler_.Refuse({lease->lease}, "nan");
  }
  // A one-off failure of the honest worker on task 0, then the broken
  // worker's third refusal in a row, on task 0 too: it is evicted, and the
  // refusal that evicted it is not a second worker agreeing about the task.
  ASSERT_TRUE(scheduler_.BeginUpload(1, {honest->lease}).ok());
  scheduler_.Refuse({honest->lease}, "learner: out of memory");
  auto lease = scheduler_.Lease(2, At(0));
  ASSERT_EQ(lease->item, 0u);
  ASSERT_TRUE(scheduler_.BeginUpload(2, {lease->lease}).ok());
  scheduler_.Refuse({lease->lease}, "nan");
  EXPECT_FALSE(scheduler_.has_worker(2));
  EXPECT_TRUE(scheduler_.failure().empty()) << scheduler_.failure();
}

TEST_F(LeaseSchedulerTest, WorkerWhoseResultsAlwaysComeLateIsEvicted) {
  scheduler_.AddWorker(1, "late", At(0));
  scheduler_.AddWorker(2, "quick", At(0));
  for (int batch = 0; batch < 3; ++batch) {
    scheduler_.StartBatch({kTrain});
    const double start = 2.0 * batch;
    auto slow = scheduler_.Lease(1, At(start));
    ASSERT_TRUE(slow.has_value()) << batch;
    auto copy = scheduler_.Lease(2, At(start + 1.1));  // past min_copy_patience
    ASSERT_TRUE(copy.has_value()) << batch;
    ASSERT_TRUE(scheduler_.BeginUpload(2, {copy->lease}).ok());
    ASSERT_TRUE(scheduler_.Accept({copy->lease}, At(start + 1.15)));
    EXPECT_EQ(scheduler_.BeginUpload(1, {slow->lease}).status().code(), absl::StatusCode::kAlreadyExists);
    scheduler_.Duplicate(1, {slow->lease});
  }
  EXPECT_FALSE(scheduler_.has_worker(1));
}

}  // namespace
}  // namespace reptile
