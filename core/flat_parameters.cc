#include "core/flat_parameters.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/fingerprint.h"

namespace reptile {

FlatParameters::FlatParameters(MetaModel& model) {
  torch::NoGradGuard no_grad;
  std::vector<NamedTensor> named = model.FlatTensors();
  constexpr int64_t kAlignment = 64 / sizeof(float);
  auto aligned = [](int64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; };
  int64_t total = 0;
  for (const NamedTensor& item : named) total += aligned(item.second.numel());
  values_ = torch::zeros({total}, torch::kFloat32);
  grads_ = torch::zeros({total}, torch::kFloat32);
  int64_t offset = 0;
  for (NamedTensor& item : named) {
    torch::Tensor& param = item.second;
    const int64_t n = param.numel();
    torch::Tensor slot = values_.narrow(0, offset, n).view(param.sizes());
    slot.copy_(param);
    param.set_data(slot);
    if (param.requires_grad()) param.mutable_grad() = grads_.narrow(0, offset, n).view(param.sizes());
    ParameterShape shape;
    shape.set_name(item.first);
    shape.set_offset(offset);
    for (int64_t d : param.sizes()) shape.add_dims(d);
    layout_.push_back(std::move(shape));
    offset += aligned(n);
  }
}

std::vector<LayerSpan> LayersOf(const std::vector<ParameterShape>& layout) {
  std::vector<LayerSpan> layers;
  for (const ParameterShape& shape : layout) {
    const size_t dot = shape.name().rfind('.');
    const std::string name = dot == std::string::npos ? shape.name() : shape.name().substr(0, dot);
    int64_t numel = 1;
    for (int64_t d : shape.dims()) numel *= d;
    if (layers.empty() || layers.back().name != name) {
      layers.push_back(LayerSpan{name, shape.offset(), shape.offset(), 0});
    }
    layers.back().end = shape.offset() + numel;
    layers.back().parameters += numel;
  }
  return layers;
}

std::string LayoutFingerprint(const std::vector<ParameterShape>& layout) {
  std::string text;
  for (const ParameterShape& shape : layout)
    absl::StrAppend(&text, shape.name(), "[", absl::StrJoin(shape.dims(), ","), "]@", shape.offset(), ";");
  return ToHex(Sha256(text.data(), text.size()));
}

}  // namespace reptile
