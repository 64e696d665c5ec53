// Runs work items on worker processes of this machine coordinated through
// shared memory (shared_board.h), as cheaply as threads are: a worker claims
// items with an atomic operation, computes, writes its result beside the
// coordinator and wakes it with one futex call; the coordinator wakes the
// workers once per batch. No call, socket or server thread is on the path.
// A worker that dies has its items run again by the others (or by the one
// started in its place). One whose heartbeat stops for
// runtime.worker_timeout_seconds (stopped, or stuck), or that holds an item
// for runtime.task_timeout_seconds, is evicted: its items are run again,
// and it is killed if it is one of this process's own children (the only
// processes ever signalled, through their pidfds). Refused results are
// judged by the policy of every runtime with workers (fault_ledger.h): a
// worker refused three times in a row is evicted likewise, a refused item
// is left to the other workers while there are any, and an item refused by
// runtime.max_task_attempts different proven workers fails the batch. The
// coordinator trusts nothing in the mapping: sizes and counts are its own,
// and the words it owns (stop, batch) are put back if a worker changes them.
#ifndef REPTILE_TRANSPORT_SHARED_MEMORY_SHARED_MEMORY_TRANSPORT_H_
#define REPTILE_TRANSPORT_SHARED_MEMORY_SHARED_MEMORY_TRANSPORT_H_

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "absl/time/time.h"
#include "transport/fault_ledger.h"
#include "transport/shared_memory/shared_board.h"
#include "transport/wire/result_codec.h"
#include "transport/transport.h"

namespace reptile {

class SharedMemoryTransport final : public Transport {
 public:
  // A board for `config` in `folder` (a folder only this user may enter, on
  // tmpfs where there is one), for `reptile worker --shared_memory` to open.
  // `log` (may be empty) hears workers join and leave.
  static absl::StatusOr<std::unique_ptr<SharedMemoryTransport>> Create(
      const ExperimentConfig& config, const std::string& folder, std::function<void(const std::string&)> log = {});
  ~SharedMemoryTransport() override;
  SharedMemoryTransport(const SharedMemoryTransport&) = delete;
  SharedMemoryTransport& operator=(const SharedMemoryTransport&) = delete;

  // What workers are given to open.
  const std::string& board_path() const { return board_path_; }

  absl::Status Run(const MetaState& state, const std::vector<WorkItem>& items, const ResultSink& take) override;
  int num_workers() const override;
  TransportStats Stats() const override;
  void Interrupt(const std::string& why) override;
  // Tells the workers to leave.
  void Finish();
  // From now on a worker counts only if `open_child` vouches for it: it
  // returns a pidfd for a pid that is one of this process's worker
  // children, -1 for any other pid. Without it no process is signalled.
  void TrustOnlyChildren(std::function<int(pid_t)> open_child);

 private:
  SharedMemoryTransport(const ExperimentConfig& config, std::string folder, SharedBoard board,
                        std::function<void(const std::string&)> log);
  // Hands item i's result to `take` once it is done; refuses it (to be run
  // again) or fails the batch when it is not acceptable. `shape` is the
  // coordinator's own, never read from the batch file.
  absl::StatusOr<bool> TakeResult(const SharedBatch& batch, size_t i, const std::vector<WorkItem>& items,
                                  const ResultShape& shape, const ResultSink& take);
  // Forgets workers that have died or are evicted, and opens their claimed
  // items (of the batch's first `items`, the coordinator's own count)
  // again; evicts the claimers of items held past their deadline.
  void ReapDeadWorkers(const SharedBatch& batch, size_t items);
  // Forgets the workers whose processes have ended.
  void ForgetEndedWorkers();
  // Evicts the claimers of items (of the first `claimed`) held longer than
  // runtime.task_timeout_seconds: stuck, or lying, whatever their heartbeat.
  void EvictHoldersPastDeadline(const SharedBatch& batch, size_t claimed, absl::Time now);
  // Writes the batch file of batch `number` and the state, and announces it.
  absl::StatusOr<SharedBatch> PublishBatch(uint64_t number, const MetaState& state,
                                           const std::vector<WorkItem>& items, const ResultShape& shape);
  // Puts back the words only the coordinator writes (stop, and the current
  // batch) if a worker changed them, stopping the others or hiding it.
  void PutBackOwnWords(uint64_t batch);
  // Cancelled with the reason once Interrupt() was called.
  absl::Status Interrupted() const;
  // Notes the workers that joined the board since the last look, and
  // everyone's heartbeat.
  void RefreshWorkers(absl::Time now);
  // Stops counting on `pid` (killing it, if it is a child of ours).
  void Evict(pid_t pid, const std::string& why);
  // Writes the state where the workers map it: a sealed memfd made on the
  // first batch, of the size every batch of the run has.
  absl::Status PublishState(absl::Span<const absl::string_view> tensors);

  const ExperimentConfig config_;
  const std::function<void(const std::string&)> log_;
  const std::string folder_, board_path_;
  SharedBoard board_;
  uint64_t last_batch_ = 0;
  SharedMapping state_;
  // The workers seen on the board, alive when last looked: a descriptor
  // that becomes readable when the process ends, whether it is a child of
  // ours (and may be signalled), and the last heartbeat.
  struct Seen {
    int pidfd = -1;
    bool child = false;
    uint32_t beat = 0;
    absl::Time beat_changed;
  };
  std::map<pid_t, Seen> seen_;
  std::set<pid_t> evicted_;  // never counted again, whatever the board says
  std::function<int(pid_t)> open_child_;
  // When each item of the batch was first seen claimed by its claim word.
  std::vector<std::pair<uint64_t, absl::Time>> claimed_since_;
  const absl::Duration worker_timeout_, task_timeout_;
  // Refusals, judged as the lease scheduler judges them, by pid.
  FaultLedger ledger_;

  mutable absl::Mutex mu_;
  std::string interrupted_ ABSL_GUARDED_BY(mu_);
  TransportStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_SHARED_MEMORY_SHARED_MEMORY_TRANSPORT_H_
