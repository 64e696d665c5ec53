#include "core/tasks/task_source.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/data/loaders.h"
#include "core/models/models.h"
#include "core/rng.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

// The literature's Omniglot protocol: 1200 shuffled characters for
// meta-training (each in 4 rotations), the remaining 423 for meta-test.
constexpr int kOmniglotTrainCharacters = 1200;
// Fashion-MNIST: classes 0-4 (T-shirt, trouser, pullover, dress, coat) for
// meta-training, 5-9 (sandal, shirt, sneaker, bag, ankle boot) for meta-test.
constexpr int kFashionTrainClasses = 5;

// Sine tasks: y = A sin(x + phi), as in the paper's regression demo.
constexpr double kAmplitudeMin = 0.1, kAmplitudeMax = 5.0;
constexpr double kXMin = -5.0, kXMax = 5.0;
// Sine points have no dataset to bound them: at most this many per set.
constexpr int kMaxSinePoints = 1 << 20;

absl::Status SpecError(const char* field, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("task spec field ", field, ": ", problem));
}

}  // namespace

// Long because it is one case per task family, each loading its data.
absl::StatusOr<std::shared_ptr<const TaskSource>> TaskSource::Create(const TaskConfig& config) {
  std::shared_ptr<TaskSource> source(new TaskSource(config));
  switch (config.family()) {
    case SINE:
      break;
    case OMNIGLOT: {
      ASSIGN_OR_RETURN(ImageDataset omniglot, LoadOmniglot(config.data_dir(), config.image_size()));
      std::vector<int> order(omniglot.num_classes());
      for (int i = 0; i < omniglot.num_classes(); ++i) order[i] = i;
      Rng(config.split_seed()).Shuffle(order);
      const int train = std::min<int>(kOmniglotTrainCharacters, order.size());
      for (int i = 0; i < train; ++i)
        for (int turns = 0; turns < 4; ++turns) source->train_classes_.push_back({0, order[i], turns});
      for (size_t i = train; i < order.size(); ++i) source->test_classes_.push_back({0, order[i], 0});
      source->datasets_.push_back(std::move(omniglot));
      break;
    }
    case FASHION_MNIST: {
      ASSIGN_OR_RETURN(ImageDataset fashion, LoadFashionMnist(config.data_dir()));
      for (int c = 0; c < fashion.num_classes(); ++c)
        (c < kFashionTrainClasses ? source->train_classes_ : source->test_classes_).push_back({0, c, 0});
      source->datasets_.push_back(std::move(fashion));
      break;
    }
    case IMAGE_FOLDER: {
      const std::filesystem::path root(config.data_dir());
      int channels = config.image_channels();  // 0: the train split's first image decides
      const std::pair<const char*, std::vector<ClassRef>*> splits[] = {
          {"train", &source->train_classes_}, {"val", &source->validation_classes_}, {"test", &source->test_classes_}};
      // Folders train/, val/ and test/, or the split files train.csv, val.csv
      // and test.csv of images in images/; val is optional.
      const bool csv = std::filesystem::exists(root / "train.csv");
      for (const auto& [split, classes] : splits) {
        const std::filesystem::path dir = csv ? root / absl::StrCat(split, ".csv") : root / split;
        if (std::string(split) == "val" && !std::filesystem::exists(dir)) continue;
        ASSIGN_OR_RETURN(ImageDataset images,
                         csv ? LoadImageCsvShared(dir.string(), (root / "images").string(), channels,
                                                  config.image_size())
                             : LoadImageFolderShared(dir.string(), channels, config.image_size()));
        channels = images.channels();
        const int needed = std::string(split) == "train" ? config.train_shots()
                                                         : config.eval_shots() + config.query_shots();
        for (int c = 0; c < images.num_classes(); ++c) {
          if (images.num_examples(c) < needed)
            return absl::InvalidArgumentError(absl::StrCat(
                "class ", csv ? absl::StrCat(images.class_name(c), " of ", dir.string())
                              : absl::StrCat("folder ", (dir / images.class_name(c)).string()),
                " has ", images.num_examples(c),
                " images; a task takes ", needed, " from it (",
                std::string(split) == "train" ? "task.train_shots" : "task.eval_shots + task.query_shots", ")"));
          classes->push_back({static_cast<int>(source->datasets_.size()), c, 0});
        }
        source->datasets_.push_back(std::move(images));
      }
      source->image_channels_ = channels;
      if (config.normalize_mean_size() > 0 && config.normalize_mean_size() != channels)
        return absl::InvalidArgumentError(absl::StrCat("task.normalize_mean has ", config.normalize_mean_size(),
                                                       " values; the images of ", config.data_dir(), " have ",
                                                       channels, " channels"));
      break;
    }
    default:
      return absl::InvalidArgumentError("config field task.family: unknown task family");
  }
  if (config.family() != SINE && std::min(source->num_classes(false), source->num_classes(true)) < config.ways())
    return absl::InvalidArgumentError(absl::StrCat("dataset in ", config.data_dir(), " has fewer than task.ways=",
                                                   config.ways(), " classes in a split"));
  if (source->num_validation_classes() > 0 && source->num_validation_classes() < config.ways())
    return absl::InvalidArgumentError(absl::StrCat("the validation split of ", config.data_dir(), " has ",
                                                   source->num_validation_classes(), " classes, fewer than task.ways=",
                                                   config.ways()));
  return std::shared_ptr<const TaskSource>(std::move(source));
}

