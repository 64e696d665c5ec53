// Runs work items on W threads of this process, each with its own Learner
// (model replica) and one intra-op LibTorch thread. Items are taken from a
// shared queue in any order; each result is handed over by the thread that
// computed it, while the others go on computing.
#ifndef REPTILE_TRANSPORT_LOCAL_LOCAL_TRANSPORT_H_
#define REPTILE_TRANSPORT_LOCAL_LOCAL_TRANSPORT_H_

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "transport/transport.h"
#include "worker/learner.h"

namespace reptile {

class LocalTransport final : public Transport {
 public:
  // Starts `workers` threads; fails if a learner cannot be built.
  static absl::StatusOr<std::unique_ptr<LocalTransport>> Create(const ExperimentConfig& config,
                                                                std::shared_ptr<const TaskSource> tasks,
                                                                int workers);
  ~LocalTransport() override;
  LocalTransport(const LocalTransport&) = delete;
  LocalTransport& operator=(const LocalTransport&) = delete;

  absl::Status Run(const MetaState& state, const std::vector<WorkItem>& items, const ResultSink& take) override;
  int num_workers() const override { return static_cast<int>(threads_.size()); }
  TransportStats Stats() const override;
  void Interrupt(const std::string& why) override;

 private:
  LocalTransport() = default;
  void WorkerLoop(Learner* learner);

  mutable absl::Mutex mu_;
  // The batch being run; null between calls to Run().
  const MetaState* state_ ABSL_GUARDED_BY(mu_) = nullptr;
  const std::vector<WorkItem>* items_ ABSL_GUARDED_BY(mu_) = nullptr;
  const ResultSink* take_ ABSL_GUARDED_BY(mu_) = nullptr;
  // The failed item of lowest index, if any: no more items are started.
  std::optional<std::pair<size_t, absl::Status>> failure_ ABSL_GUARDED_BY(mu_);
  size_t next_item_ ABSL_GUARDED_BY(mu_) = 0;
  size_t unfinished_ ABSL_GUARDED_BY(mu_) = 0;
  int running_ ABSL_GUARDED_BY(mu_) = 0;             // items being computed or handed over
  std::string interrupted_ ABSL_GUARDED_BY(mu_);     // why, once Interrupt() was called
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex take_mu_;  // one result handed over at a time; taken without mu_

  std::vector<std::unique_ptr<Learner>> learners_;
  std::vector<std::thread> threads_;
};

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_LOCAL_LOCAL_TRANSPORT_H_
