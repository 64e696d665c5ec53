// Pieces the gRPC benchmarks share: timing and CPU readings, raw loopback TCP,
// a transport wrapper that times each Run(), and simulated workers that speak
// the real protocol through CoordinatorClient but skip the learner. Benchmark
// code: failures end the process with a message (Die), nothing is returned
// as an error. Thread-safe where noted.
#ifndef REPTILE_BENCH_BENCH_SUPPORT_H_
#define REPTILE_BENCH_BENCH_SUPPORT_H_

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "coordinator.grpc.pb.h"
#include "transport/transport.h"

namespace reptile {

using BenchClock = std::chrono::steady_clock;

inline double Seconds(BenchClock::time_point since) {
  return std::chrono::duration<double>(BenchClock::now() - since).count();
}

// CPU seconds (user + system) of this process, all threads.
double ProcessCpuSeconds();
// CPU seconds (user + system) of `pid` so far, all its threads, from /proc.
double ProcessCpuSeconds(pid_t pid);
// CPU seconds per thread name (/proc/self/task/*/comm) of this process; the
// calling thread is listed as "(this thread)". 10 ms ticks.
std::map<std::string, double> ThreadCpuSecondsByName();

std::string LoadAverage();  // "1 5 15" minutes, from /proc/loadavg
std::string Now();          // local date and time

[[noreturn]] void Die(const std::string& what);

template <typename T>
T OrDie(absl::StatusOr<T> value, const char* what) {
  if (!value.ok()) Die(absl::StrCat(what, ": ", value.status().ToString()));
  return *std::move(value);
}

double Median(std::vector<double> v);
double Max(const std::vector<double>& v);

// Moves `total` bytes from one thread to another over 127.0.0.1 in writes of
// `write_size`; GB/s measured at the receiver, from accept to the last byte.
double LoopbackGbps(size_t total, size_t write_size);

// What one round's transport call cost, from its results.
struct RoundTiming {
  double run_seconds = 0;       // wall time of Transport::Run
  double compute_sum = 0;       // sum of the items' compute_seconds
  double compute_makespan = 0;  // ideal pull queue: items in order on W workers
  int items = 0;
};

// Passes everything through to `inner`, timing each Run(). Not thread-safe
// (Run is called by one thread, as the interface says).
class TimedTransport final : public Transport {
 public:
  TimedTransport(Transport* inner, int workers) : inner_(inner), workers_(workers) {}

  absl::Status Run(const MetaState& state, const std::vector<WorkItem>& items, const ResultSink& take) override;
  int num_workers() const override { return inner_->num_workers(); }
  TransportStats Stats() const override { return inner_->Stats(); }
  void Interrupt(const std::string& why) override { inner_->Interrupt(why); }

  const std::vector<RoundTiming>& timings() const { return timings_; }

 private:
  Transport* inner_;
  int workers_;
  std::vector<RoundTiming> timings_;
};

// A well-formed training result for `config`'s model (the delta in the
// config's dtype and the Adam moments it carries, random values), encoded
// once as the upload a worker sends.
struct Precomputed {
  int64_t numel = 0;
  CarriedMoments carry;
  DeltaDtype dtype = DELTA_FP32;
  std::string config_fingerprint, layout_fingerprint;
  std::vector<std::string> tensors;  // encoded delta, then the carried adam_m and adam_v
  // The upload of that result; its header's worker, lease and state version
  // are set per submission.
  std::vector<ResultChunk> upload;
  // node_uploads[k - 1]: a node's upload answering for k leases, the exact
  // sum of k such results with k - 1 node items (node_uploads[0] is
  // `upload`); its lease ids are set per submission.
  std::vector<std::vector<ResultChunk>> node_uploads;
};
// The result of `config`'s model, and the uploads of nodes of up to
// `learners` learners.
Precomputed Precompute(const ExperimentConfig& config, int learners = 1);

// Client-side time in each call of the simulated workers, summed. Thread-safe.
struct PhaseClock {
  std::atomic<int64_t> get_work_ns{0}, get_work_calls{0};  // calls that returned a TRAIN lease
  std::atomic<int64_t> fetch_ns{0}, fetch_calls{0}, fetch_max_ns{0};
  std::atomic<int64_t> submit_ns{0}, submit_calls{0}, submit_max_ns{0};  // first Write to Finish
  std::atomic<int64_t> probe_ns{0}, probe_calls{0};    // a Heartbeat after each Submit, if asked
  std::atomic<int64_t> stale{0};  // fetches and results refused because their batch had ended

  void Add(std::atomic<int64_t>& ns, std::atomic<int64_t>& calls, BenchClock::time_point since,
           std::atomic<int64_t>* max_ns = nullptr);
  struct Snapshot {
    double get_work_ms = 0, fetch_ms = 0, submit_ms = 0;
    int64_t get_work = 0, fetch = 0, submit = 0, get_work_ns = 0, fetch_ns = 0, submit_ns = 0;
  };
  Snapshot Take() const;
  // Mean ms per call between two snapshots.
  static Snapshot Between(const Snapshot& a, const Snapshot& b);
};

// One simulated worker (a node when options.learners > 1, whose learners
// compute at once): Join with `p`'s fingerprints, then GetWork ->
// FetchState (once per state version, as real workers do) -> wait
// `compute_seconds` -> SubmitResult of the precomputed upload, all through
// CoordinatorClient on a connection of its own, until the coordinator says
// FINISHED; then Leave. Calls on leases of state versions above
// `count_from_version` are timed into `clock`. A fetch or result refused
// because its batch ended counts as stale; any other failure ends the
// process.
struct SimulatedWorkerOptions {
  std::string address, token;
  int learners = 1;  // a node's: up to this many leases per reply, one upload for them
  double compute_seconds = 0;
  uint64_t count_from_version = 0;
  bool probe = false;  // time a Heartbeat right after every SubmitResult (a diagnostic)
};
void SimulatedWorker(const SimulatedWorkerOptions& options, const Precomputed& p, PhaseClock* clock);

// Median microseconds of a unary round trip (Heartbeat of a joined worker),
// over `calls` calls to a fresh coordinator for `config`.
double HeartbeatMicros(const ExperimentConfig& config, const Precomputed& p, int calls, const std::string& token);

}  // namespace reptile

#endif  // REPTILE_BENCH_BENCH_SUPPORT_H_
