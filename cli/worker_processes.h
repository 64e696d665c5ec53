// The worker processes of a local `reptile train`: each runs `reptile worker`
// with the arguments it is given (the coordinator's socket, or its shared
// board). A worker that ends before Finish() (dies, or leaves) is started
// again; if they keep ending, the run is given up with the reason. All are
// stopped (SIGTERM, then SIGKILL) when this object goes away, and they end
// with the parent if it dies.
#ifndef REPTILE_CLI_WORKER_PROCESSES_H_
#define REPTILE_CLI_WORKER_PROCESSES_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace reptile {

class WorkerProcesses {
 public:
  // `give_up` is called once, from another thread, if workers keep failing.
  // `environment`: NAME=value entries set for the workers, over this
  // process's own.
  static absl::StatusOr<std::unique_ptr<WorkerProcesses>> Start(int count, std::vector<std::string> arguments,
                                                                std::vector<std::string> environment,
                                                                std::function<void(const std::string&)> log,
                                                                std::function<void(const std::string&)> give_up);
  ~WorkerProcesses();
  WorkerProcesses(const WorkerProcesses&) = delete;
  // The run is over: workers that leave from now on (exit 0) are not
  // replaced.
  void Finish();
  // A pidfd for `pid` if it is one of these worker processes (alive, or
  // ended and not yet reaped, so the pid is not yet anyone else's), else -1.
  // Thread-safe.
  int OpenPidfd(pid_t pid);
  WorkerProcesses& operator=(const WorkerProcesses&) = delete;

 private:
  WorkerProcesses() = default;
  absl::StatusOr<pid_t> Spawn();
  void Watch();

  std::string executable_;
  std::vector<std::string> arguments_, environment_;
  std::function<void(const std::string&)> log_, give_up_;
  absl::Mutex mu_;
  std::vector<pid_t> pids_ ABSL_GUARDED_BY(mu_);
  int restarts_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watcher_;
};

}  // namespace reptile

#endif  // REPTILE_CLI_WORKER_PROCESSES_H_
