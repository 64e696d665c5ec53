// What the round engine, the transports and the learner exchange: the
// meta-state, a round's work items and their results, and the exact sums that
// combine results. Plain data; TensorSums checks and adds tensors, nothing
// else here has behaviour.
#ifndef REPTILE_CORE_WORK_H_
#define REPTILE_CORE_WORK_H_

#include <cstdint>
#include <optional>
#include <vector>

#include <torch/types.h>

#include "absl/status/status.h"
#include "core/exact_sum.h"
#include "reptile.pb.h"

namespace reptile {

// What the coordinator holds and sends with every task: flat fp32 parameters
// and, when inner.state_mode is CARRY, Adam's second moment v, its step count
// and, unless inner.adam_beta1 is 0, its first moment m.
struct MetaState {
  torch::Tensor parameters;
  torch::Tensor adam_m;  // undefined unless CARRY with adam_beta1 != 0
  torch::Tensor adam_v;  // undefined unless CARRY
  int64_t adam_step = 0;
};

// Which of Adam's moments are part of the meta-state, and so go with every
// task, come back with every result and are kept in checkpoints. With
// adam_beta1 = 0 the first step of a task overwrites m with its gradient, so
// a carried m could never reach theta: it is not carried.
struct CarriedMoments {
  bool first = false;   // m
  bool second = false;  // v and the step count; "CARRY is on"

  bool operator==(const CarriedMoments& o) const { return first == o.first && second == o.second; }
  bool operator!=(const CarriedMoments& o) const { return !(*this == o); }
};

// What `config` carries: nothing unless inner.optimizer is ADAM and
// inner.state_mode CARRY; then v, and m unless inner.adam_beta1 is 0.
CarriedMoments CarriedMomentsOf(const ExperimentConfig& config);
// What `state` holds (which of its moments are defined).
CarriedMoments CarriedMomentsOf(const MetaState& state);

enum class WorkKind { kTrain, kEvaluate };

// A unit of work: one evaluation episode, or the training tasks of
// consecutive slots of a round (runtime.tasks_per_item), which one worker
// runs and returns as one result.
struct WorkItem {
  WorkKind kind = WorkKind::kTrain;
  std::vector<TaskSpec> tasks;
};

// A training result's exact sums as they came over the wire: checked, and
// left in their compact form (CompactSum) until they are added.
struct CompactTensorSums {
  CompactSum delta;
  std::optional<CompactSum> adam_m, adam_v;  // as carried
  int tasks() const { return delta.terms(); }
  CarriedMoments carried() const { return {adam_m.has_value(), adam_v.has_value()}; }
};

// The exact sums (core/exact_sum.h) of training tasks' tensors: delta and
// the carried moments. Any grouping of the same tasks gives the same bits.
struct TensorSums {
  // For a round of `meta_batch` tasks.
  TensorSums(int64_t numel, int meta_batch, CarriedMoments carried);
  // Adds one task's fp32 tensors, all or none: InvalidArgument as
  // CheckTaskTensors.
  absl::Status Add(const torch::Tensor& delta, const torch::Tensor& adam_m, const torch::Tensor& adam_v);
  // InvalidArgument if `other` holds other moments or sizes, or too many terms.
  absl::Status Merge(const TensorSums& other);
  absl::Status Merge(const CompactTensorSums& other);
  // As Add() and Merge() for sums that hold a slice of longer vectors (a
  // shard of a round's sums): adds elements [first, first + numel) of one
  // task's tensors that CheckTaskTensors took for their full size, or of
  // sums that CheckSumsFit took. InvalidArgument as ExactSum::MergeSlice;
  // not all or none.
  absl::Status AddSlice(const torch::Tensor& delta, const torch::Tensor& adam_m, const torch::Tensor& adam_v,
                        int64_t first);
  absl::Status MergeSlice(const TensorSums& other, int64_t first);
  absl::Status MergeSlice(const CompactTensorSums& other, int64_t first);
  // Back to sums of no tasks, keeping their memory.
  void Clear();
  int tasks() const { return delta.terms(); }
  CarriedMoments carried() const { return {adam_m.has_value(), adam_v.has_value()}; }

  ExactSum delta;
  std::optional<ExactSum> adam_m, adam_v;  // as carried
};

// Whether one task's fp32 tensors can be added to sums of `numel` elements
// for `meta_batch` tasks that carry `carried`: InvalidArgument, naming the
// tensor, for one missing, not carried, misshapen, non-finite or out of
// range.
absl::Status CheckTaskTensors(int64_t numel, int meta_batch, CarriedMoments carried, const torch::Tensor& delta,
                              const torch::Tensor& adam_m, const torch::Tensor& adam_v);
// Whether `sums` can be merged into sums of `numel` elements for
// `meta_batch` tasks that carry `carried`, room aside: InvalidArgument if
// they hold other moments, sizes or capacities, or their tensors' sums hold
// different numbers of tasks.
absl::Status CheckSumsFit(int64_t numel, int meta_batch, CarriedMoments carried, const TensorSums& sums);
absl::Status CheckSumsFit(int64_t numel, int meta_batch, CarriedMoments carried, const CompactTensorSums& sums);

// The result of one work item.
struct TaskResult {
  // Training, an item of one task: W - theta (REPTILE) or the last inner
  // step's update (FOMAML), and in CARRY mode the final Adam moments (as
  // CarriedMomentsOf(config): no m when adam_beta1 is 0), in fp32.
  torch::Tensor delta;
  torch::Tensor adam_m, adam_v;
  // Training, an item of several tasks (or a transport's sum over items):
  // the exact sums of those tensors instead; as decoded from the wire, in
  // their compact form.
  std::optional<TensorSums> sums;
  std::optional<CompactTensorSums> compact_sums;
  // Training: mean loss over the inner minibatches (and over the item's
  // tasks). Evaluation: loss on the query set after adaptation
  // (cross-entropy, or MSE for sine).
  double loss = 0;
  // Classification counts, summed over the item's tasks: training minibatch
  // predictions, or evaluation queries (transductive: all queries in one
  // batch; inductive: each query in a batch with the support set only).
  int64_t correct = 0;
  int64_t correct_inductive = 0;
  int64_t predictions = 0;
  double compute_seconds = 0;
  // Whose tensors these are, for a transport that sums on the way (MPI
  // reductions, a node's learners); by default this item's own.
  // `summed_with`: the other items of the batch whose tensors this result's
  // sums add up too. Those items' results carry scalars only and say so
  // with `tensors_elsewhere`.
  std::vector<int> summed_with;
  bool tensors_elsewhere = false;
};

}  // namespace reptile

#endif  // REPTILE_CORE_WORK_H_
