#include "core/aggregator.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

// `why`, as InvalidArgument naming the item a result was refused for.
absl::Status Refusal(int item, const absl::Status& why) {
  return absl::InvalidArgumentError(absl::StrCat("item ", item, ": ", why.message()));
}

}  // namespace

Aggregator::Aggregator(int64_t numel, std::vector<int> item_tasks, CarriedMoments carried, int64_t shard_elements)
    : numel_(numel),
      item_tasks_(std::move(item_tasks)),
      meta_batch_(std::accumulate(item_tasks_.begin(), item_tasks_.end(), 0)),
      carried_(carried),
      taken_(item_tasks_.size()),
      received_(item_tasks_.size()),
      covered_by_(item_tasks_.size()) {
  const int64_t block = ExactSum::kCompactBlock;
  const int64_t step = std::max<int64_t>((shard_elements + block - 1) / block * block, block);
  for (int64_t first = 0; first < numel || first == 0; first += step)
    shards_.push_back(std::make_unique<Shard>(first, std::min(step, numel - first), meta_batch_, carried));
}

absl::Status Aggregator::Add(int item, TaskResult result) {
  const int items = static_cast<int>(item_tasks_.size());
  if (item < 0 || item >= items)
    return absl::InvalidArgumentError(absl::StrCat("item ", item, " outside the batch of ", items));
  // What the tensors hold is checked first, outside the lock: the range
  // check reads every value.
  auto refuse = [item](const absl::Status& status) { return Refusal(item, status); };
  const bool fp32 = result.delta.defined() || result.adam_m.defined() || result.adam_v.defined();
  const int forms = (fp32 ? 1 : 0) + (result.sums.has_value() ? 1 : 0) + (result.compact_sums.has_value() ? 1 : 0);
  if (result.tensors_elsewhere && (forms > 0 || !result.summed_with.empty()))
    return refuse(absl::InvalidArgumentError("carries tensors, but says another result holds them"));
  if (forms > 1) return refuse(absl::InvalidArgumentError("carries its tensors in more than one form"));
  absl::Status form = absl::OkStatus();
  if (result.sums.has_value()) {
    form = CheckSumsFit(numel_, meta_batch_, carried_, *result.sums);
  } else if (result.compact_sums.has_value()) {
    form = CheckSumsFit(numel_, meta_batch_, carried_, *result.compact_sums);
  } else if (!result.tensors_elsewhere) {
    form = CheckTaskTensors(numel_, meta_batch_, carried_, result.delta, result.adam_m, result.adam_v);
  }
  if (!form.ok()) return refuse(form);
  RETURN_IF_ERROR(Reserve(item, result));
  const absl::Status added = result.tensors_elsewhere ? absl::OkStatus() : AddToShards(result);
  absl::MutexLock lock(&mu_);
  if (!added.ok()) {
    broken_ = absl::InternalError(absl::StrCat("item ", item, " was added in part: ", added.message()));
    return broken_;
  }
  received_[item] = true;
  return absl::OkStatus();
}

