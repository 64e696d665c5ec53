#include "core/aggregator.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace reptile {

Aggregator::Aggregator(int64_t numel, std::vector<int> item_tasks, CarriedMoments carried)
    : numel_(numel),
      item_tasks_(std::move(item_tasks)),
      meta_batch_(std::accumulate(item_tasks_.begin(), item_tasks_.end(), 0)),
      received_(item_tasks_.size()),
      covered_by_(item_tasks_.size()),
      sums_(numel, meta_batch_, carried) {}

absl::Status Aggregator::Add(int item, TaskResult result) {
  const int items = static_cast<int>(item_tasks_.size());
  if (item < 0 || item >= items)
    return absl::InvalidArgumentError(absl::StrCat("item ", item, " outside the batch of ", items));
  if (received_[item]) return absl::AlreadyExistsError(absl::StrCat("item ", item, " already has a result"));
  auto refuse = [item](const absl::Status& status) {
    return absl::InvalidArgumentError(absl::StrCat("item ", item, ": ", status.message()));
  };
  if (result.tensors_elsewhere) {
    if (result.sums.has_value() || result.compact_sums.has_value() || result.delta.defined() ||
        result.adam_m.defined() || result.adam_v.defined() || !result.summed_with.empty())
      return refuse(absl::InvalidArgumentError("carries tensors, but says another result holds them"));
    received_[item] = true;
    return absl::OkStatus();
  }
  std::vector<int> covered = {item};
  covered.insert(covered.end(), result.summed_with.begin(), result.summed_with.end());
  int tasks = 0;
  for (size_t k = 0; k < covered.size(); ++k) {
    const int other = covered[k];
    if (other < 0 || other >= items)
      return refuse(absl::InvalidArgumentError(absl::StrCat("sums over item ", other, " outside the batch of ", items)));
    if (covered_by_[other].has_value() || std::find(covered.begin(), covered.begin() + k, other) != covered.begin() + k)
      return refuse(absl::InvalidArgumentError(absl::StrCat("sums over item ", other, ", whose tensors are already in")));
    tasks += item_tasks_[other];
  }
  const int forms = (result.delta.defined() || result.adam_m.defined() || result.adam_v.defined() ? 1 : 0) +
                    (result.sums.has_value() ? 1 : 0) + (result.compact_sums.has_value() ? 1 : 0);
  if (forms > 1) return refuse(absl::InvalidArgumentError("carries its tensors in more than one form"));
  if (result.sums.has_value() || result.compact_sums.has_value()) {
    const int summed = result.sums ? result.sums->tasks() : result.compact_sums->tasks();
    if (summed != tasks)
      return refuse(absl::InvalidArgumentError(absl::StrCat("sums of ", summed, " tasks, but the items cover ", tasks)));
    absl::Status merged = result.sums ? sums_.Merge(*result.sums) : sums_.Merge(*result.compact_sums);
    if (!merged.ok()) return refuse(merged);
  } else {
    if (tasks != 1)
      return refuse(absl::InvalidArgumentError(
          absl::StrCat("fp32 tensors of one task, but the items cover ", tasks, " (exact sums expected)")));
    absl::Status added = sums_.Add(result.delta, result.adam_m, result.adam_v);
    if (!added.ok()) return refuse(added);
  }
  for (int other : covered) covered_by_[other] = item;
  received_[item] = true;
  return absl::OkStatus();
}

bool Aggregator::complete() const {
  return std::all_of(received_.begin(), received_.end(), [](bool received) { return received; });
}

absl::Status Aggregator::CheckCoverage() const {
  for (size_t item = 0; item < covered_by_.size(); ++item)
    if (!covered_by_[item].has_value())
      return absl::InvalidArgumentError(absl::StrCat("item ", item, ": has no tensors and no sum covers it"));
  return absl::OkStatus();
}

absl::Status Aggregator::Apply(double step_size, int inner_iterations, MetaState* state) const {
  if (!complete()) return absl::FailedPreconditionError("aggregator applied before every item has a result");
  RETURN_IF_ERROR(CheckCoverage());
  if (state->parameters.numel() != numel_ || state->parameters.scalar_type() != torch::kFloat32)
    return absl::InvalidArgumentError("aggregator applied to parameters of another size or dtype");
  const double tasks = static_cast<double>(meta_batch_);
  torch::Tensor parameters = state->parameters.contiguous().clone();
  float* theta = parameters.data_ptr<float>();
  for (int64_t i = 0; i < numel_; ++i)
    theta[i] = static_cast<float>(theta[i] + step_size * sums_.delta.Quotient(i, tasks));
  state->parameters = parameters;
  auto mean = [this, tasks](const std::optional<ExactSum>& sum) {
    if (!sum.has_value()) return torch::Tensor();
    torch::Tensor t = torch::empty({numel_}, torch::kFloat32);
    float* out = t.data_ptr<float>();
    for (int64_t i = 0; i < numel_; ++i) out[i] = static_cast<float>(sum->Quotient(i, tasks));
    return t;
  };
  if (sums_.adam_v.has_value()) {
    state->adam_m = mean(sums_.adam_m);
    state->adam_v = mean(sums_.adam_v);
    state->adam_step += static_cast<int64_t>(inner_iterations) * meta_batch_;
  }
  return absl::OkStatus();
}

}  // namespace reptile
