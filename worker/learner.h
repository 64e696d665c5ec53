// The worker's side of Reptile: copy theta, run the inner optimizer on one
// task's examples, and report the outcome (the delta for a training task,
// few-shot accuracy or MSE for an evaluation episode). The result depends only
// on the meta-state and the task spec, never on which thread or process runs
// it. One Learner per thread; it is not thread-safe.
#ifndef REPTILE_WORKER_LEARNER_H_
#define REPTILE_WORKER_LEARNER_H_

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/exact_sum.h"
#include "core/flat_parameters.h"
#include "core/models/models.h"
#include "core/tasks/task_source.h"
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

// The exact sums (core/exact_sum.h) of training tasks' tensors: delta and
// the carried moments. Any grouping of the same tasks gives the same bits.
struct TensorSums {
  // For a round of `meta_batch` tasks.
  TensorSums(int64_t numel, int meta_batch, CarriedMoments carried);
  // Adds one task's fp32 tensors, all or none: InvalidArgument for a
  // missing, misshapen, non-finite or out-of-range tensor.
  absl::Status Add(const torch::Tensor& delta, const torch::Tensor& adam_m, const torch::Tensor& adam_v);
  // InvalidArgument if `other` holds other moments or sizes, or too many terms.
  absl::Status Merge(const TensorSums& other);
  int tasks() const { return delta.terms(); }
  CarriedMoments carried() const { return {adam_m.has_value(), adam_v.has_value()}; }

  ExactSum delta;
  std::optional<ExactSum> adam_m, adam_v;  // as carried
};

// The result of one work item.
struct TaskResult {
  // Training, an item of one task: W - theta (REPTILE) or the last inner
  // step's update (FOMAML), and in CARRY mode the final Adam moments (as
  // CarriedMomentsOf(config): no m when adam_beta1 is 0), in fp32.
  torch::Tensor delta;
  torch::Tensor adam_m, adam_v;
  // Training, an item of several tasks (or a transport's sum over items):
  // the exact sums of those tensors instead.
  std::optional<TensorSums> sums;
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
  // Whose tensors these are. 1: this item's own. n > 1: the sums over this
  // item and the next n - 1, whose results then carry scalars only (0).
  // Only a transport that sums on the way (MPI reductions) sets it.
  int tensor_items = 1;
};

// Which layers adaptation may change: all of them (the usual inner loop), or
// only the last one, the others keeping theta ("feature reuse" against "rapid
// learning": Raghu et al., ICLR 2020).
enum class AdaptedLayers { kAll, kLastOnly };

// What Learner::TraceAdaptation() sees on one evaluation episode.
struct AdaptationTrace {
  // Query loss (cross-entropy, or MSE for sine) and transductive accuracy
  // after 0, 1, ..., eval.inner_iterations steps; no accuracy for sine.
  std::vector<double> loss, accuracy;
  // ||W - theta|| / ||theta|| after the last step, per LayersOf(layout()).
  std::vector<double> relative_change;
};

class Learner {
 public:
  // `tasks` may be null for a learner used only through AdaptAndPredict().
  static absl::StatusOr<std::unique_ptr<Learner>> Create(const ExperimentConfig& config,
                                                         std::shared_ptr<const TaskSource> tasks);

  // Fails with InvalidArgument, before allocating, for a state or spec that
  // does not fit (a spec must be what TaskSampler draws from this config for
  // the item's kind: family, split, ways and shots), and with Internal for a
  // LibTorch failure; the learner stays usable either way.
  absl::StatusOr<TaskResult> Run(const MetaState& state, const WorkItem& item);

  // Runs the evaluation adaptation on caller-provided examples and returns
  // the predicted label of each query, each classified in a batch with the
  // support set only. Used by `reptile adapt` on a user's own images.
  absl::StatusOr<std::vector<int64_t>> AdaptAndPredict(const MetaState& state, const TaskExamples& task);

  // Adapts to the evaluation episode `spec` as Run() does
  // (eval.inner_iterations steps on minibatches of eval.inner_batch_size),
  // changing only the layers `layers` says, and scores the query set after
  // every step. Fails as Run() does for an evaluation item of this spec.
  absl::StatusOr<AdaptationTrace> TraceAdaptation(const MetaState& state, const TaskSpec& spec,
                                                  AdaptedLayers layers);

  int64_t num_parameters() const { return flat_->numel(); }
  const std::vector<ParameterShape>& layout() const { return flat_->layout(); }

 private:
  Learner(const ExperimentConfig& config, std::shared_ptr<const TaskSource> tasks,
          std::shared_ptr<MetaModel> model);

  struct InnerRun {
    double mean_loss = 0;
    int64_t correct = 0, predictions = 0;
  };
  // What an analysis changes in, or observes of, Adapt().
  struct AdaptHooks {
    // Flat offset of the first value that takes optimizer steps; the values
    // before it keep theta.
    int64_t trainable_from = 0;
    // Called after each step with the number of steps taken, and with 0
    // before the first.
    std::function<void(int steps)> after_step;
  };
  // Loads `state`, then takes `iterations` optimizer steps on minibatches of
  // `batch_size` support examples drawn without replacement, reshuffling when
  // the support set is used up (also within a batch). Leaves the adapted parameters in the model;
  // `before_last` (if non-null) receives the parameters before the last step.
  InnerRun Adapt(const MetaState& state, const TaskExamples& task, uint64_t order_seed, int iterations,
                 int batch_size, torch::Tensor* before_last, const AdaptHooks& hooks);
  // Applies the gradients with inner.optimizer to the values from flat offset
  // `from` on, and clears them all.
  void OptimizerStep(int64_t from = 0);
  torch::Tensor Loss(const torch::Tensor& output, const torch::Tensor& target) const;

  TaskResult Train(const MetaState& state, const TaskSpec& spec, const TaskExamples& task);
  TaskResult Evaluate(const MetaState& state, const TaskSpec& spec, const TaskExamples& task);

  ExperimentConfig config_;
  std::shared_ptr<const TaskSource> tasks_;
  std::shared_ptr<MetaModel> model_;
  std::unique_ptr<FlatParameters> flat_;
  torch::Tensor adam_m_, adam_v_;
  int64_t adam_step_ = 0;
};

}  // namespace reptile

#endif  // REPTILE_WORKER_LEARNER_H_
