// The round engine's only view of its workers. A transport carries a round's
// work items and the meta-state to workers and brings back one result per
// item. Implementations: local/ (threads in this process); gRPC and MPI
// runtimes add theirs behind the same interface.
#ifndef REPTILE_TRANSPORT_TRANSPORT_H_
#define REPTILE_TRANSPORT_TRANSPORT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/work.h"

namespace reptile {

// What a worker process has done since it started, for its /metrics
// (monitoring/worker_metrics.h). The counters only grow.
struct WorkerStats {
  int64_t tasks_done = 0;      // tasks its learner ran to a result
  int64_t tasks_failed = 0;    // tasks its learner failed on
  double compute_seconds = 0;  // wall time in the learner, both kinds
  double idle_seconds = 0;     // wall time between tasks: no work pending, or waiting for a lease, state or upload
  int64_t retries = 0;         // calls to the coordinator tried again (unreachable, transient errors)
};

// What a transport reports for the progress line and metrics.
struct TransportStats {
  int workers_alive = 0;
  int tasks_in_flight = 0;   // most tasks running at once in the last batch
  int64_t tasks_redone = 0;  // leases lost, refused or failed, and run again
  int64_t results_refused = 0;
  // The same by reason ("invalid_result", "worker_error", "upload_too_slow",
  // and over gRPC "no_header", "too_many_streams" for result streams refused
  // before their header), for transports that tell them apart; reasons
  // never seen are absent.
  std::map<std::string, int64_t> results_refused_by_reason;
  int64_t workers_evicted = 0;
  int64_t bytes_in = 0;      // received from workers, payload bytes
  int64_t bytes_out = 0;     // sent to workers
};

// Takes the result of items[item] of the batch being run; an error refuses it.
using ResultSink = std::function<absl::Status(size_t item, TaskResult result)>;

class Transport {
 public:
  virtual ~Transport() = default;

  // Runs every item against `state` and hands each item's result to `take`
  // as soon as it is in, whichever worker ran it and in whatever order they
  // finish: `take(i, result)` for items[i], once per item, all before Run()
  // returns. Calls for different items may come from several threads at
  // once (gRPC's, so that results are added on several cores); two for the
  // same item never do. A result `take` refuses is treated
  // as a worker's invalid result: run again elsewhere where the transport
  // can, else Run() fails with it. Fails only when an item cannot be
  // completed by any worker; the error names the item. Called by one thread
  // at a time; `state` must stay unchanged during it.
  virtual absl::Status Run(const MetaState& state, const std::vector<WorkItem>& items, const ResultSink& take) = 0;

  // Announces how the round engine will update the state with the results
  // of the next training batch (Aggregator::Apply's arguments), for a
  // transport whose workers keep their own copy of the state and apply the
  // same update to it (MPI_ALLREDUCE_SUM). Others ignore it.
  virtual void AnnounceUpdate(double step_size, int inner_iterations) {}

  // Workers currently serving this transport.
  virtual int num_workers() const = 0;

  virtual TransportStats Stats() const = 0;

  // Makes a Run() in progress, and every later one, return CANCELLED soon
  // with `why`, abandoning its items. Thread-safe.
  virtual void Interrupt(const std::string& why) = 0;
};

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_TRANSPORT_H_
