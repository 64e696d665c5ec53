// relu(batch_norm(x)) with the batch's own statistics, as one autograd
// operation: two passes over the activations forward and three backward,
// where LibTorch's batch norm and ReLU take several kernels each. The
// paper's networks always normalise with batch statistics, so there is no
// running average and no evaluation mode.
#ifndef REPTILE_CORE_MODELS_BATCH_NORM_RELU_H_
#define REPTILE_CORE_MODELS_BATCH_NORM_RELU_H_

#include <torch/torch.h>

namespace reptile {

// x: [N, C, H, W] fp32; weight, bias: [C]. Differentiable in all three.
torch::Tensor BatchNormRelu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                            double epsilon);

}  // namespace reptile

#endif  // REPTILE_CORE_MODELS_BATCH_NORM_RELU_H_
