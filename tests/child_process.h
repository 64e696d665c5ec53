// Real processes for integration tests: start the `reptile` binary (or any
// program) with its stdout and stderr in files, signal it, wait for it with a
// timeout. A child still running when its object goes away is SIGKILLed.
#ifndef REPTILE_TESTS_CHILD_PROCESS_H_
#define REPTILE_TESTS_CHILD_PROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace reptile::testing {

inline std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

class ChildProcess {
 public:
  // Runs `args` (args[0] is the program path) in `cwd`, with `env` added to
  // this process's environment; output goes to <log_prefix>.out / .err.
  static std::unique_ptr<ChildProcess> Start(const std::vector<std::string>& args, const std::string& log_prefix,
                                             const std::string& cwd = REPTILE_SOURCE_DIR,
                                             const std::vector<std::string>& env = {}) {
    auto child = std::unique_ptr<ChildProcess>(new ChildProcess());
    child->out_path_ = log_prefix + ".out";
    child->err_path_ = log_prefix + ".err";
    std::vector<char*> argv, envp;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
    for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    const int out = open(child->out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = open(child->err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    child->pid_ = fork();
    if (child->pid_ == 0) {
      dup2(out, 1);
      dup2(err, 2);
      if (chdir(cwd.c_str()) != 0) _exit(126);
      execve(argv[0], argv.data(), envp.data());
      _exit(127);
    }
    close(out);
    close(err);
    return child;
  }

  ~ChildProcess() {
    if (!status_.has_value()) {
      kill(pid_, SIGKILL);
      Wait(10);
    }
  }

  pid_t pid() const { return pid_; }
  void Signal(int signal_number) {
    if (!status_.has_value()) kill(pid_, signal_number);
  }

  // The raw wait status once the child has ended; nullopt if it is still
  // running after `seconds`.
  std::optional<int> Wait(double seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (!status_.has_value()) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        status_ = status;
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return status_;
  }

  bool running() { return !Wait(0).has_value(); }

  // Waits and returns the exit code: -1 on timeout (the child is killed), or
  // 128 + signal if a signal ended it.
  int ExitCode(double seconds) {
    std::optional<int> status = Wait(seconds);
    if (!status.has_value()) {
      kill(pid_, SIGKILL);
      Wait(10);
      return -1;
    }
    if (WIFEXITED(*status)) return WEXITSTATUS(*status);
    return 128 + WTERMSIG(*status);
  }

  std::string out() const { return ReadWholeFile(out_path_); }
  std::string err() const { return ReadWholeFile(err_path_); }

 private:
  ChildProcess() = default;
  pid_t pid_ = -1;
  std::optional<int> status_;
  std::string out_path_, err_path_;
};

// Starts a `reptile coordinator` command line `args`, adding
// `--port_file <run_dir>.port`, and waits until it listens (up to 30 s, or
// until it exits). Returns the child and sets *port (0 if it never listened).
inline std::unique_ptr<ChildProcess> StartListening(std::vector<std::string> args, const std::string& run_dir,
                                                    const std::string& log_prefix, int* port) {
  const std::string port_file = run_dir + ".port";
  std::remove(port_file.c_str());
  args.insert(args.end(), {"--port_file", port_file});
  auto child = ChildProcess::Start(args, log_prefix);
  for (int i = 0; i < 1200 && access(port_file.c_str(), F_OK) != 0 && child->running(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  *port = std::atoi(ReadWholeFile(port_file).c_str());
  return child;
}

// Starts `<binary> worker` against the coordinator listening on loopback
// `port`, with `extra` arguments after the address.
inline std::unique_ptr<ChildProcess> StartLoopbackWorker(const std::string& binary, int port,
                                                         const std::string& log_prefix,
                                                         const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args = {binary, "worker", "--coordinator", "127.0.0.1:" + std::to_string(port)};
  args.insert(args.end(), extra.begin(), extra.end());
  return ChildProcess::Start(args, log_prefix);
}

// The parameter fingerprint from `reptile train`/`coordinator` output, or "".
inline std::string ParameterSha(const std::string& output) {
  const std::string marker = "parameters sha256 ";
  const size_t at = output.rfind(marker);
  return at == std::string::npos ? "" : output.substr(at + marker.size(), 64);
}

}  // namespace reptile::testing

#endif  // REPTILE_TESTS_CHILD_PROCESS_H_
