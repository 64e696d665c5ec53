// Who runs which work item of a batch, and what happens to workers that fail,
// stall or hoard: the remote runtimes' lease, straggler and eviction policy,
// apart from any network code. It has no clock and no threads of its own:
// every call that depends on time takes `now`, so tests drive it with a fake
// clock. Not thread-safe; the transport serializes calls under its lock.
//
// The policy (docs/security.md says it to users):
//  - A worker holds at most one lease per learner until it has returned an
//    accepted result, then at most `max_leases` per learner (prefetch), with
//    one upload per lease. A node's upload may answer for several of its
//    leases (one sum): it is accepted, refused or lost as a whole, and a
//    refusal counts once against the node and once against each task.
//  - A refused result (bad sizes, NaN/Inf, truncated stream, a learner error
//    the worker reports) is a failed attempt, judged by the FaultLedger
//    (fault_ledger.h) that the shared-memory runtime uses too: a task
//    refused by `max_task_attempts` different proven workers fails the
//    batch, naming the task, the workers and their reasons; a worker refused
//    `evict_after_refusals` times in a row is evicted. A refused task goes
//    to the other workers first.
//  - A lease running longer than `copy_patience` (relative to the typical
//    time of its kind of work) is also handed to an idle worker, preferring
//    workers that have returned results; the first result counts.
//  - A worker that has owed a result for longer than `hoard_patience` (from
//    the lease it took while owing none until it returns an accepted one,
//    across batches) while it keeps calling is evicted: a hoarder, or hung
//    (one that stopped calling, behind a broken link, is dropped as silent
//    instead and may join again); so is one whose last
//    `evict_after_refusals` results all came after their task was done
//    elsewhere (too slow to help, or gaming the copies). One silent for
//    `worker_timeout` is dropped and may join again. Evicted workers' later
//    calls are refused.
#ifndef REPTILE_TRANSPORT_LEASE_SCHEDULER_H_
#define REPTILE_TRANSPORT_LEASE_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "transport/fault_ledger.h"

namespace reptile {

struct LeasePolicy {
  absl::Duration worker_timeout = absl::Seconds(6);  // silent this long: dropped
  absl::Duration heartbeat = absl::Seconds(1);       // how often live workers call
  absl::Duration task_timeout = absl::Seconds(600);  // no lease lives longer
  int max_task_attempts = 2;     // distinct workers refused on one task before it fails the batch
  int evict_after_refusals = 3;  // refusals in a row that evict a worker
  int max_leases = 2;            // per worker that has returned a result
  // Straggler copy after max(min_copy_patience, copy_factor * typical time).
  absl::Duration min_copy_patience = absl::Seconds(1);
  double copy_factor = 4;
  // Eviction after max(min_hoard_patience, hoard_factor * typical time),
  // once the typical time of that kind of work is known.
  absl::Duration min_hoard_patience = absl::Seconds(3);
  double hoard_factor = 10;
};

// Why a result was refused, as a metrics label: a few fixed values, never
// the free text of the refusal.
enum class RefusalReason {
  kInvalidResult,   // bad sizes, NaN/Inf, a truncated or malformed stream
  kWorkerError,     // the worker reported that its learner failed
  kUploadTooSlow,   // the upload was cut off for being too slow
};
// "invalid_result", "worker_error", "upload_too_slow".
const char* RefusalReasonLabel(RefusalReason reason);

// Counters for the progress line and metrics; they only grow.
struct SchedulerCounters {
  int64_t tasks_redone = 0;     // leases lost, refused, timed out or copied
  int64_t results_refused = 0;  // refused results, all reasons
  std::map<std::string, int64_t> results_refused_by_reason;  // by RefusalReasonLabel
  int64_t workers_evicted = 0;
};

class LeaseScheduler {
 public:
  explicit LeaseScheduler(LeasePolicy policy)
      : policy_(policy), ledger_(policy.max_task_attempts, policy.evict_after_refusals) {}

  // Worker membership. `id` is chosen by the caller and must be new.
  // `learners`: how many items the worker runs at once (a node's learner
  // threads); its share of leases is that many times the policy's.
  void AddWorker(uint64_t id, const std::string& name, absl::Time now, int learners = 1);
  // Marks the worker alive. NotFound if unknown (never joined, dropped, or
  // of another coordinator: join again); PermissionDenied if evicted.
  absl::Status Touch(uint64_t id, absl::Time now);
  // The worker left (or its connection is gone); its leases are redone.
  void RemoveWorker(uint64_t id, const std::string& why);
  int num_workers() const { return static_cast<int>(workers_.size()); }
  // Their learners, all told.
  int num_learners() const;
  // When a worker was last dropped for silence (InfinitePast: never): it may
  // be in an outage that is about to pass.
  absl::Time last_lost() const { return last_lost_; }
  bool has_worker(uint64_t id) const { return workers_.count(id) > 0; }

  // A batch of `items` work items; kind_of(i) tells evaluation from training
  // work, whose typical times differ. Ends any batch in progress.
  void StartBatch(std::vector<int> kinds);
  void EndBatch();
  bool in_batch() const { return in_batch_; }
  bool batch_done() const { return in_batch_ && remaining_ == 0; }
  // Why the batch cannot complete (a task at fault), or empty.
  const std::string& failure() const { return failure_; }

