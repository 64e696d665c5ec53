// Whom a refused result blames: the one fault policy of every runtime that
// has workers (gRPC's lease scheduler and the shared-memory board).
//  - A worker refused `evict_after_refusals` times in a row is at fault and
//    is to be evicted; once it is, its refusals no longer count against any
//    task.
//  - A task refused by `max_task_attempts` different proven workers (ones
//    that have had a result accepted) is at fault and fails its batch.
// So workers that fail everything cannot stop a run however many they are,
// and one bad task cannot evict the good workers one by one without being
// named. No clock, no threads; not thread-safe (the caller locks).
#ifndef REPTILE_TRANSPORT_FAULT_LEDGER_H_
#define REPTILE_TRANSPORT_FAULT_LEDGER_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/types/span.h"

namespace reptile {

class FaultLedger {
 public:
  FaultLedger(int max_task_attempts, int evict_after_refusals)
      : max_task_attempts_(max_task_attempts), evict_after_refusals_(evict_after_refusals) {}

  // Worker membership: refusals count against a worker only while it is a
  // member. Drop keeps what its refusals said of the batch's tasks (it left,
  // or went silent); Forget, for an evicted worker, takes that back too.
  void Join(uint64_t worker);
  void Drop(uint64_t worker);
  void Forget(uint64_t worker);

  // A new batch of `items` items; what was said of the last one's tasks goes.
  void StartBatch(size_t items);

  // The worker's result was accepted: it is proven, and its run of
  // refusals ends.
  void Accepted(uint64_t worker);
  // The worker's result was refused for `why`: one refusal of the worker,
  // however many batch items it answered for; `items` are those of them
  // still open. Returns why the worker is now at fault (the caller evicts
  // it, then calls Forget), or empty.
  std::string Refused(uint64_t worker, absl::Span<const size_t> items, const std::string& why);
  // Why item's task is at fault, or empty; judge it after any eviction
  // that Refused asked for.
  std::string TaskFault(size_t item) const;

  bool proven(uint64_t worker) const;
  // Whether `worker` was refused on `item` in this batch (it goes to the
  // others first).
  bool refused(size_t item, uint64_t worker) const;

 private:
  struct WorkerFaults {
    bool proven = false;
    int refusals_in_a_row = 0;
    std::vector<std::string> recent_refusals;  // for the eviction line
  };
  struct ItemFaults {
    std::set<uint64_t> refused_by;
    std::map<uint64_t, std::string> faulted_by;  // proven workers -> reason
  };

  const int max_task_attempts_, evict_after_refusals_;
  std::map<uint64_t, WorkerFaults> workers_;
  std::vector<ItemFaults> items_;
};

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_FAULT_LEDGER_H_
