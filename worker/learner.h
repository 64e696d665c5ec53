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

#include <torch/types.h>

#include "absl/status/statusor.h"
#include "core/flat_parameters.h"
#include "core/models/models.h"
#include "core/tasks/task_source.h"
#include "core/work.h"
#include "reptile.pb.h"

namespace reptile {

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
  // The model's flat parameters as they are now: after AdaptAndPredict(),
  // the adapted ones.
  const torch::Tensor& parameters() const { return flat_->values(); }
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
