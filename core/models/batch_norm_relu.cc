#include "core/models/batch_norm_relu.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace reptile {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class BatchNormReluFunction : public torch::autograd::Function<BatchNormReluFunction> {
 public:
  // Saves x, the output (its sign is ReLU's mask), and per channel the mean
  // and 1 / sqrt(var + epsilon).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input, const torch::Tensor& weight,
                               const torch::Tensor& bias, double epsilon,
                               const c10::optional<torch::Tensor>& running_mean,
                               const c10::optional<torch::Tensor>& running_var, double momentum) {
    const torch::Tensor x = input.contiguous();
    const int64_t batch = x.size(0), channels = x.size(1), plane = x.numel() / (batch * channels);
    const double count = static_cast<double>(batch * plane);
    torch::Tensor output = torch::empty_like(x);
    torch::Tensor mean = torch::empty({channels}), inverse_std = torch::empty({channels});
    const float* __restrict in = x.data_ptr<float>();
    float* __restrict out = output.data_ptr<float>();
    const torch::Tensor w = weight.contiguous(), b = bias.contiguous();
    const float* gamma = w.data_ptr<float>();
    const float* beta = b.data_ptr<float>();
    float* means = mean.data_ptr<float>();
    float* inverse_stds = inverse_std.data_ptr<float>();
    float* moving_mean = running_mean.has_value() ? running_mean->data_ptr<float>() : nullptr;
    float* moving_var = running_var.has_value() ? running_var->data_ptr<float>() : nullptr;
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
    ctx->save_for_backward({x, output, w, mean, inverse_std});
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &output = saved[1], &weight = saved[2];
    const torch::Tensor grad = grad_outputs[0].contiguous();
    const int64_t batch = x.size(0), channels = x.size(1), plane = x.numel() / (batch * channels);
    const double count = static_cast<double>(batch * plane);
    torch::Tensor grad_input = torch::empty_like(x);
    torch::Tensor grad_weight = torch::empty({channels}), grad_bias = torch::empty({channels});
    const float* __restrict in = x.data_ptr<float>();
    const float* __restrict out = output.data_ptr<float>();
    const float* __restrict dy = grad.data_ptr<float>();
    const float* gamma = weight.data_ptr<float>();
    const float* mean = saved[3].data_ptr<float>();
    const float* inverse_std = saved[4].data_ptr<float>();
    float* __restrict dx = grad_input.data_ptr<float>();
    float* dgamma = grad_weight.data_ptr<float>();
    float* dbeta = grad_bias.data_ptr<float>();
    for (int64_t c = 0; c < channels; ++c) {
      // Through ReLU: the gradient flows where the output is positive.
      const float mu = mean[c], inv = inverse_std[c];
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
    return {grad_input, grad_weight, grad_bias, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor BatchNormRelu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                            double epsilon, const torch::Tensor& running_mean, const torch::Tensor& running_var,
                            double momentum) {
  // Optional, not undefined, tensors: autograd takes neither for inputs.
  auto optional = [](const torch::Tensor& t) { return t.defined() ? c10::make_optional(t) : c10::nullopt; };
  return BatchNormReluFunction::apply(x, weight, bias, epsilon, optional(running_mean), optional(running_var), momentum);
}

}  // namespace reptile