absl::Status Aggregator::Reserve(int item, const TaskResult& result) {
  absl::MutexLock lock(&mu_);
  if (taken_[item]) return absl::AlreadyExistsError(absl::StrCat("item ", item, " already has a result"));
  auto refuse = [item](const absl::Status& status) { return Refusal(item, status); };
  const int items = static_cast<int>(item_tasks_.size());
  if (result.tensors_elsewhere) {
    taken_[item] = true;
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
  if (result.sums.has_value() || result.compact_sums.has_value()) {
    const int summed = result.sums ? result.sums->tasks() : result.compact_sums->tasks();
    if (summed != tasks)
      return refuse(absl::InvalidArgumentError(absl::StrCat("sums of ", summed, " tasks, but the items cover ", tasks)));
  } else if (tasks != 1) {
    return refuse(absl::InvalidArgumentError(
        absl::StrCat("fp32 tensors of one task, but the items cover ", tasks, " (exact sums expected)")));
  }
  for (int other : covered) covered_by_[other] = item;
  taken_[item] = true;
  return absl::OkStatus();
}

absl::Status Aggregator::AddToShards(const TaskResult& result) {
  // Each call starts at another shard, and takes the shards that are free
  // before waiting for one: calls on several threads add side by side.
  const size_t count = shards_.size();
  const size_t start = next_first_shard_.fetch_add(1, std::memory_order_relaxed) % count;
  std::vector<bool> done(count, false);
  absl::Status status = absl::OkStatus();
  for (size_t left = count; left > 0;) {
    bool progressed = false;
    for (size_t k = 0; k < count; ++k) {
      Shard& shard = *shards_[(start + k) % count];
      if (done[(start + k) % count] || !shard.mu.TryLock()) continue;
      status.Update(AddToShard(result, shard));
      shard.mu.Unlock();
      done[(start + k) % count] = true;
      progressed = true;
      --left;
    }
    if (progressed || left == 0) continue;
    size_t k = 0;  // every shard left is busy: wait for the first of them
    while (done[(start + k) % count]) ++k;
    Shard& shard = *shards_[(start + k) % count];
    absl::MutexLock lock(&shard.mu);
    status.Update(AddToShard(result, shard));
    done[(start + k) % count] = true;
    --left;
  }
  return status;
}

absl::Status Aggregator::AddToShard(const TaskResult& result, Shard& shard) {
  if (result.sums.has_value()) return shard.sums.MergeSlice(*result.sums, shard.first);
  if (result.compact_sums.has_value()) return shard.sums.MergeSlice(*result.compact_sums, shard.first);
  return shard.sums.AddSlice(result.delta, result.adam_m, result.adam_v, shard.first);
}

bool Aggregator::complete() const {
  absl::MutexLock lock(&mu_);
  return std::all_of(received_.begin(), received_.end(), [](bool received) { return received; });
}

absl::Status Aggregator::CheckCoverage() const {
  for (size_t item = 0; item < covered_by_.size(); ++item)
    if (!covered_by_[item].has_value())
      return absl::InvalidArgumentError(absl::StrCat("item ", item, ": has no tensors and no sum covers it"));
  return absl::OkStatus();
}

absl::Status Aggregator::Apply(double step_size, int inner_iterations, MetaState* state) const {
  {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(broken_);  // first: an item added in part is never received
  }
  if (!complete()) return absl::FailedPreconditionError("aggregator applied before every item has a result");
  {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(CheckCoverage());
  }
  if (state->parameters.numel() != numel_ || state->parameters.scalar_type() != torch::kFloat32)
    return absl::InvalidArgumentError("aggregator applied to parameters of another size or dtype");
  const double tasks = static_cast<double>(meta_batch_);
  torch::Tensor parameters = state->parameters.contiguous().clone();
  torch::Tensor adam_m, adam_v;
  if (carried_.first) adam_m = torch::empty({numel_}, torch::kFloat32);
  if (carried_.second) adam_v = torch::empty({numel_}, torch::kFloat32);
  auto mean = [tasks](const std::optional<ExactSum>& sum, const torch::Tensor& into, int64_t first) {
    if (!sum.has_value()) return;
    float* out = into.data_ptr<float>() + first;
    for (int64_t i = 0; i < sum->numel(); ++i) out[i] = static_cast<float>(sum->Quotient(i, tasks));
  };
  for (const std::unique_ptr<Shard>& shard : shards_) {
    absl::MutexLock lock(&shard->mu);
    const ExactSum& delta = shard->sums.delta;
    float* theta = parameters.data_ptr<float>() + shard->first;
    for (int64_t i = 0; i < delta.numel(); ++i)
      theta[i] = static_cast<float>(theta[i] + step_size * delta.Quotient(i, tasks));
    mean(shard->sums.adam_m, adam_m, shard->first);
    mean(shard->sums.adam_v, adam_v, shard->first);
  }
  state->parameters = parameters;
  if (carried_.second) {
    state->adam_m = adam_m;
    state->adam_v = adam_v;
    state->adam_step += static_cast<int64_t>(inner_iterations) * meta_batch_;
  }
  return absl::OkStatus();
}

}  // namespace reptile
