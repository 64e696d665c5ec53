#include "core/models/batch_norm_relu.h"

#include <torch/autograd.h>

#include "core/models/batch_norm_relu_kernels.h"

namespace reptile {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

BatchNormShape ShapeOf(const torch::Tensor& x) {
  const int64_t batch = x.size(0), channels = x.size(1);
  return {batch, channels, x.numel() / (batch * channels)};
}

class BatchNormReluFunction : public torch::autograd::Function<BatchNormReluFunction> {
 public:
  // Saves x, the output (its sign is ReLU's mask), and per channel the mean
  // and 1 / sqrt(var + epsilon).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input, const torch::Tensor& weight,
                               const torch::Tensor& bias, double epsilon,
                               const c10::optional<torch::Tensor>& running_mean,
                               const c10::optional<torch::Tensor>& running_var, double momentum) {
    const torch::Tensor x = input.contiguous();
    const BatchNormShape shape = ShapeOf(x);
    torch::Tensor output = torch::empty_like(x);
    torch::Tensor mean = torch::empty({shape.channels}), inverse_std = torch::empty({shape.channels});
    const torch::Tensor w = weight.contiguous(), b = bias.contiguous();
    BatchNormReluForward(shape, x.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(), epsilon,
                         output.data_ptr<float>(), mean.data_ptr<float>(), inverse_std.data_ptr<float>(),
                         running_mean.has_value() ? running_mean->data_ptr<float>() : nullptr,
                         running_var.has_value() ? running_var->data_ptr<float>() : nullptr, momentum);
    ctx->save_for_backward({x, output, w, mean, inverse_std});
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &output = saved[1], &weight = saved[2];
    const torch::Tensor grad = grad_outputs[0].contiguous();
    const BatchNormShape shape = ShapeOf(x);
    torch::Tensor grad_input = torch::empty_like(x);
    torch::Tensor grad_weight = torch::empty({shape.channels}), grad_bias = torch::empty({shape.channels});
    BatchNormReluBackward(shape, x.data_ptr<float>(), output.data_ptr<float>(), grad.data_ptr<float>(),
                          weight.data_ptr<float>(), saved[3].data_ptr<float>(), saved[4].data_ptr<float>(),
                          grad_input.data_ptr<float>(), grad_weight.data_ptr<float>(), grad_bias.data_ptr<float>());
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
