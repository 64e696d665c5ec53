// The loops of relu(batch_norm(x)) over plain fp32 arrays in [N, C, plane]
// layout, for core/models/batch_norm_relu.cc. They are kept apart from
// LibTorch so that they compile with the flags that vectorize their sums
// (CMakeLists.txt) while the rest of the project shares one precompiled header.
#ifndef REPTILE_CORE_MODELS_BATCH_NORM_RELU_KERNELS_H_
#define REPTILE_CORE_MODELS_BATCH_NORM_RELU_KERNELS_H_

#include <cstdint>

namespace reptile {

struct BatchNormShape {
  int64_t batch = 0, channels = 0, plane = 0;
};

// out = max(0, gamma * (in - mean) * inverse_std + beta) per channel, with the
// batch's mean and 1 / sqrt(var + epsilon) written to `means` and
// `inverse_stds`. moving_mean and moving_var are null, or move towards the
// batch's mean and unbiased variance by `momentum`.
void BatchNormReluForward(const BatchNormShape& shape, const float* in, const float* gamma, const float* beta,
                          double epsilon, float* out, float* means, float* inverse_stds, float* moving_mean,
                          float* moving_var, double momentum);

// The gradients of the forward pass above, given its input, output, gamma,
// means and inverse_stds, and dy, the gradient of its output.
void BatchNormReluBackward(const BatchNormShape& shape, const float* in, const float* out, const float* dy,
                           const float* gamma, const float* means, const float* inverse_stds, float* dx,
                           float* dgamma, float* dbeta);

}  // namespace reptile

#endif  // REPTILE_CORE_MODELS_BATCH_NORM_RELU_KERNELS_H_
