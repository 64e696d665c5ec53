#include "core/models/models.h"

#include <mutex>
#include <vector>

#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/models/batch_norm_relu.h"
#include "core/models/torchscript_model.h"

namespace reptile {
namespace {

namespace nn = torch::nn;

class SineMlp final : public MetaModel {
 public:
  explicit SineMlp(int hidden)
      : hidden1_(register_module("hidden1", nn::Linear(1, hidden))),
        hidden2_(register_module("hidden2", nn::Linear(hidden, hidden))),
        out_(register_module("out", nn::Linear(hidden, 1))) {}

  torch::Tensor forward(torch::Tensor x) override {
    x = torch::tanh(hidden1_->forward(x));
    x = torch::tanh(hidden2_->forward(x));
    return out_->forward(x);
  }

 private:
  nn::Linear hidden1_, hidden2_, out_;
};

// Four blocks of [3x3 conv, batch norm, (2x2 max-pool), ReLU] and a linear
// classifier, as in the reference code. Omniglot: 64 filters, stride 2, no
// pooling (28 -> 14 -> 7 -> 4 -> 2: 256 features). Mini-ImageNet: 32
// filters, stride 1, max-pool that keeps a last odd row and column, as
// TensorFlow's 'same' pooling does (84 -> 42 -> 21 -> 11 -> 6: 1152).
class ConvClassifier final : public MetaModel {
 public:
  ConvClassifier(int in_channels, int image_size, int filters, bool pool, int ways) : pool_(pool) {
    int size = image_size;
    for (int i = 0; i < 4; ++i) {
      auto conv = nn::Conv2d(nn::Conv2dOptions(i == 0 ? in_channels : filters, filters, 3)
                                 .stride(pool ? 1 : 2)
                                 .padding(1));
      auto norm = nn::BatchNorm2d(nn::BatchNorm2dOptions(filters).track_running_stats(false));
      convs_.push_back(register_module(absl::StrCat("conv", i), conv));
      norms_.push_back(register_module(absl::StrCat("norm", i), norm));
      size = (size + 1) / 2;
    }
    classifier_ = register_module("classifier", nn::Linear(filters * size * size, ways));
  }

  torch::Tensor forward(torch::Tensor x) override {
    for (size_t i = 0; i < convs_.size(); ++i) {
      // relu(max_pool(z)) == max_pool(relu(z)): the ReLU goes with the norm.
      x = BatchNormRelu(convs_[i]->forward(x), norms_[i]->weight, norms_[i]->bias, norms_[i]->options.eps());
      if (pool_) x = torch::max_pool2d(x, /*kernel_size=*/2, /*stride=*/2, /*padding=*/0, /*dilation=*/1,
                                       /*ceil_mode=*/true);
    }
    return classifier_->forward(x.flatten(1));
  }

 private:
  bool pool_;
  std::vector<nn::Conv2d> convs_;
  std::vector<nn::BatchNorm2d> norms_;
  nn::Linear classifier_{nullptr};
};

}  // namespace

std::vector<NamedTensor> MetaModel::FlatTensors() {
  std::vector<NamedTensor> tensors;
  for (const auto& item : named_parameters(/*recurse=*/true)) tensors.emplace_back(item.key(), item.value());
  return tensors;
}

int InputChannels(const TaskConfig& task) {
  if (task.image_channels() > 0) return task.image_channels();
  return task.family() == IMAGE_FOLDER ? 3 : 1;
}

absl::StatusOr<std::shared_ptr<MetaModel>> MakeModel(const ExperimentConfig& config,
                                                     std::optional<uint64_t> seed) {
  if (config.model().arch() == TORCHSCRIPT) {
    ASSIGN_OR_RETURN(std::shared_ptr<const std::string> bytes, TorchScriptBytes(config));
    return LoadTorchScriptModel(bytes, config.model().torchscript_file(), config);
  }
  static std::mutex global_generator;
  std::lock_guard<std::mutex> lock(global_generator);
  try {
    if (seed.has_value()) torch::manual_seed(*seed);
    const TaskConfig& task = config.task();
    switch (config.model().arch()) {
      case MLP_SINE:
        return std::shared_ptr<MetaModel>(
            std::make_shared<SineMlp>(config.model().hidden_units() > 0 ? config.model().hidden_units() : 64));
      case CONV_OMNIGLOT:
        return std::shared_ptr<MetaModel>(std::make_shared<ConvClassifier>(
            InputChannels(task), task.image_size(), 64, /*pool=*/false, task.ways()));
      case CONV_MINIIMAGENET:
        return std::shared_ptr<MetaModel>(std::make_shared<ConvClassifier>(
            InputChannels(task), task.image_size(), 32, /*pool=*/true, task.ways()));
      default:
        return absl::InvalidArgumentError("config field model.arch: unknown architecture");
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("building the model failed: ", e.what_without_backtrace()));
  }
}

}  // namespace reptile
