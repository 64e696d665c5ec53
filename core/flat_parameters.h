// Lays a model's parameters, and their gradients, out as views into one
// contiguous fp32 vector each, so that copying theta in, taking the delta and
// the optimizer update are single tensor operations on the whole model.
// Each parameter starts on a 64-byte boundary (oneDNN's convolutions run
// markedly slower on misaligned weights); the padding between stays zero.
// Not thread-safe; the module must outlive this object.
#ifndef REPTILE_CORE_FLAT_PARAMETERS_H_
#define REPTILE_CORE_FLAT_PARAMETERS_H_

#include <string>
#include <vector>

#include <torch/types.h>

#include "core/models/models.h"
#include "reptile.pb.h"

namespace reptile {

class FlatParameters {
 public:
  // Re-points every tensor of `model.FlatTensors()` (in that order) into the
  // flat buffers, and the gradients of those that take one. Current values
  // are kept.
  explicit FlatParameters(MetaModel& model);

  // The parameters, [numel]. Writing into it changes the module.
  torch::Tensor& values() { return values_; }
  // The gradients, [numel]; backward() accumulates into it.
  torch::Tensor& grads() { return grads_; }
  int64_t numel() const { return values_.numel(); }

  // Names, shapes and offsets in flat order, as stored in checkpoints.
  const std::vector<ParameterShape>& layout() const { return layout_; }

 private:
  torch::Tensor values_;
  torch::Tensor grads_;
  std::vector<ParameterShape> layout_;
};

// A layer: the consecutive parameters of one module, named by what comes
// before the last '.' of their names ("conv0.weight" and "conv0.bias" are
// layer "conv0"). Offsets are into the flat vector; `end` is one past the
// layer's last value (padding between its tensors, always zero, included).
struct LayerSpan {
  std::string name;
  int64_t begin = 0, end = 0;
  int64_t parameters = 0;  // values, padding excluded
};

// The layers of `layout`, in flat order.
std::vector<LayerSpan> LayersOf(const std::vector<ParameterShape>& layout);

// SHA-256 over the layout's names, shapes and offsets: equal for two
// processes only if their models lay theta out identically.
std::string LayoutFingerprint(const std::vector<ParameterShape>& layout);

}  // namespace reptile

#endif  // REPTILE_CORE_FLAT_PARAMETERS_H_
