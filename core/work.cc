#include "core/work.h"

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace reptile {

CarriedMoments CarriedMomentsOf(const ExperimentConfig& config) {
  CarriedMoments carried;
  carried.second = config.inner().optimizer() == ADAM && config.inner().state_mode() == CARRY;
  carried.first = carried.second && config.inner().adam_beta1() != 0;
  return carried;
}

CarriedMoments CarriedMomentsOf(const MetaState& state) {
  CarriedMoments carried;
  carried.first = state.adam_m.defined();
  carried.second = state.adam_v.defined();
  return carried;
}

TensorSums::TensorSums(int64_t numel, int meta_batch, CarriedMoments carried) : delta(numel, meta_batch) {
  if (carried.first) adam_m.emplace(numel, meta_batch);
  if (carried.second) adam_v.emplace(numel, meta_batch);
}

absl::Status TensorSums::Add(const torch::Tensor& task_delta, const torch::Tensor& task_m,
                             const torch::Tensor& task_v) {
  const int64_t numel = delta.numel();
  auto check = [numel](const torch::Tensor& t, bool wanted, const char* what) -> absl::Status {
    if (!wanted) {
      if (t.defined()) return absl::InvalidArgumentError(absl::StrCat("unexpected ", what, " (not carried)"));
      return absl::OkStatus();
    }
    if (!t.defined() || t.dim() != 1 || t.numel() != numel || t.scalar_type() != torch::kFloat32 ||
        !t.is_contiguous())
      return absl::InvalidArgumentError(absl::StrCat(what, " must be a flat fp32 vector of ", numel, " values"));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check(task_delta, true, "delta"));
  RETURN_IF_ERROR(check(task_m, adam_m.has_value(), "adam_m"));
  RETURN_IF_ERROR(check(task_v, adam_v.has_value(), "adam_v"));
  // Checked before any is added, so that a refusal leaves every sum as it was.
  auto in_range = [](const ExactSum& sum, const torch::Tensor& t, const char* what) -> absl::Status {
    absl::Status status = sum.CheckRange(t.data_ptr<float>());
    if (!status.ok()) return absl::InvalidArgumentError(absl::StrCat(what, ": ", status.message()));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(in_range(delta, task_delta, "delta"));
  if (adam_m) RETURN_IF_ERROR(in_range(*adam_m, task_m, "adam_m"));
  if (adam_v) RETURN_IF_ERROR(in_range(*adam_v, task_v, "adam_v"));
  RETURN_IF_ERROR(delta.Add(task_delta.data_ptr<float>()));
  if (adam_m) RETURN_IF_ERROR(adam_m->Add(task_m.data_ptr<float>()));
  if (adam_v) RETURN_IF_ERROR(adam_v->Add(task_v.data_ptr<float>()));
  return absl::OkStatus();
}

namespace {

// Merges `other`'s sums into `sums`, all or none: whether they fit is
// checked first (each tensor's sum has the delta's size and capacity).
template <typename Other>
absl::Status MergeSums(TensorSums& sums, const Other& other) {
  if (other.carried() != sums.carried())
    return absl::InvalidArgumentError("tensor sums carry different Adam moments");
  auto fits = [&sums, &other](const auto& sum) {
    return sum.numel() == sums.delta.numel() && sum.max_terms() == sums.delta.max_terms() &&
           sum.terms() == other.tasks() && other.tasks() + sums.tasks() <= sums.delta.max_terms();
  };
  if (!fits(other.delta) || (other.adam_m && !fits(*other.adam_m)) || (other.adam_v && !fits(*other.adam_v)))
    return absl::InvalidArgumentError(absl::StrCat("tensor sums of ", other.tasks(), " tasks and ",
                                                   other.delta.numel(), " elements do not fit a sum of ",
                                                   sums.tasks(), " tasks and ", sums.delta.numel()));
  RETURN_IF_ERROR(sums.delta.Merge(other.delta));
  if (sums.adam_m) RETURN_IF_ERROR(sums.adam_m->Merge(*other.adam_m));
  if (sums.adam_v) RETURN_IF_ERROR(sums.adam_v->Merge(*other.adam_v));
  return absl::OkStatus();
}

}  // namespace

absl::Status TensorSums::Merge(const TensorSums& other) { return MergeSums(*this, other); }

absl::Status TensorSums::Merge(const CompactTensorSums& other) { return MergeSums(*this, other); }

}  // namespace reptile
