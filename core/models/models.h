// The paper's networks as LibTorch modules: an MLP for sine regression and
// the 4-block convolutional classifiers for Omniglot (28x28) and Mini-ImageNet
// (84x84). Batch norm always normalises with the current batch's statistics
// and keeps no running averages, as in the paper's code.
#ifndef REPTILE_CORE_MODELS_MODELS_H_
#define REPTILE_CORE_MODELS_MODELS_H_

#include <memory>
#include <optional>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "reptile.pb.h"

namespace reptile {

class MetaModel : public torch::nn::Module {
 public:
  // Sine: [B, 1] -> [B, 1]. Classifiers: [B, C, H, W] -> [B, ways] logits.
  virtual torch::Tensor forward(torch::Tensor input) = 0;
};

// Builds the network the config names. With a seed, parameters are
// initialised reproducibly from it (LibTorch's global generator is seeded and
// used under a lock, so concurrent builds cannot interleave their draws).
// LibTorch errors are returned as statuses.
absl::StatusOr<std::shared_ptr<MetaModel>> MakeModel(const ExperimentConfig& config,
                                                     std::optional<uint64_t> seed = std::nullopt);

// Input channels of the task family's images (1 for grey, 3 for colour).
int InputChannels(const TaskConfig& task);

}  // namespace reptile

#endif  // REPTILE_CORE_MODELS_MODELS_H_
