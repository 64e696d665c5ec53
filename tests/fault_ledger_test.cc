// The fault policy shared by the gRPC lease scheduler and the shared-memory
// board: whom a refused result blames.
#include "transport/fault_ledger.h"

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace reptile {
namespace {

TEST(FaultLedgerTest, AWorkerRefusedThreeTimesInARowIsAtFaultUnlessAnAcceptedResultComesBetween) {
  FaultLedger ledger(/*max_task_attempts=*/2, /*evict_after_refusals=*/3);
  ledger.Join(7);
  ledger.StartBatch(4);
  EXPECT_EQ(ledger.Refused(7, {0}, "loss is nan"), "");
  EXPECT_EQ(ledger.Refused(7, {1}, "loss is nan"), "");
  ledger.Accepted(7);
  EXPECT_EQ(ledger.Refused(7, {2}, "a"), "");
  EXPECT_EQ(ledger.Refused(7, {3}, "b"), "");
  EXPECT_EQ(ledger.Refused(7, {}, "c"), "3 results refused in a row (a; b; c)");
}

TEST(FaultLedgerTest, ATaskIsAtFaultOnlyWhenDifferentProvenWorkersWereRefusedOnIt) {
  FaultLedger ledger(2, 3);
  for (uint64_t worker : {1, 2, 3}) ledger.Join(worker);
  ledger.StartBatch(3);
  ledger.Accepted(1);
  ledger.Accepted(2);
  ledger.Refused(3, {0}, "unproven");  // counts against worker 3 only
  ledger.Refused(1, {0}, "spec does not fit");
  ledger.Refused(1, {0}, "spec does not fit");  // the same worker twice is one
  EXPECT_EQ(ledger.TaskFault(0), "");
  EXPECT_TRUE(ledger.refused(0, 3) && ledger.refused(0, 1) && !ledger.refused(0, 2));
  ledger.Refused(2, {0}, "spec does not fit");
  EXPECT_EQ(ledger.TaskFault(0),
            "work item 0 failed on 2 different workers, so the task, not a worker, is at fault (worker 1: spec does "
            "not fit; worker 2: spec does not fit)");
  EXPECT_EQ(ledger.TaskFault(1), "");
  ledger.StartBatch(3);
  EXPECT_EQ(ledger.TaskFault(0), "") << "a new batch starts clean";
  EXPECT_TRUE(ledger.proven(1)) << "proven stays across batches";
}

TEST(FaultLedgerTest, AnEvictedWorkersRefusalsNoLongerBlameTasksButALeaversDo) {
  FaultLedger ledger(2, 3);
  for (uint64_t worker : {1, 2, 3}) {
    ledger.Join(worker);
    ledger.Accepted(worker);
  }
  ledger.StartBatch(2);
  ledger.Refused(1, {0}, "x");
  ledger.Refused(2, {0}, "y");
  ASSERT_NE(ledger.TaskFault(0), "");
  ledger.Forget(2);
  EXPECT_EQ(ledger.TaskFault(0), "") << "the evicted worker's word is taken back";
  EXPECT_FALSE(ledger.proven(2));
  ledger.Drop(1);
  ledger.Refused(3, {0}, "z");
  EXPECT_TRUE(absl::StrContains(ledger.TaskFault(0), "worker 1: x; worker 3: z")) << ledger.TaskFault(0);
  EXPECT_EQ(ledger.Refused(1, {1}, "gone"), "") << "a worker that left is no longer judged";
}

}  // namespace
}  // namespace reptile