const std::vector<TaskSource::ClassRef>& TaskSource::SplitOf(const TaskSpec& spec) const {
  if (!spec.meta_test()) return train_classes_;
  return spec.validation() ? validation_classes_ : test_classes_;
}

const char* TaskSource::SplitName(const TaskSpec& spec) {
  if (!spec.meta_test()) return "meta-training";
  return spec.validation() ? "validation" : "meta-test";
}

int TaskSource::num_classes(bool meta_test) const {
  return static_cast<int>((meta_test ? test_classes_ : train_classes_).size());
}

bool TaskSource::images_shared() const {
  return !datasets_.empty() &&
         std::all_of(datasets_.begin(), datasets_.end(), [](const ImageDataset& d) { return d.mapped(); });
}

int64_t TaskSource::memory_bytes() const {
  int64_t total = 0;
  for (const ImageDataset& d : datasets_) total += d.memory_bytes();
  return total;
}

absl::Status TaskSource::CheckSpec(const TaskSpec& spec) const {
  if (spec.family() != config_.family())
    return SpecError("family", absl::StrCat(TaskFamily_Name(spec.family()), " does not match this source's ",
                                            TaskFamily_Name(config_.family())));
  if (spec.support_shots() <= 0) return SpecError("support_shots", absl::StrCat("must be > 0, got ", spec.support_shots()));
  if (spec.query_shots() < 0) return SpecError("query_shots", absl::StrCat("must be >= 0, got ", spec.query_shots()));
  if (spec.family() == SINE) {
    if (spec.class_ids_size() != 0)
      return SpecError("class_ids", absl::StrCat("a sine task names no classes, got ", spec.class_ids_size()));
    if (spec.support_shots() > kMaxSinePoints)
      return SpecError("support_shots", absl::StrCat(spec.support_shots(), " sine points, more than ", kMaxSinePoints));
    if (spec.query_shots() > kMaxSinePoints)
      return SpecError("query_shots", absl::StrCat(spec.query_shots(), " sine points, more than ", kMaxSinePoints));
    return absl::OkStatus();
  }
  if (spec.validation() && !spec.meta_test())
    return SpecError("validation", "only an evaluation episode (meta_test) draws from the validation split");
  const std::vector<ClassRef>& split = SplitOf(spec);
  const char* split_name = SplitName(spec);
  if (spec.class_ids_size() < 1) return SpecError("class_ids", "names no classes");
  const int64_t per_class = int64_t{spec.support_shots()} + spec.query_shots();
  std::vector<bool> named(split.size(), false);
  for (int id : spec.class_ids()) {
    if (id < 0 || id >= static_cast<int>(split.size()))
      return SpecError("class_ids", absl::StrCat("class id ", id, " outside the ", split_name, " split of ",
                                                 split.size(), " classes"));
    if (named[id]) return SpecError("class_ids", absl::StrCat("class id ", id, " named twice"));
    named[id] = true;
    const ClassRef& ref = split[id];
    const ImageDataset& images = datasets_[ref.dataset];
    if (per_class > images.num_examples(ref.cls))
      return SpecError("support_shots", absl::StrCat("support_shots ", spec.support_shots(), " + query_shots ",
                                                     spec.query_shots(), " asks for ", per_class,
                                                     " examples of class ", images.class_name(ref.cls),
                                                     ", which has ", images.num_examples(ref.cls)));
  }
  return absl::OkStatus();
}

