#include "cli/worker_processes.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "cli/signals.h"

extern char** environ;

namespace reptile {
namespace {

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status));
  return "unknown status";
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerProcesses>> WorkerProcesses::Start(
    int count, std::vector<std::string> arguments, std::vector<std::string> environment,
    std::function<void(const std::string&)> log, std::function<void(const std::string&)> give_up) {
  std::unique_ptr<WorkerProcesses> processes(new WorkerProcesses());
  char path[4096];
  const ssize_t length = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (length <= 0) return absl::InternalError(absl::StrCat("cannot find this executable: ", std::strerror(errno)));
  processes->executable_.assign(path, length);
  processes->arguments_ = std::move(arguments);
  processes->environment_ = std::move(environment);
  processes->log_ = std::move(log);
  processes->give_up_ = std::move(give_up);
  for (int i = 0; i < count; ++i) {
    // Under the lock: OpenPidfd knows a child from the moment it exists.
    absl::MutexLock lock(&processes->mu_);
    absl::StatusOr<pid_t> pid = processes->Spawn();
    if (!pid.ok()) return pid.status();  // the destructor stops those started
    processes->pids_.push_back(*pid);
  }
  processes->watcher_ = std::thread(&WorkerProcesses::Watch, processes.get());
  return processes;
}

absl::StatusOr<pid_t> WorkerProcesses::Spawn() {
  // Everything the child needs is built before fork(): after it, only
  // async-signal-safe calls are allowed.
  std::vector<std::string> args = {executable_, "worker"};
  args.insert(args.end(), arguments_.begin(), arguments_.end());
  std::vector<std::string> env;
  auto overridden = [this](const char* entry) {
    for (const std::string& e : environment_)
      if (std::strncmp(entry, e.data(), e.find('=') + 1) == 0) return true;
    return false;
  };
  for (char** e = environ; *e != nullptr; ++e)
    if (!overridden(*e)) env.emplace_back(*e);
  env.insert(env.end(), environment_.begin(), environment_.end());
  std::vector<char*> argv, envp;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::ResourceExhaustedError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    UnblockStopSignalsInChild();
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);  // the parent died before prctl
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  return pid;
}

void WorkerProcesses::Watch() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Milliseconds(100));
    if (stopping_) break;
    for (pid_t& pid : pids_) {
      int status = 0;
      if (pid <= 0 || waitpid(pid, &status, WNOHANG) != pid) continue;
      if (finishing_ && WIFEXITED(status) && WEXITSTATUS(status) == 0) {  // told that the run is over
        pid = -1;
        continue;
      }
      const int limit = 3 * static_cast<int>(pids_.size());
      if (++restarts_ > limit) {
        const std::string why = absl::StrCat("worker processes keep dying (", restarts_, " so far; last: ",
                                             DescribeExit(status), "); see their errors above");
        pid = -1;
        if (give_up_) give_up_(why);
        stopping_ = true;
        break;
      }
      if (log_) log_(absl::StrCat("worker process ", pid, " ended (", DescribeExit(status), "); starting another"));
      absl::StatusOr<pid_t> replacement = Spawn();
      pid = replacement.ok() ? *replacement : -1;
    }
  }
}

void WorkerProcesses::Finish() {
  absl::MutexLock lock(&mu_);
  finishing_ = true;
}

int WorkerProcesses::OpenPidfd(pid_t pid) {
  absl::MutexLock lock(&mu_);  // Watch() reaps and replaces under it
  if (pid <= 0 || std::find(pids_.begin(), pids_.end(), pid) == pids_.end()) return -1;
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
}

WorkerProcesses::~WorkerProcesses() {
  std::vector<pid_t> pids;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    pids = pids_;
  }
  if (watcher_.joinable()) watcher_.join();
  for (pid_t pid : pids)
    if (pid > 0) kill(pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (pid_t pid : pids) {
    if (pid <= 0) continue;
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        break;
      }
      usleep(20000);
    }
  }
}

}  // namespace reptile
