#include "core/models/batch_norm_relu_kernels.h"

#include <algorithm>
#include <cmath>

namespace reptile {

void BatchNormReluForward(const BatchNormShape& shape, const float* __restrict in, const float* gamma,
                          const float* beta, double epsilon, float* __restrict out, float* means,
                          float* inverse_stds, float* moving_mean, float* moving_var, double momentum) {
  const int64_t batch = shape.batch, channels = shape.channels, plane = shape.plane;
  const double count = static_cast<double>(batch * plane);
  for (int64_t c = 0; c < channels; ++c) {
    // Float sums per plane (vectorized), added up in double.
    double sum = 0;
    for (int64_t n = 0; n < batch; ++n) {
      const float* p = in + (n * channels + c) * plane;
      float partial = 0;
      for (int64_t i = 0; i < plane; ++i) partial += p[i];
      sum += partial;
    }
    const float mu = static_cast<float>(sum / count);
    double squares = 0;
    for (int64_t n = 0; n < batch; ++n) {
      const float* p = in + (n * channels + c) * plane;
      float partial = 0;
      for (int64_t i = 0; i < plane; ++i) partial += (p[i] - mu) * (p[i] - mu);
      squares += partial;
    }
    const float inv = static_cast<float>(1.0 / std::sqrt(squares / count + epsilon));
    if (moving_mean != nullptr) {
      moving_mean[c] = static_cast<float>((1 - momentum) * moving_mean[c] + momentum * mu);
      moving_var[c] = static_cast<float>((1 - momentum) * moving_var[c] + momentum * squares / (count - 1));
    }
    means[c] = mu;
    inverse_stds[c] = inv;
    const float scale = gamma[c] * inv;
    const float shift = beta[c] - scale * mu;
    for (int64_t n = 0; n < batch; ++n) {
      const float* p = in + (n * channels + c) * plane;
      float* q = out + (n * channels + c) * plane;
      for (int64_t i = 0; i < plane; ++i) q[i] = std::max(0.0f, p[i] * scale + shift);
    }
  }
}

void BatchNormReluBackward(const BatchNormShape& shape, const float* __restrict in, const float* __restrict out,
                           const float* __restrict dy, const float* gamma, const float* means,
                           const float* inverse_stds, float* __restrict dx, float* dgamma, float* dbeta) {
  const int64_t batch = shape.batch, channels = shape.channels, plane = shape.plane;
  const double count = static_cast<double>(batch * plane);
  for (int64_t c = 0; c < channels; ++c) {
    // Through ReLU: the gradient flows where the output is positive.
    const float mu = means[c], inv = inverse_stds[c];
    double sum_g = 0, sum_g_centered = 0;
    for (int64_t n = 0; n < batch; ++n) {
      const int64_t at = (n * channels + c) * plane;
      float partial_g = 0, partial_gc = 0;
      for (int64_t i = 0; i < plane; ++i) {
        const float g = dy[at + i] * static_cast<float>(out[at + i] > 0);  // branch-free: vectorizes
        partial_g += g;
        partial_gc += g * (in[at + i] - mu);
      }
      sum_g += partial_g;
      sum_g_centered += partial_gc;
    }
    dbeta[c] = static_cast<float>(sum_g);
    dgamma[c] = static_cast<float>(sum_g_centered * inv);
    // dx = gamma * inv * (g - mean(g) - xhat * mean(g * xhat))
    const float scale = gamma[c] * inv;
    const float mean_g = static_cast<float>(sum_g / count);
    const float slope = static_cast<float>(sum_g_centered * inv / count) * inv;  // mean(g xhat) / std
    for (int64_t n = 0; n < batch; ++n) {
      const int64_t at = (n * channels + c) * plane;
      for (int64_t i = 0; i < plane; ++i) {
        const float g = dy[at + i] * static_cast<float>(out[at + i] > 0);
        dx[at + i] = scale * (g - mean_g - (in[at + i] - mu) * slope);
      }
    }
  }
}

}  // namespace reptile
