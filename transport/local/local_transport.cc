#include "transport/local/local_transport.h"

#include <ATen/Parallel.h>

#include "absl/strings/str_cat.h"
#include "core/process_setup.h"
#include "core/status_macros.h"

namespace reptile {

absl::StatusOr<std::unique_ptr<LocalTransport>> LocalTransport::Create(const ExperimentConfig& config,
                                                                        std::shared_ptr<const TaskSource> tasks,
                                                                        int workers) {
  if (workers < 1) return absl::InvalidArgumentError("local transport needs at least one worker");
  std::unique_ptr<LocalTransport> transport(new LocalTransport());
  for (int i = 0; i < workers; ++i) {
    ASSIGN_OR_RETURN(std::unique_ptr<Learner> learner, Learner::Create(config, tasks));
    transport->learners_.push_back(std::move(learner));
  }
  for (auto& learner : transport->learners_)
    transport->threads_.emplace_back(&LocalTransport::WorkerLoop, transport.get(), learner.get());
  return transport;
}

LocalTransport::~LocalTransport() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

absl::Status LocalTransport::Run(const MetaState& state, const std::vector<WorkItem>& items,
                                 const ResultSink& take) {
  absl::MutexLock lock(&mu_);
  state_ = &state;
  items_ = &items;
  take_ = &take;
  failure_.reset();
  next_item_ = 0;
  unfinished_ = items.size();
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return unfinished_ == 0 || ((!interrupted_.empty() || failure_.has_value()) && running_ == 0);
  };
  mu_.Await(absl::Condition(&done));
  state_ = nullptr;
  items_ = nullptr;
  take_ = nullptr;
  if (failure_.has_value())
    return absl::Status(failure_->second.code(),
                        absl::StrCat("work item ", failure_->first, ": ", failure_->second.message()));
  if (unfinished_ > 0) return absl::CancelledError(interrupted_);
  return absl::OkStatus();
}

TransportStats LocalTransport::Stats() const {
  absl::MutexLock lock(&mu_);
  TransportStats stats;
  stats.workers_alive = num_workers();
  stats.tasks_in_flight = std::min<int>(num_workers(), items_ != nullptr ? static_cast<int>(items_->size()) : 0);
  return stats;
}

void LocalTransport::Interrupt(const std::string& why) {
  absl::MutexLock lock(&mu_);
  interrupted_ = why.empty() ? "interrupted" : why;
}

void LocalTransport::WorkerLoop(Learner* learner) {
  NameThisThread("learner");
  // One intra-op thread per worker: a task's arithmetic, and so its result,
  // must not depend on how many threads share the machine.
  at::set_num_threads(1);
  auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ ||
           (items_ != nullptr && interrupted_.empty() && !failure_.has_value() && next_item_ < items_->size());
  };
  absl::MutexLock lock(&mu_);
  while (true) {
    mu_.Await(absl::Condition(&has_work));
    if (stopping_) return;
    const size_t index = next_item_++;
    const MetaState* state = state_;
    const WorkItem& item = (*items_)[index];
    const ResultSink* take = take_;
    ++running_;
    mu_.Unlock();
    absl::StatusOr<TaskResult> result = learner->Run(*state, item);
    absl::Status taken = result.status();
    if (result.ok()) {
      absl::MutexLock take_lock(&take_mu_);
      taken = (*take)(index, *std::move(result));
    }
    mu_.Lock();
    --running_;
    --unfinished_;
    if (!taken.ok() && (!failure_.has_value() || index < failure_->first)) failure_.emplace(index, taken);
  }
}

}  // namespace reptile
