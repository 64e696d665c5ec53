// Combines one round's task results into the outer update. Results may arrive
// in any order from any worker; they are summed in slot order in float64, so
// the update is bitwise the same for any worker count and arrival order.
// Each result is checked (shape, dtype, finite values) before it is accepted.
// A result may carry the sums over several consecutive slots (tensor_items);
// those slots' own results then carry scalars only. Not thread-safe.
#ifndef REPTILE_COORDINATOR_AGGREGATOR_H_
#define REPTILE_COORDINATOR_AGGREGATOR_H_

#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "worker/learner.h"

namespace reptile {

class Aggregator {
 public:
  // `carried`: which Adam moments the results must hold (and no others), to
  // be averaged into the state; the caller decides from the config.
  Aggregator(int64_t numel, int slots, CarriedMoments carried);

  // InvalidArgument for a malformed result or slot, or tensor sums that
  // reach past the last slot; AlreadyExists for a slot that already holds a
  // result (the first one is kept).
  absl::Status Add(int slot, TaskResult result);

  bool complete() const;

  // theta += step_size * mean(delta); in CARRY mode the carried moments
  // (v, and m unless adam_beta1 is 0; an m not carried is left undefined)
  // become the
  // mean of the workers' final moments and the step count advances by
  // `inner_iterations` per task, as the reference code's one Adam does when
  // it runs a meta-batch's tasks one after another. FailedPrecondition
  // unless complete().
  absl::Status Apply(double step_size, int inner_iterations, MetaState* state) const;

 private:
  absl::Status CheckVector(const torch::Tensor& t, const char* what, int slot) const;
  // Every slot's tensors are in exactly one result: its own or a sum's.
  absl::Status CheckCoverage() const;
  // Mean over slots of one result field, summed in slot order in float64.
  std::vector<double> SlotMean(torch::Tensor TaskResult::*field) const;

  int64_t numel_;
  CarriedMoments carried_;
  std::vector<std::optional<TaskResult>> slots_;
};

}  // namespace reptile

#endif  // REPTILE_COORDINATOR_AGGREGATOR_H_
