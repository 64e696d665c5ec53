// relu(batch_norm(x)) with the batch's own statistics, as one autograd
// operation: two passes over the activations forward and three backward,
// where LibTorch's batch norm and ReLU take several kernels each. It is
// training-mode batch norm only: the paper's networks always normalise with
// the batch's statistics. A TorchScript model's batch_norm -> relu runs
// through it too (core/models/torchscript_model.cc).
#ifndef REPTILE_CORE_MODELS_BATCH_NORM_RELU_H_
#define REPTILE_CORE_MODELS_BATCH_NORM_RELU_H_

#include <torch/types.h>

namespace reptile {

// x: [N, C, ...] fp32; weight, bias: [C]. Differentiable in all three.
// running_mean and running_var are undefined, or [C] fp32 buffers that move
// towards the batch's mean and unbiased variance by `momentum`, as
// torch.batch_norm's do in training mode.
torch::Tensor BatchNormRelu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                            double epsilon, const torch::Tensor& running_mean = {},
                            const torch::Tensor& running_var = {}, double momentum = 0);

}  // namespace reptile

#endif  // REPTILE_CORE_MODELS_BATCH_NORM_RELU_H_
