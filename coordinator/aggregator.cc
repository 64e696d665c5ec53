#include "coordinator/aggregator.h"

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace reptile {

Aggregator::Aggregator(int64_t numel, int slots, bool carry) : numel_(numel), carry_(carry), slots_(slots) {}

absl::Status Aggregator::CheckVector(const torch::Tensor& t, const char* what, int slot) const {
  if (!t.defined() || t.dim() != 1 || t.numel() != numel_ || t.scalar_type() != torch::kFloat32)
    return absl::InvalidArgumentError(
        absl::StrCat("slot ", slot, ": ", what, " must be a flat fp32 vector of ", numel_, " values"));
  if (!torch::isfinite(t).all().item<bool>())
    return absl::InvalidArgumentError(absl::StrCat("slot ", slot, ": ", what, " holds NaN or Inf"));
  return absl::OkStatus();
}

absl::Status Aggregator::Add(int slot, TaskResult result) {
  if (slot < 0 || slot >= static_cast<int>(slots_.size()))
    return absl::InvalidArgumentError(absl::StrCat("slot ", slot, " outside the meta-batch of ", slots_.size()));
  if (slots_[slot].has_value()) return absl::AlreadyExistsError(absl::StrCat("slot ", slot, " already has a result"));
  RETURN_IF_ERROR(CheckVector(result.delta, "delta", slot));
  if (carry_) {
    RETURN_IF_ERROR(CheckVector(result.adam_m, "adam_m", slot));
    RETURN_IF_ERROR(CheckVector(result.adam_v, "adam_v", slot));
  }
  slots_[slot] = std::move(result);
  return absl::OkStatus();
}

bool Aggregator::complete() const {
  for (const auto& s : slots_)
    if (!s.has_value()) return false;
  return true;
}

torch::Tensor Aggregator::SlotMean(torch::Tensor TaskResult::*field) const {
  torch::Tensor sum = torch::zeros({numel_}, torch::kFloat64);
  for (const auto& s : slots_) sum.add_((*s).*field);  // slot order, float64
  return sum.div_(static_cast<double>(slots_.size()));
}

absl::Status Aggregator::Apply(double step_size, int inner_iterations, MetaState* state) const {
  if (!complete()) return absl::FailedPreconditionError("aggregator applied before every slot has a result");
  torch::NoGradGuard no_grad;
  torch::Tensor mean_delta = SlotMean(&TaskResult::delta);
  state->parameters = state->parameters.to(torch::kFloat64).add_(mean_delta, step_size).to(torch::kFloat32);
  if (carry_) {
    state->adam_m = SlotMean(&TaskResult::adam_m).to(torch::kFloat32);
    state->adam_v = SlotMean(&TaskResult::adam_v).to(torch::kFloat32);
    state->adam_step += inner_iterations;
  }
  return absl::OkStatus();
}

}  // namespace reptile
