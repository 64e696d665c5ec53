#include "coordinator/aggregator.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace reptile {

Aggregator::Aggregator(int64_t numel, int slots, CarriedMoments carried)
    : numel_(numel), carried_(carried), slots_(slots) {}

absl::Status Aggregator::CheckVector(const torch::Tensor& t, const char* what, int slot) const {
  if (!t.defined() || t.dim() != 1 || t.numel() != numel_ || t.scalar_type() != torch::kFloat32 ||
      !t.is_contiguous())
    return absl::InvalidArgumentError(
        absl::StrCat("slot ", slot, ": ", what, " must be a flat fp32 vector of ", numel_, " values"));
  const float* values = t.data_ptr<float>();
  bool finite = true;
  for (int64_t i = 0; i < numel_; ++i) finite &= std::isfinite(values[i]);
  if (!finite)
    return absl::InvalidArgumentError(absl::StrCat("slot ", slot, ": ", what, " holds NaN or Inf"));
  return absl::OkStatus();
}

absl::Status Aggregator::Add(int slot, TaskResult result) {
  if (slot < 0 || slot >= static_cast<int>(slots_.size()))
    return absl::InvalidArgumentError(absl::StrCat("slot ", slot, " outside the meta-batch of ", slots_.size()));
  if (slots_[slot].has_value()) return absl::AlreadyExistsError(absl::StrCat("slot ", slot, " already has a result"));
  if (result.tensor_items < 0 || result.tensor_items > static_cast<int>(slots_.size()) - slot)
    return absl::InvalidArgumentError(absl::StrCat("slot ", slot, ": tensors summed over ", result.tensor_items,
                                                   " slots reach past the meta-batch of ", slots_.size()));
  if (result.tensor_items == 0) {
    slots_[slot] = std::move(result);
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(CheckVector(result.delta, "delta", slot));
  if (carried_.first) {
    RETURN_IF_ERROR(CheckVector(result.adam_m, "adam_m", slot));
  } else if (result.adam_m.defined()) {
    return absl::InvalidArgumentError(absl::StrCat("slot ", slot, ": unexpected adam_m (not carried)"));
  }
  if (carried_.second) {
    RETURN_IF_ERROR(CheckVector(result.adam_v, "adam_v", slot));
  } else if (result.adam_v.defined()) {
    return absl::InvalidArgumentError(absl::StrCat("slot ", slot, ": unexpected adam_v (not carried)"));
  }
  slots_[slot] = std::move(result);
  return absl::OkStatus();
}

bool Aggregator::complete() const {
  for (const auto& s : slots_)
    if (!s.has_value()) return false;
  return true;
}

absl::Status Aggregator::CheckCoverage() const {
  int still_summed = 0;  // slots left that the last sum covers
  for (size_t slot = 0; slot < slots_.size(); ++slot) {
    const int items = slots_[slot]->tensor_items;
    if ((items == 0) != (still_summed > 0))
      return absl::InvalidArgumentError(absl::StrCat(
          "slot ", slot, items == 0 ? ": has no tensors and no sum covers it" : ": has tensors that a sum covers too"));
    still_summed = items == 0 ? still_summed - 1 : items - 1;
  }
  return absl::OkStatus();
}

std::vector<double> Aggregator::SlotMean(torch::Tensor TaskResult::*field) const {
  std::vector<double> sum(numel_, 0.0);
  for (const auto& slot : slots_) {  // slot order, float64
    if (slot->tensor_items == 0) continue;
    const float* values = ((*slot).*field).data_ptr<float>();
    for (int64_t i = 0; i < numel_; ++i) sum[i] += values[i];
  }
  const double count = static_cast<double>(slots_.size());
  for (double& v : sum) v /= count;
  return sum;
}

absl::Status Aggregator::Apply(double step_size, int inner_iterations, MetaState* state) const {
  if (!complete()) return absl::FailedPreconditionError("aggregator applied before every slot has a result");
  RETURN_IF_ERROR(CheckCoverage());
  if (state->parameters.numel() != numel_ || state->parameters.scalar_type() != torch::kFloat32)
    return absl::InvalidArgumentError("aggregator applied to parameters of another size or dtype");
  const std::vector<double> mean_delta = SlotMean(&TaskResult::delta);
  torch::Tensor parameters = state->parameters.contiguous().clone();
  float* theta = parameters.data_ptr<float>();
  for (int64_t i = 0; i < numel_; ++i) theta[i] = static_cast<float>(theta[i] + step_size * mean_delta[i]);
  state->parameters = parameters;
  if (carried_.second) {
    auto to_tensor = [this](const std::vector<double>& values) {
      torch::Tensor t = torch::empty({numel_}, torch::kFloat32);
      float* out = t.data_ptr<float>();
      for (int64_t i = 0; i < numel_; ++i) out[i] = static_cast<float>(values[i]);
      return t;
    };
    state->adam_m = carried_.first ? to_tensor(SlotMean(&TaskResult::adam_m)) : torch::Tensor();
    state->adam_v = to_tensor(SlotMean(&TaskResult::adam_v));
    state->adam_step += static_cast<int64_t>(inner_iterations) * static_cast<int64_t>(slots_.size());
  }
  return absl::OkStatus();
}

}  // namespace reptile