absl::StatusOr<TaskExamples> TaskSource::Materialize(const TaskSpec& spec) const {
  RETURN_IF_ERROR(CheckSpec(spec));
  return spec.family() == SINE ? MaterializeSine(spec) : MaterializeImages(spec);
}

TaskExamples TaskSource::MaterializeSine(const TaskSpec& spec) const {
  Rng rng(spec.seed());
  const double amplitude = rng.Uniform(kAmplitudeMin, kAmplitudeMax);
  const double phase = rng.Uniform(0.0, 2.0 * M_PI);
  const int grid = config_.sine_grid_points();
  auto grid_point = [grid](int i) { return kXMin + (kXMax - kXMin) * i / (grid - 1); };
  // x for point i of a set of n: uniform, or on the grid: the grid itself
  // for a set as large as it, else grid points drawn with replacement.
  auto draw = [&](int n, torch::Tensor& x, torch::Tensor& y) {
    x = torch::empty({n, 1}, torch::kFloat32);
    y = torch::empty({n, 1}, torch::kFloat32);
    float* xs = x.data_ptr<float>();
    float* ys = y.data_ptr<float>();
    for (int i = 0; i < n; ++i) {
      double v;
      if (grid == 0) {
        v = rng.Uniform(kXMin, kXMax);
      } else if (n == grid) {
        v = grid_point(i);
      } else {
        v = grid_point(std::min(grid - 1, static_cast<int>(rng.Uniform(0.0, grid))));
      }
      xs[i] = static_cast<float>(v);
      ys[i] = static_cast<float>(amplitude * std::sin(v + phase));
    }
  };
  TaskExamples task;
  draw(spec.support_shots(), task.support_x, task.support_y);
  draw(spec.query_shots(), task.query_x, task.query_y);
  return task;
}

TaskExamples TaskSource::MaterializeImages(const TaskSpec& spec) const {
  const std::vector<ClassRef>& split = SplitOf(spec);
  const int ways = spec.class_ids_size();
  const int per_class = spec.support_shots() + spec.query_shots();
  const ImageDataset& any = datasets_.front();
  const int64_t pixels = any.image_bytes();
  TaskExamples task;
  task.support_x = torch::empty({ways * spec.support_shots(), any.channels(), any.height(), any.width()});
  task.query_x = torch::empty({ways * spec.query_shots(), any.channels(), any.height(), any.width()});
  task.support_y = torch::empty({ways * spec.support_shots()}, torch::kInt64);
  task.query_y = torch::empty({ways * spec.query_shots()}, torch::kInt64);
  Rng rng(spec.seed());
  for (int label = 0; label < ways; ++label) {
    const ClassRef& ref = split[spec.class_ids(label)];
    const ImageDataset& images = datasets_[ref.dataset];
    const std::vector<int> picks = rng.Choose(images.num_examples(ref.cls), per_class);
    for (int s = 0; s < per_class; ++s) {
      const bool support = s < spec.support_shots();
      const int64_t row = support ? label * spec.support_shots() + s
                                  : label * spec.query_shots() + (s - spec.support_shots());
      torch::Tensor& x = support ? task.support_x : task.query_x;
      torch::Tensor& y = support ? task.support_y : task.query_y;
      images.CopyExample(ref.cls, picks[s], ref.quarter_turns, x.data_ptr<float>() + row * pixels);
      y.data_ptr<int64_t>()[row] = label;
    }
  }
  NormalizeImages(config_, &task.support_x);
  NormalizeImages(config_, &task.query_x);
  return task;
}

void RecordImageChannels(const TaskSource& tasks, ExperimentConfig* config) {
  if (config->task().family() == IMAGE_FOLDER && config->task().image_channels() == 0)
    config->mutable_task()->set_image_channels(tasks.image_channels());
}

void NormalizeImages(const TaskConfig& config, torch::Tensor* images) {
  const int channels = config.normalize_mean_size();
  if (channels == 0 || images->numel() == 0) return;
  torch::NoGradGuard no_grad;
  const torch::Tensor mean = torch::tensor(std::vector<float>(config.normalize_mean().begin(), config.normalize_mean().end()))
                                 .view({1, channels, 1, 1});
  const torch::Tensor std = torch::tensor(std::vector<float>(config.normalize_std().begin(), config.normalize_std().end()))
                                .view({1, channels, 1, 1});
  images->sub_(mean).div_(std);
}

}  // namespace reptile
