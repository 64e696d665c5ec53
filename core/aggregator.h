// Combines one round's work item results into the outer update. Tensors are
// added into exact sums (core/exact_sum.h) as they come, so the update is
// bitwise the same for any worker count, grouping of tasks into items or
// sums, and arrival order. Each result is checked (shapes, dtype, finite and
// in-range values, the tasks it covers) before any of it is added. A result
// may carry the sums over several items (summed_with); those items' own
// results then carry scalars only. Not thread-safe.
#ifndef REPTILE_CORE_AGGREGATOR_H_
#define REPTILE_CORE_AGGREGATOR_H_

#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "core/work.h"

namespace reptile {

class Aggregator {
 public:
  // `item_tasks[i]`: the training tasks of item i; the meta-batch is their
  // sum. `carried`: which Adam moments the results must hold (and no
  // others), to be averaged into the state; the caller decides from the config.
  Aggregator(int64_t numel, std::vector<int> item_tasks, CarriedMoments carried);

  // InvalidArgument for a malformed result or item index, sums over items
  // outside the batch or already covered by another result, or whose task
  // count does not match the items they cover; AlreadyExists for an item
  // that already has a result (the first one is kept). A refused result
  // adds nothing.
  absl::Status Add(int item, TaskResult result);

  bool complete() const;

  // theta += step_size * mean(delta) over the meta-batch's tasks; in CARRY
  // mode the carried moments (v, and m unless adam_beta1 is 0; an m not
  // carried is left undefined) become the mean of the tasks' final moments
  // and the step count advances by `inner_iterations` per task, as the
  // reference code's one Adam does when it runs a meta-batch's tasks one
  // after another. FailedPrecondition unless complete().
  absl::Status Apply(double step_size, int inner_iterations, MetaState* state) const;

 private:
  // Every item's tensors are in a result: its own or a sum's.
  absl::Status CheckCoverage() const;

  int64_t numel_;
  std::vector<int> item_tasks_;
  int meta_batch_ = 0;
  std::vector<bool> received_;                 // per item: its result is in
  std::vector<std::optional<int>> covered_by_;  // per item: the item whose result holds its tensors
  TensorSums sums_;
};

}  // namespace reptile

#endif  // REPTILE_CORE_AGGREGATOR_H_
