// Turns TaskSpecs into examples. Holds the config's dataset in memory (decoded
// once, uint8) and maps a spec's class ids onto the meta-training or meta-test
// split, so that every process holding the same dataset materialises exactly
// the same examples from the same spec. Read-only after Create(): threads may
// share one instance.
#ifndef REPTILE_CORE_TASKS_TASK_SOURCE_H_
#define REPTILE_CORE_TASKS_TASK_SOURCE_H_

#include <memory>
#include <vector>

#include <torch/types.h>

#include "absl/status/statusor.h"
#include "core/data/image_dataset.h"
#include "reptile.pb.h"

namespace reptile {

// Support examples train the inner loop; query examples (evaluation only)
// measure the adapted model. Labels are class positions 0..ways-1 (int64) for
// classification, and targets [n, 1] for sine regression.
struct TaskExamples {
  torch::Tensor support_x, support_y;
  torch::Tensor query_x, query_y;
};

// Applies task.normalize_mean and normalize_std (if given) in place to a
// batch of images [n, channels, height, width] in [0, 1].
void NormalizeImages(const TaskConfig& config, torch::Tensor* images);

class TaskSource;

// An IMAGE_FOLDER config without task.image_channels gets the channels of
// the images `tasks` loaded: what the run's workers and checkpoint record.
void RecordImageChannels(const TaskSource& tasks, ExperimentConfig* config);

class TaskSource {
 public:
  // Loads the dataset the config names (nothing for SINE). Errors name the
  // missing or corrupt file, an empty split, or a class with fewer images
  // than a task takes from it. IMAGE_FOLDER: <data_dir>/train, test and,
  // if present, val, each a folder of class folders of PNG or JPEG images.
  static absl::StatusOr<std::shared_ptr<const TaskSource>> Create(const TaskConfig& config);

  // Classes a spec may name in the meta-training (false) or meta-test split.
  int num_classes(bool meta_test) const;
  // Classes of the validation split (specs with meta_test and validation);
  // 0 when the dataset has none.
  int num_validation_classes() const { return static_cast<int>(validation_classes_.size()); }
  // The channels of the images (1 for sine): task.image_channels, or as the
  // images are when that is 0.
  int image_channels() const { return image_channels_; }

  // Checks the spec before allocating anything, so that a spec from the
  // network cannot make it allocate more than the dataset holds: InvalidArgument
  // naming the field and value if the spec does not fit this source (family,
  // shots not positive, class ids out of range or repeated, more examples than
  // a class has, more than 2^20 sine points).
  absl::StatusOr<TaskExamples> Materialize(const TaskSpec& spec) const;

  // Bytes of decoded images held.
  int64_t memory_bytes() const;
  // True if they lie in a cache file that other processes map too.
  bool images_shared() const;

 private:
  struct ClassRef {
    int dataset;        // index into datasets_
    int cls;            // class within that dataset
    int quarter_turns;  // rotation applied to every image of the class
  };
  explicit TaskSource(const TaskConfig& config) : config_(config) {}
  // What Materialize() checks; the two below rely on it.
  absl::Status CheckSpec(const TaskSpec& spec) const;
  TaskExamples MaterializeSine(const TaskSpec& spec) const;
  TaskExamples MaterializeImages(const TaskSpec& spec) const;

  // The split a spec draws from, and its name for errors.
  const std::vector<ClassRef>& SplitOf(const TaskSpec& spec) const;
  static const char* SplitName(const TaskSpec& spec);

  TaskConfig config_;
  int image_channels_ = 1;
  std::vector<ImageDataset> datasets_;
  std::vector<ClassRef> train_classes_, validation_classes_, test_classes_;
};

}  // namespace reptile

#endif  // REPTILE_CORE_TASKS_TASK_SOURCE_H_
