// The MPI runtime, for jobs launched with mpirun or Slurm. Rank 0 runs the
// round engine with an MpiTransport; every other rank runs RunMpiWorker().
// Each batch begins with one broadcast of the work items (and of the
// meta-state, unless every rank holds it already); item i is computed by a
// fixed rank (i modulo the working ranks). runtime.mpi_reduction chooses how
// training results come together: each item's result to rank 0, or each
// rank's exact partial sum combined by MPI_Reduce, or by MPI_Allreduce, after
// which every rank applies the update to its own copy of the state and the
// next round needs no state broadcast. Sums are exact (core/exact_sum.h), so
// every mode and job size gives the bits of the other transports. MPI jobs
// are not elastic: a rank that dies ends the job (mpirun reports which), and
// the relaunched job resumes from the last checkpoint. A rank that does not
// answer (most often a network interface the ranks cannot reach each other
// on) ends it too: rank 0 gives up after a deadline, says which rank and why,
// and aborts the job.
#ifndef REPTILE_TRANSPORT_MPI_MPI_TRANSPORT_H_
#define REPTILE_TRANSPORT_MPI_MPI_TRANSPORT_H_

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "core/work.h"
#include "transport/transport.h"
#include "worker/learner.h"

namespace reptile {

// MPI_Init on construction (MPI_Finalize when destroyed): one per process.
class MpiJob {
 public:
  MpiJob();
  ~MpiJob();
  MpiJob(const MpiJob&) = delete;
  MpiJob& operator=(const MpiJob&) = delete;
  int rank() const { return rank_; }
  int size() const { return size_; }
  // Ends every rank of the job at once (a worker rank that cannot go on,
  // rank 0 when another rank does not answer).
  [[noreturn]] void Abort(int code);
  // True once rank 0 gave up waiting for a rank (a DeadlineExceeded error
  // from ShareConfigOverMpi or MpiTransport): MPI requests are left pending,
  // so the job must end with Abort(); the destructor aborts (code 1) rather
  // than finalize then.
  bool stalled() const;

 private:
  int rank_ = 0, size_ = 1;
};

// Rank 0 passes the run's config, the others nullopt; every rank returns it.
// Rank 0 passes nullopt too when it failed to set the run up: then every
// rank gets an error and the job ends without training. Each rank first
// greets rank 0; rank 0 returns DeadlineExceeded, naming the ranks it did
// not hear from, the likely cause (a network interface the ranks cannot
// reach each other on) and how to choose interfaces, when the greetings or
// the broadcast take longer than runtime.mpi_connect_timeout_seconds (60 s
// when rank 0 has no config). The other ranks wait for rank 0 however long:
// mpirun kills them when rank 0 aborts the job. A TORCHSCRIPT run's model
// follows the config (at most 4 GiB), and every rank checks it against the
// config's SHA-256 before its learners load it.
absl::StatusOr<ExperimentConfig> ShareConfigOverMpi(const std::optional<ExperimentConfig>& config);

class MpiTransport final : public Transport {
 public:
  // On rank 0 of MPI_COMM_WORLD, after ShareConfigOverMpi(). Rank 0 works
  // too when runtime.mpi_rank0_works is set (always with a single rank).
  // Returns once every rank has loaded the dataset and built its learner;
  // DeadlineExceeded naming the ranks that have not within one work item's
  // time (runtime.task_timeout_seconds + runtime.mpi_connect_timeout_seconds),
  // and MpiJob::stalled() is then true.
  static absl::StatusOr<std::unique_ptr<MpiTransport>> Create(const ExperimentConfig& config,
                                                              std::shared_ptr<const TaskSource> tasks);
  // Tells the worker ranks the run is over (not once stalled: the job is
  // then to be aborted).
  ~MpiTransport() override;
  MpiTransport(const MpiTransport&) = delete;
  MpiTransport& operator=(const MpiTransport&) = delete;

  // Deadlines: each broadcast that opens the batch has
  // runtime.mpi_connect_timeout_seconds (60); a rank's k-th item of the
  // batch is due k times runtime.task_timeout_seconds (600) after them, plus
  // that. Past one, DeadlineExceeded naming the rank where it is known (a
  // result), the likely cause and the interface settings; MpiJob::stalled()
  // is then true and the job must be aborted.
  absl::Status Run(const MetaState& state, const std::vector<WorkItem>& items, const ResultSink& take) override;
  void AnnounceUpdate(double step_size, int inner_iterations) override;
  int num_workers() const override { return static_cast<int>(working_ranks_.size()); }
  TransportStats Stats() const override { return stats_; }
  // Takes effect at the next batch: a batch in progress cannot be abandoned
  // without a dead rank ending the job anyway.
  void Interrupt(const std::string& why) override;

 private:
  MpiTransport() = default;
  // Rank 0's own share of a batch (none unless it works), each result moved
  // into `sums` in the summed modes (if not null); the other items' results
  // are left "not run".
  std::vector<absl::StatusOr<TaskResult>> RunOwnItems(const MetaState& state, const std::vector<WorkItem>& items,
                                                      TensorSums* sums);
  std::vector<int> working_ranks_;
  MpiReduction reduction_ = MPI_GATHER_IN_ORDER;
  int meta_batch_ = 1;
  double step_size_ = 0;  // of the next training batch (AnnounceUpdate)
  int inner_iterations_ = 0;
  std::chrono::steady_clock::duration connect_timeout_{}, item_timeout_{};
  std::unique_ptr<Learner> learner_;  // rank 0's own, if it works
  TransportStats stats_;
  absl::Mutex mu_;
  std::string interrupted_ ABSL_GUARDED_BY(mu_);
};

// The loop of ranks 1..N-1: runs their share of every batch until rank 0
// says the run is over.
absl::Status RunMpiWorker(const ExperimentConfig& config, std::shared_ptr<const TaskSource> tasks);

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_MPI_MPI_TRANSPORT_H_
