// Combines one round's work item results into the outer update. Tensors are
// added into exact sums (core/exact_sum.h) as they come, so the update is
// bitwise the same for any worker count, grouping of tasks into items or
// sums, and arrival order. Each result is checked (shapes, dtype, finite and
// in-range values, the tasks it covers) before any of it is added. A result
// may carry the sums over several items (summed_with); those items' own
// results then carry scalars only.
//
// Add() may be called from several threads at once: the sums are kept in
// slices of the vector (shards), each under its own lock, and a result is
// added one shard after another, so results from several threads are added
// on as many cores. complete() and Apply() come after every Add() returned.
#ifndef REPTILE_CORE_AGGREGATOR_H_
#define REPTILE_CORE_AGGREGATOR_H_

#include <atomic>
#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "core/work.h"

namespace reptile {

class Aggregator {
 public:
  // Elements per shard, a multiple of ExactSum::kCompactBlock (compact sums
  // are sliced on their blocks): about 40 us of adding, far more than a
  // lock costs.
  static constexpr int64_t kShardElements = 4096;

  // `item_tasks[i]`: the training tasks of item i; the meta-batch is their
  // sum. `carried`: which Adam moments the results must hold (and no
  // others), to be averaged into the state; the caller decides from the
  // config. `shard_elements` is rounded up to a multiple of kCompactBlock.
  Aggregator(int64_t numel, std::vector<int> item_tasks, CarriedMoments carried,
             int64_t shard_elements = kShardElements);

  // InvalidArgument for a malformed result or item index, sums over items
  // outside the batch or already covered by another result, or whose task
  // count does not match the items they cover; AlreadyExists for an item
  // that already has a result, or one being added (the first one is kept).
  // A refused result adds nothing. Thread-safe.
  absl::Status Add(int item, TaskResult result);

  bool complete() const;

  // theta += step_size * mean(delta) over the meta-batch's tasks; in CARRY
  // mode the carried moments (v, and m unless adam_beta1 is 0; an m not
  // carried is left undefined) become the mean of the tasks' final moments
  // and the step count advances by `inner_iterations` per task, as the
  // reference code's one Adam does when it runs a meta-batch's tasks one
  // after another. FailedPrecondition unless complete().
  absl::Status Apply(double step_size, int inner_iterations, MetaState* state) const;

  int num_shards() const { return static_cast<int>(shards_.size()); }

 private:
  // The round's sums of elements [first, first + sums.delta.numel()).
  struct Shard {
    Shard(int64_t first, int64_t numel, int meta_batch, CarriedMoments carried)
        : first(first), sums(numel, meta_batch, carried) {}
    const int64_t first;
    absl::Mutex mu;
    TensorSums sums ABSL_GUARDED_BY(mu);
  };

  // Checks `result` for item `item` against the round and, if it is taken,
  // marks the items whose tensors it holds as covered (under mu_): the
  // shards' adds that follow cannot be refused.
  absl::Status Reserve(int item, const TaskResult& result) ABSL_LOCKS_EXCLUDED(mu_);
  // Adds the tensors of a reserved result into every shard, taking free
  // shards first.
  absl::Status AddToShards(const TaskResult& result);
  static absl::Status AddToShard(const TaskResult& result, Shard& shard) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  // Every item's tensors are in a result: its own or a sum's.
  absl::Status CheckCoverage() const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const int64_t numel_;
  const std::vector<int> item_tasks_;
  const int meta_batch_;
  const CarriedMoments carried_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::atomic<size_t> next_first_shard_{0};  // where the next Add starts, to spread them over the shards

  mutable absl::Mutex mu_;
  std::vector<bool> taken_ ABSL_GUARDED_BY(mu_);     // per item: a result was reserved for it
  std::vector<bool> received_ ABSL_GUARDED_BY(mu_);  // per item: its result is in
  std::vector<std::optional<int>> covered_by_ ABSL_GUARDED_BY(mu_);  // per item: the item whose result holds its tensors
  absl::Status broken_ ABSL_GUARDED_BY(mu_);  // a shard refused what was reserved: the sums are partial
};

}  // namespace reptile

#endif  // REPTILE_CORE_AGGREGATOR_H_
