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
  // `train_classes` and `test_classes`: the sizes of the task source's splits.
  TaskSampler(const ExperimentConfig& config, int train_classes, int test_classes);

  // The round's outer.meta_batch_size tasks (task i fills slot i, and is
  // the same whatever the grouping) in items of runtime.tasks_per_item
  // consecutive tasks, the last one possibly smaller.
  std::vector<WorkItem> TrainingItems(int64_t round) const;

  // `episodes` evaluation episodes on the meta-test split.
  std::vector<WorkItem> EvaluationItems(int episodes) const;

 private:
  TaskSpec Draw(uint64_t seed, bool meta_test, int support, int query) const;

  ExperimentConfig config_;
  int train_classes_, test_classes_;
};

}  // namespace reptile

#endif  // REPTILE_COORDINATOR_TASK_SAMPLER_H_
