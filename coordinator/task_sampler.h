// Draws each round's meta-batch, and each evaluation's episodes, as work
// items. Counter-based: the items of round r depend only on the config and r
// (evaluation episodes only on eval.seed and their index), so the sampler's
// whole state is the round counter, and a resumed run draws what an
// uninterrupted one would.
#ifndef REPTILE_COORDINATOR_TASK_SAMPLER_H_
#define REPTILE_COORDINATOR_TASK_SAMPLER_H_

#include <vector>

#include "reptile.pb.h"
#include "core/work.h"

namespace reptile {

class TaskSampler {
 public:
  // `train_classes`, `test_classes` and `validation_classes`: the sizes of
  // the task source's splits (no validation split: 0).
  TaskSampler(const ExperimentConfig& config, int train_classes, int test_classes, int validation_classes = 0);

  // The round's outer.meta_batch_size tasks (task i fills slot i, and is
  // the same whatever the grouping) in items of runtime.tasks_per_item
  // consecutive tasks, the last one possibly smaller.
  std::vector<WorkItem> TrainingItems(int64_t round) const;

  // `episodes` evaluation episodes on the meta-test split, or with
  // `validation` on the validation split if the dataset has one (else on
  // the meta-test split too).
  std::vector<WorkItem> EvaluationItems(int episodes, bool validation = false) const;

 private:
  TaskSpec Draw(uint64_t seed, bool meta_test, bool validation, int support, int query) const;

  ExperimentConfig config_;
  int train_classes_, test_classes_, validation_classes_;
};

}  // namespace reptile

#endif  // REPTILE_COORDINATOR_TASK_SAMPLER_H_
