#include "coordinator/task_sampler.h"

#include <algorithm>

#include "core/rng.h"

namespace reptile {
namespace {

constexpr uint64_t kTrainingStream = 0x747261696e;   // "train"
constexpr uint64_t kEvaluationStream = 0x6576616c;   // "eval"

}  // namespace

TaskSampler::TaskSampler(const ExperimentConfig& config, int train_classes, int test_classes, int validation_classes)
    : config_(config),
      train_classes_(train_classes),
      test_classes_(test_classes),
      validation_classes_(validation_classes) {}

TaskSpec TaskSampler::Draw(uint64_t seed, bool meta_test, bool validation, int support, int query) const {
  const TaskConfig& task = config_.task();
  TaskSpec spec;
  spec.set_family(task.family());
  spec.set_seed(seed);
  spec.set_meta_test(meta_test);
  spec.set_validation(validation);
  spec.set_support_shots(support);
  spec.set_query_shots(query);
  if (task.family() != SINE) {
    Rng rng(Rng::Derive(seed, /*label=*/0));
    const int classes = !meta_test ? train_classes_ : validation ? validation_classes_ : test_classes_;
    for (int id : rng.Choose(classes, task.ways())) spec.add_class_ids(id);
  }
  return spec;
}

std::vector<WorkItem> TaskSampler::TrainingItems(int64_t round) const {
  const TaskConfig& task = config_.task();
  const uint64_t round_seed = Rng::Derive(Rng::Derive(config_.seed(), kTrainingStream), round);
  const int support = task.family() == SINE ? task.sine_train_points() : task.train_shots();
  const int meta_batch = config_.outer().meta_batch_size();
  const int per_item = std::max(1, config_.runtime().tasks_per_item());
  std::vector<WorkItem> items;
  for (int slot = 0; slot < meta_batch; ++slot) {
    if (slot % per_item == 0) items.push_back(WorkItem{WorkKind::kTrain, {}});
    items.back().tasks.push_back(
        Draw(Rng::Derive(round_seed, slot), /*meta_test=*/false, /*validation=*/false, support, 0));
  }
  return items;
}

std::vector<WorkItem> TaskSampler::EvaluationItems(int episodes, bool validation) const {
  const TaskConfig& task = config_.task();
  const uint64_t eval_seed = Rng::Derive(config_.eval().seed(), kEvaluationStream);
  const int query = task.family() == SINE ? task.sine_query_points() : task.query_shots();
  std::vector<WorkItem> items(episodes);
  for (int e = 0; e < episodes; ++e) {
    items[e].kind = WorkKind::kEvaluate;
    items[e].tasks = {Draw(Rng::Derive(eval_seed, e), /*meta_test=*/true, validation && validation_classes_ > 0,
                           task.eval_shots(), query)};
  }
  return items;
}

}  // namespace reptile
