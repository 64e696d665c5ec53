// The paper's networks as LibTorch modules: an MLP for sine regression and
// the 4-block convolutional classifiers for Omniglot (28x28) and Mini-ImageNet
// (84x84), and a user's TorchScript module (core/models/torchscript_model.h).
// The built-in networks' batch norm always normalises with the current
// batch's statistics and keeps no running averages, as in the paper's code.
#ifndef REPTILE_CORE_MODELS_MODELS_H_
#define REPTILE_CORE_MODELS_MODELS_H_

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "absl/status/statusor.h"
#include "reptile.pb.h"

namespace reptile {

using NamedTensor = std::pair<std::string, torch::Tensor>;

class MetaModel : public torch::nn::Module {
 public:
  // Sine: [B, 1] -> [B, 1]. Classifiers: [B, C, H, W] -> [B, ways] logits.
  virtual torch::Tensor forward(torch::Tensor input) = 0;
  // The float32 tensors that make theta, by name, in a fixed order: the
  // parameters (those that take gradients), and buffers the forward
  // updates. The built-in networks: named_parameters().
  virtual std::vector<NamedTensor> FlatTensors();
};

// Builds the network the config names. With a seed, a built-in network's
// parameters are initialised reproducibly from it (LibTorch's global
// generator is seeded and used under a lock, so concurrent builds cannot
// interleave their draws); a TorchScript module keeps its saved ones.
// LibTorch errors are returned as statuses.
absl::StatusOr<std::shared_ptr<MetaModel>> MakeModel(const ExperimentConfig& config,
                                                     std::optional<uint64_t> seed = std::nullopt);

// Input channels of the task's images (1 for grey, 3 for colour):
// task.image_channels if set, else 3 for IMAGE_FOLDER and 1 for the others.
int InputChannels(const TaskConfig& task);

}  // namespace reptile

#endif  // REPTILE_CORE_MODELS_MODELS_H_
