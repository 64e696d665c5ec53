// Network namespaces as the "nodes" of a multi-node test on one machine (needs
// root and iproute2): find the system tools, run them to completion, and
// create namespaces named after the test process, so that parallel runs never
// collide and namespaces left by a killed run are removed by the next one.
// Everything still running in them is killed, and they are deleted, when the
// set goes away, however the test ended.
#ifndef REPTILE_TESTS_NETNS_SUPPORT_H_
#define REPTILE_TESTS_NETNS_SUPPORT_H_

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/child_process.h"

namespace reptile::testing {

// `name` on $PATH or in the usual system directories (ctest may run with a
// PATH lacking /usr/sbin); "" if absent.
inline std::string FindTool(const std::string& name) {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH"); path != nullptr) dirs = absl::StrSplit(path, ':', absl::SkipEmpty());
  for (const char* dir : {"/usr/sbin", "/sbin", "/usr/bin", "/bin"}) dirs.push_back(dir);
  for (const std::string& dir : dirs) {
    const std::string candidate = dir + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// Runs argv (argv[0] an absolute path) to completion; its exit code (-1 if it
// was killed after `timeout` seconds) and its stdout followed by its stderr,
// which are also left in <log_prefix>.out / .err.
inline std::pair<int, std::string> RunTool(const std::vector<std::string>& argv, const std::string& log_prefix,
                                           double timeout = 30) {
  auto tool = ChildProcess::Start(argv, log_prefix);
  const int code = tool->ExitCode(timeout);
  std::string output = tool->out() + tool->err();
  if (code == -1) output = absl::StrCat(absl::StrJoin(argv, " "), " timed out after ", timeout, " s; ", output);
  return {code, output};
}

// Namespaces "rptl<pid><suffix>" of this test process.
class TestNamespaces {
 public:
  // `log_dir` receives the tools' output. Fails if `ip` is not installed.
  static absl::StatusOr<std::unique_ptr<TestNamespaces>> Create(const std::string& log_dir) {
    const std::string ip = FindTool("ip");
    if (ip.empty()) return absl::NotFoundError("iproute2's `ip` is not installed");
    auto set = std::unique_ptr<TestNamespaces>(new TestNamespaces(ip, log_dir));
    set->RemoveStale();
    return set;
  }

  ~TestNamespaces() {
    for (auto it = names_.rbegin(); it != names_.rend(); ++it) {
      KillProcessesIn(*it);
      const auto [code, output] = Run({ip_, "netns", "del", *it});
      if (code != 0) ADD_FAILURE() << "ip netns del " << *it << ": " << output;
    }
  }

  const std::string& ip() const { return ip_; }
  const std::string& prefix() const { return prefix_; }

  // Creates namespace prefix() + suffix with its loopback up; its name.
  absl::StatusOr<std::string> Add(const std::string& suffix) {
    const std::string name = prefix_ + suffix;
    const auto [code, output] = Run({ip_, "netns", "add", name});
    if (code != 0) return absl::InternalError(absl::StrCat("ip netns add ", name, " (exit ", code, "): ", output));
    names_.push_back(name);
    if (absl::Status up = Ip({"-n", name, "link", "set", "lo", "up"}); !up.ok()) return up;
    return name;
  }

  // Runs `ip args...`; an error with its output unless it exits with 0.
  absl::Status Ip(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {ip_};
    argv.insert(argv.end(), args.begin(), args.end());
    const auto [code, output] = Run(argv);
    if (code == 0) return absl::OkStatus();
    return absl::InternalError(absl::StrCat(absl::StrJoin(argv, " "), " (exit ", code, "): ", output));
  }

  // Runs any tool, its output logged under the log directory.
  std::pair<int, std::string> Run(const std::vector<std::string>& argv, double timeout = 30) {
    return RunTool(argv, absl::StrCat(log_dir_, "/tool", ++runs_), timeout);
  }

  // The pids of the processes in namespace `name`.
  std::vector<pid_t> Pids(const std::string& name) {
    std::vector<pid_t> pids;
    const auto [code, output] = Run({ip_, "netns", "pids", name});
    if (code != 0) return pids;
    for (absl::string_view line : absl::StrSplit(output, '\n', absl::SkipWhitespace()))
      pids.push_back(static_cast<pid_t>(std::atol(std::string(line).c_str())));
    return pids;
  }

 private:
  TestNamespaces(std::string ip, std::string log_dir)
      : ip_(std::move(ip)), log_dir_(std::move(log_dir)), prefix_(absl::StrCat("rptl", getpid())) {}

  // Namespaces of earlier test processes that are gone (killed before their
  // cleanup ran), and any with this process's pid (a reused pid's).
  void RemoveStale() {
    const auto [code, output] = Run({ip_, "netns", "list"});
    if (code != 0) return;
    const std::regex name(R"(^(rptl(\d+)[a-z0-9]*)\b)");
    for (const std::string& line : std::vector<std::string>(absl::StrSplit(output, '\n'))) {
      std::smatch m;
      if (!std::regex_search(line, m, name)) continue;
      const pid_t owner = static_cast<pid_t>(std::stol(m[2]));
      if (owner != getpid() && !(kill(owner, 0) != 0 && errno == ESRCH)) continue;
      KillProcessesIn(m[1]);
      Run({ip_, "netns", "del", m[1]});
    }
  }

  // SIGKILLs what still runs in the namespace (daemons a launcher left
  // behind, say) and waits up to 5 s for it to go.
  void KillProcessesIn(const std::string& name) {
    for (int attempt = 0; attempt < 100; ++attempt) {
      const std::vector<pid_t> pids = Pids(name);
      if (pids.empty()) return;
      for (pid_t pid : pids)
        if (pid > 1 && pid != getpid()) kill(pid, SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  std::string ip_, log_dir_, prefix_;
  std::vector<std::string> names_;
  int runs_ = 0;
};

}  // namespace reptile::testing

#endif  // REPTILE_TESTS_NETNS_SUPPORT_H_
