// The round engine's only view of its workers. A transport carries a round's
// work items and the meta-state to workers and brings back one result per
// item. Implementations: local/ (threads in this process); gRPC and MPI
// runtimes add theirs behind the same interface.
#ifndef REPTILE_TRANSPORT_TRANSPORT_H_
#define REPTILE_TRANSPORT_TRANSPORT_H_

#include <vector>

#include "absl/status/statusor.h"
#include "worker/learner.h"

namespace reptile {

class Transport {
 public:
  virtual ~Transport() = default;

  // Runs every item against `state` and returns the results in the items'
  // order (result i belongs to items[i]), whichever worker ran which item and
  // in whatever order they finished. Blocks until all are done. Fails only
  // when an item cannot be completed by any worker; the error names the item.
  // Called by one thread at a time; `state` must stay unchanged during it.
  virtual absl::StatusOr<std::vector<TaskResult>> Run(const MetaState& state,
                                                      const std::vector<WorkItem>& items) = 0;

  // Workers currently serving this transport.
  virtual int num_workers() const = 0;
};

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_TRANSPORT_H_
