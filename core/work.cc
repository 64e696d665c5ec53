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

absl::Status CheckTaskTensors(int64_t numel, int meta_batch, CarriedMoments carried, const torch::Tensor& delta,
                              const torch::Tensor& adam_m, const torch::Tensor& adam_v) {
  auto check = [numel, meta_batch](const torch::Tensor& t, bool wanted, const char* what) -> absl::Status {
    if (!wanted) {
      if (t.defined()) return absl::InvalidArgumentError(absl::StrCat("unexpected ", what, " (not carried)"));
      return absl::OkStatus();
    }
    if (!t.defined() || t.dim() != 1 || t.numel() != numel || t.scalar_type() != torch::kFloat32 ||
        !t.is_contiguous())
      return absl::InvalidArgumentError(absl::StrCat(what, " must be a flat fp32 vector of ", numel, " values"));
    absl::Status in_range = ExactSum::CheckRange(t.data_ptr<float>(), numel, meta_batch);
    if (!in_range.ok()) return absl::InvalidArgumentError(absl::StrCat(what, ": ", in_range.message()));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check(delta, true, "delta"));
  RETURN_IF_ERROR(check(adam_m, carried.first, "adam_m"));
  return check(adam_v, carried.second, "adam_v");
}

namespace {

template <typename Sums>
absl::Status CheckFit(int64_t numel, int meta_batch, CarriedMoments carried, const Sums& other) {
  if (other.carried() != carried) return absl::InvalidArgumentError("tensor sums carry different Adam moments");
  auto fits = [&](const auto& sum) {
    return sum.numel() == numel && sum.max_terms() == meta_batch && sum.terms() == other.tasks();
  };
  if (!fits(other.delta) || (other.adam_m && !fits(*other.adam_m)) || (other.adam_v && !fits(*other.adam_v)))
    return absl::InvalidArgumentError(absl::StrCat("tensor sums of ", other.tasks(), " tasks and ",
                                                   other.delta.numel(), " elements do not fit sums of ", numel,
                                                   " elements for ", meta_batch, " tasks"));
  return absl::OkStatus();
}

// Merges elements [first, first + sums' size) of `other` into `sums`.
template <typename Other>
absl::Status MergeSlices(TensorSums& sums, const Other& other, int64_t first) {
  RETURN_IF_ERROR(sums.delta.MergeSlice(other.delta, first));
  if (sums.adam_m) RETURN_IF_ERROR(sums.adam_m->MergeSlice(*other.adam_m, first));
  if (sums.adam_v) RETURN_IF_ERROR(sums.adam_v->MergeSlice(*other.adam_v, first));
  return absl::OkStatus();
}

// Merges `other`'s sums into `sums`, all or none: whether they fit is
// checked first.
template <typename Other>
absl::Status MergeSums(TensorSums& sums, const Other& other) {
  RETURN_IF_ERROR(CheckFit(sums.delta.numel(), sums.delta.max_terms(), sums.carried(), other));
  if (other.tasks() + sums.tasks() > sums.delta.max_terms())
    return absl::InvalidArgumentError(absl::StrCat("tensor sums of ", other.tasks(), " tasks do not fit a sum of ",
                                                   sums.tasks(), " for ", sums.delta.max_terms()));
  return MergeSlices(sums, other, 0);
}

}  // namespace

absl::Status CheckSumsFit(int64_t numel, int meta_batch, CarriedMoments carried, const TensorSums& sums) {
  return CheckFit(numel, meta_batch, carried, sums);
}

absl::Status CheckSumsFit(int64_t numel, int meta_batch, CarriedMoments carried, const CompactTensorSums& sums) {
  return CheckFit(numel, meta_batch, carried, sums);
}

absl::Status TensorSums::Add(const torch::Tensor& task_delta, const torch::Tensor& task_m,
                             const torch::Tensor& task_v) {
  // Checked before any is added, so that a refusal leaves every sum as it was.
  RETURN_IF_ERROR(CheckTaskTensors(delta.numel(), delta.max_terms(), carried(), task_delta, task_m, task_v));
  return AddSlice(task_delta, task_m, task_v, 0);
}

absl::Status TensorSums::AddSlice(const torch::Tensor& task_delta, const torch::Tensor& task_m,
                                  const torch::Tensor& task_v, int64_t first) {
  RETURN_IF_ERROR(delta.Add(task_delta.data_ptr<float>() + first));
  if (adam_m) RETURN_IF_ERROR(adam_m->Add(task_m.data_ptr<float>() + first));
  if (adam_v) RETURN_IF_ERROR(adam_v->Add(task_v.data_ptr<float>() + first));
  return absl::OkStatus();
}

void TensorSums::Clear() {
  delta.Clear();
  if (adam_m) adam_m->Clear();
  if (adam_v) adam_v->Clear();
}

absl::Status TensorSums::Merge(const TensorSums& other) { return MergeSums(*this, other); }

absl::Status TensorSums::Merge(const CompactTensorSums& other) { return MergeSums(*this, other); }

absl::Status TensorSums::MergeSlice(const TensorSums& other, int64_t first) { return MergeSlices(*this, other, first); }

absl::Status TensorSums::MergeSlice(const CompactTensorSums& other, int64_t first) {
  return MergeSlices(*this, other, first);
}

}  // namespace reptile