  struct Grant {
    uint64_t lease = 0;
    size_t item = 0;
  };
  // The next item for `worker`: a pending one, or a straggler's copy; none
  // if it holds its share of leases or there is nothing to do.
  std::optional<Grant> Lease(uint64_t worker, absl::Time now);
  // Up to one item per learner of `worker`, as Lease() gives them, all of
  // the first one's kind. `finished`: leases of the worker it says it has
  // finished and not yet uploaded (a node summing over several replies),
  // which do not count against its share. Nothing can check that claim: a
  // worker that lies gets one item per learner a call, and is evicted as a
  // hoarder once it has owed a result for the hoard patience.
  std::vector<Grant> LeaseForLearners(uint64_t worker, absl::Time now, int finished = 0);
  // True while the batch has items nobody holds (workers asking should wait
  // only when false).
  bool has_pending() const { return in_batch_ && !pending_.empty(); }

  // An upload answers for one or more of a worker's leases at once (a
  // node's learners send one sum), all or none of them.

  // The items of `leases` if `worker` may upload their result now; marks
  // the upload open. NotFound: an unknown lease; PermissionDenied: another
  // worker's; AlreadyExists: an item is done (a duplicate);
  // ResourceExhausted: an upload for a lease is already open;
  // InvalidArgument: none, or a lease named twice.
  absl::StatusOr<std::vector<size_t>> BeginUpload(uint64_t worker, absl::Span<const uint64_t> leases);
  // The items of `leases` while the batch is on and none of them is done
  // yet (their results may still be taken); FailedPrecondition otherwise.
  absl::StatusOr<std::vector<size_t>> OpenItems(absl::Span<const uint64_t> leases) const;
  // Closes the upload of `leases` with its result accepted. Returns how many
  // of their items this result completes (0: a duplicate; use it only when
  // all).
  int Accept(absl::Span<const uint64_t> leases, absl::Time now);
  // Closes the upload of `leases` with its result refused for `refusal`: one
  // refusal of the worker, a failed attempt at each of their tasks, which
  // are redone. `reason` only labels the refusal in the counters.
  void Refuse(absl::Span<const uint64_t> leases, const std::string& refusal,
              RefusalReason reason = RefusalReason::kInvalidResult);
  // `worker` delivered a result for `leases` after one of their tasks was
  // done; the others are redone without blame.
  void Duplicate(uint64_t worker, absl::Span<const uint64_t> leases);
  // Closes an upload cut off in transit; it counts against nobody.
  void Lost(absl::Span<const uint64_t> leases);

  // Timeouts: drops silent workers, redoes expired leases, copies
  // stragglers' work on demand (in Lease), evicts hoarders.
  void Tick(absl::Time now);

  const SchedulerCounters& counters() const { return counters_; }
  int active_leases() const { return active_leases_; }
  // Log lines of what happened since the last call (joins, losses,
  // refusals, evictions), for the caller to write outside its lock.
  std::vector<std::string> TakeEvents();

 private:
  struct WorkerRecord {
    std::string name;
    absl::Time last_seen;
    int learners = 1;
    int late_in_a_row = 0;           // results that came after their task was done
    int leases = 0;                  // active leases held
    // Since when it has owed a result: set by a lease taken while owing
    // none, moved on by each accepted result, cleared when an answer
    // (accepted, refused or cut off) leaves it holding no lease.
    std::optional<absl::Time> owes_since;
  };
  struct LeaseRecord {
    size_t item = 0;
    uint64_t worker = 0;
    absl::Time granted;
    bool active = true;     // false once redone elsewhere or closed
    bool uploading = false;
  };
  struct ItemRecord {
    int kind = 0;
    bool done = false;
    bool copied = false;                 // a straggler copy was handed out
  };

  void Event(std::string line) { events_.push_back(std::move(line)); }
  // Lease()'s work, restricted to items of `kind` when given, with
  // `finished` of the worker's leases not counted against its share.
  std::optional<Grant> NextGrant(uint64_t worker, absl::Time now, std::optional<int> kind, int finished = 0);
  void Deactivate(LeaseRecord& lease);
  // Ends an active lease early and queues its item again unless done.
  void Redo(uint64_t lease_id, const std::string& why);
  void Evict(uint64_t worker, const std::string& why);
  absl::Duration Typical(int kind) const;
  bool TypicalKnown(int kind) const;
  // How long `worker` may owe a result before it is evicted; none while the
  // typical time of the work it holds is unknown.
  std::optional<absl::Duration> HoardPatience(uint64_t worker) const;
  std::optional<size_t> StragglerFor(uint64_t worker, absl::Time now);

  LeasePolicy policy_;
  FaultLedger ledger_;
  std::map<uint64_t, WorkerRecord> workers_;
  std::set<uint64_t> evicted_;
  absl::Time last_lost_ = absl::InfinitePast();
  std::map<uint64_t, LeaseRecord> leases_;
  uint64_t next_lease_ = 1;
  int active_leases_ = 0;
  bool in_batch_ = false;
  std::vector<ItemRecord> items_;
  std::deque<size_t> pending_;
  size_t remaining_ = 0;
  std::string failure_;
  std::map<int, absl::Duration> typical_;  // moving average per kind, lease to result
  SchedulerCounters counters_;
  std::vector<std::string> events_;
};

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_LEASE_SCHEDULER_H_
