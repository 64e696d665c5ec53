// The gRPC runtime across "nodes": a coordinator and two workers, each in its
// own Linux network namespace, joined by veth pairs whose packets nftables
// drops at random. Mid-run one worker's link turns into an MTU black hole
// until one of its results is stuck in flight, then goes down for longer than
// runtime.worker_timeout_seconds: the coordinator gives up on the worker, the
// other worker does the stuck task (redone, or a straggler's second copy),
// the link comes back and the worker rejoins by itself. The run must end
// bitwise-identical to the same config trained in one process with threads.
//
// Needs root (network namespaces, veth, nftables); skips without them.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "tests/netns_support.h"
#include "tests/test_support.h"

namespace reptile {
namespace {

using Clock = std::chrono::steady_clock;
using ::reptile::testing::CountOccurrences;

double SecondsSince(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

void Sleep(double seconds) { std::this_thread::sleep_for(std::chrono::duration<double>(seconds)); }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Starts argv[0] (an absolute path) in the source tree, in its own process
// group, with stdin from /dev/null and stdout/stderr into the given files
// (the same file for both if the paths are equal). The child is killed if
// the test process dies.
pid_t Spawn(const std::vector<std::string>& argv, const std::string& stdout_path, const std::string& stderr_path) {
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  const bool same = stdout_path == stderr_path;
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid != 0) return pid;
  // Child: async-signal-safe calls only.
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(125);
  const int in = open("/dev/null", O_RDONLY);
  const int out = open(stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  const int err = same ? out : open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (in < 0 || out < 0 || err < 0) _exit(126);
  dup2(in, 0);
  dup2(out, 1);
  dup2(err, 2);
  if (chdir(REPTILE_SOURCE_DIR) != 0) _exit(126);
  execv(args[0], args.data());
  _exit(127);
}

// The exit code of `pid` once it ends within `seconds` (-signal if killed by
// one), or nullopt if it is still running.
std::optional<int> WaitFor(pid_t pid, double seconds) {
  const auto start = Clock::now();
  while (true) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    if (done < 0 && errno != EINTR) return -1000;  // not our child any more: treat as a failure
    if (SecondsSince(start) >= seconds) return std::nullopt;
    Sleep(0.02);
  }
}

struct Running {
  std::string name;
  pid_t pid = -1;
  std::string stdout_path, stderr_path;
  std::optional<int> exit_code;  // set once reaped
};

std::string Sha(const std::string& output) {
  const std::string key = "parameters sha256 ";
  const size_t at = output.find(key);
  return at == std::string::npos ? "" : output.substr(at + key.size(), 64);
}

// Lines of `text` containing `needle`, for failure messages.
std::string LinesWith(const std::string& text, const std::string& needle) {
  std::vector<std::string> found;
  for (absl::string_view line : absl::StrSplit(text, '\n'))
    if (line.find(needle) != absl::string_view::npos) found.emplace_back(line);
  return absl::StrJoin(found, "\n");
}

constexpr int kRounds = 150;          // Omniglot 5-way, meta-batch 5: 3-6 rounds/s over gRPC here
constexpr int kFaultAtRound = 30;     // the link goes down once this many rounds are done
constexpr double kMinOutage = 4.0;    // seconds the link stays down, at least (> worker timeout)
constexpr int kLossPercent = 5;       // packets dropped on each worker's link, each direction
constexpr double kRunTimeout = 240;   // seconds for the distributed run before giving up

class NetnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to create network namespaces (euid " << geteuid() << ")";
    nft_ = testing::FindTool("nft");
    if (nft_.empty()) GTEST_SKIP() << "`nft` (nftables) is not installed";
    // Per process: another copy of this test may be running (its own build).
    dir_ = testing::TempDir(absl::StrCat("netns-", getpid()));
    auto namespaces = testing::TestNamespaces::Create(dir_);
    if (!namespaces.ok()) GTEST_SKIP() << namespaces.status().message();
    namespaces_ = std::move(*namespaces);
    ip_ = namespaces_->ip();
    prefix_ = namespaces_->prefix();
    if (auto probe = namespaces_->Add("c"); !probe.ok())
      GTEST_SKIP() << "cannot create a network namespace: " << probe.status().message();
  }

  void TearDown() override {
    for (Running& child : children_) {
      if (child.exit_code.has_value()) continue;
      kill(-child.pid, SIGKILL);
      kill(child.pid, SIGKILL);
      int status;
      waitpid(child.pid, &status, 0);
      child.exit_code = -SIGKILL;
    }
    namespaces_.reset();  // deletes them
    // The logs stay for a failed run.
    if (!dir_.empty() && !HasFailure()) std::filesystem::remove_all(dir_);
  }

  // Runs a tool to completion; exit code and combined output.
  std::pair<int, std::string> Tool(const std::vector<std::string>& argv, double timeout = 30) {
    return namespaces_->Run(argv, timeout);
  }

  void MustRun(const std::vector<std::string>& argv) {
    const auto [code, output] = Tool(argv);
    ASSERT_EQ(code, 0) << absl::StrJoin(argv, " ") << ": " << output;
  }

  Running& Start(const std::string& name, const std::vector<std::string>& argv) {
    Running child;
    child.name = name;
    child.stdout_path = absl::StrCat(dir_, "/", name, ".stdout");
    child.stderr_path = absl::StrCat(dir_, "/", name, ".stderr");
    child.pid = Spawn(argv, child.stdout_path, child.stderr_path);
    if (child.pid <= 0) {
      ADD_FAILURE() << "cannot fork for " << name;
      child.exit_code = -1;  // never signalled or waited for
    }
    children_.push_back(child);
    return children_.back();
  }

  // Waits for `child` and records its exit code; nullopt on timeout.
  std::optional<int> Finish(Running& child, double seconds) {
    if (!child.exit_code.has_value()) child.exit_code = WaitFor(child.pid, seconds);
    return child.exit_code;
  }

  // The child's stderr, trimmed to its last lines, for failure messages.
  static std::string Tail(const Running& child, size_t max_chars = 6000) {
    const std::string text = ReadFile(child.stderr_path);
    return absl::StrCat("--- ", child.name, " stderr (", child.stderr_path, ") ---\n",
                        text.size() > max_chars ? "..." + text.substr(text.size() - max_chars) : text);
  }

  std::string ip_, nft_, dir_, prefix_;
  std::unique_ptr<testing::TestNamespaces> namespaces_;
  std::deque<Running> children_;  // a deque: references to its elements stay valid
};

int RoundsIn(const std::string& metrics_path) { return CountOccurrences(ReadFile(metrics_path), "\"kind\":\"round\""); }

// The sum of the packet counters of the rules in `ruleset` (nft list output).
long DroppedPackets(const std::string& ruleset) {
  long total = 0;
  const std::regex counter(R"(counter packets (\d+))");
  for (auto it = std::sregex_iterator(ruleset.begin(), ruleset.end(), counter); it != std::sregex_iterator(); ++it)
    total += std::stol((*it)[1]);
  return total;
}

TEST_F(NetnsTest, TrainsAcrossNamespacesThroughLossAndALinkOutageBitwiseLikeInProcess) {
  const auto test_start = Clock::now();
  const std::string coordinator_ns = prefix_ + "c";  // created by SetUp
  const std::vector<std::string> worker_ns = {prefix_ + "w1", prefix_ + "w2"};
  for (const std::string& suffix : {"w1", "w2"}) {
    const auto ns = namespaces_->Add(suffix);
    ASSERT_TRUE(ns.ok()) << ns.status();
  }
  // Worker k's link: tow<k> (10.77.k.1) in the coordinator's namespace, toc
  // (10.77.k.2) in the worker's.
  for (int k = 1; k <= 2; ++k) {
    const std::string ns = worker_ns[k - 1], dev = absl::StrCat("tow", k);
    ASSERT_NO_FATAL_FAILURE(
        MustRun({ip_, "-n", coordinator_ns, "link", "add", dev, "type", "veth", "peer", "name", "toc", "netns", ns}));
    ASSERT_NO_FATAL_FAILURE(
        MustRun({ip_, "-n", coordinator_ns, "addr", "add", absl::StrCat("10.77.", k, ".1/30"), "dev", dev}));
    ASSERT_NO_FATAL_FAILURE(MustRun({ip_, "-n", ns, "addr", "add", absl::StrCat("10.77.", k, ".2/30"), "dev", "toc"}));
    ASSERT_NO_FATAL_FAILURE(MustRun({ip_, "-n", coordinator_ns, "link", "set", dev, "up"}));
    ASSERT_NO_FATAL_FAILURE(MustRun({ip_, "-n", ns, "link", "set", "toc", "up"}));
    // Random loss both ways on the worker's end of its link (no netem here).
    const std::string rules = absl::StrCat(dir_, "/loss_w", k, ".nft");
    std::ofstream(rules) << "table inet reptile_loss {\n"
                         << "  chain output { type filter hook output priority 0; policy accept;\n"
                         << "    oifname \"toc\" numgen random mod 100 < " << kLossPercent << " counter drop\n  }\n"
                         << "  chain input { type filter hook input priority 0; policy accept;\n"
                         << "    iifname \"toc\" numgen random mod 100 < " << kLossPercent << " counter drop\n  }\n"
                         << "}\n";
    ASSERT_NO_FATAL_FAILURE(MustRun({ip_, "netns", "exec", ns, nft_, "-f", rules}));
  }

  // The same training, distributed and in process. Runtime settings never
  // change the parameters; the coordinator's are short so a silent worker is
  // given up on after 2 s. A worker whose result upload fails in transit
  // gives that result up but stays alive, and its lease is only redone after
  // runtime.task_timeout_seconds (600 s by default), so that is short too.
  const std::vector<std::string> training = {
      "--config", "configs/demo.textproto", absl::StrCat("task.data_dir=", testing::OmniglotDir()),
      absl::StrCat("outer.rounds=", kRounds), "eval.every_rounds=0", "eval.final_episodes=0",
      "runtime.checkpoint_every_rounds=100"};
  const std::string token_file = dir_ + "/token";
  testing::WriteTokenFile(token_file, absl::StrCat("netns-test-token-", getpid()));
  const std::string run_dir = dir_ + "/distributed", port_file = dir_ + "/port";
  std::vector<std::string> coordinator_argv = {ip_, "netns", "exec", coordinator_ns, REPTILE_BINARY, "coordinator",
                                               "--run_dir", run_dir, "--listen", "0.0.0.0:0", "--insecure_listen", "--port_file",
                                               port_file, "--token_file", token_file};
  coordinator_argv.insert(coordinator_argv.end(), training.begin(), training.end());
  coordinator_argv.insert(coordinator_argv.end(),
                          {"runtime.heartbeat_seconds=0.5", "runtime.worker_timeout_seconds=2",
                           "runtime.task_timeout_seconds=30"});
  Running& coordinator = Start("coordinator", coordinator_argv);
  const auto run_start = Clock::now();

  std::string port;
  while (port.empty()) {
    if (std::filesystem::exists(port_file)) port = std::string(absl::StripAsciiWhitespace(ReadFile(port_file)));
    if (!port.empty()) break;
    ASSERT_FALSE(Finish(coordinator, 0).has_value()) << "the coordinator exited early\n" << Tail(coordinator);
    ASSERT_LT(SecondsSince(run_start), 60) << "no port file after 60 s\n" << Tail(coordinator);
    Sleep(0.05);
  }
  std::vector<Running*> workers;
  for (int k = 1; k <= 2; ++k)
    workers.push_back(&Start(absl::StrCat("worker", k),
                             {ip_, "netns", "exec", worker_ns[k - 1], REPTILE_BINARY, "worker", "--coordinator",
                              absl::StrCat("10.77.", k, ".1:", port), "--token_file", token_file}));

  // Fails (and TearDown kills everything) if the coordinator ended or the
  // run took too long while waiting for something.
  auto still_running = [&](const std::string& waiting_for) {
    EXPECT_FALSE(Finish(coordinator, 0).has_value())
        << "the coordinator exited (" << *coordinator.exit_code << ") while waiting for " << waiting_for << "\n"
        << Tail(coordinator) << Tail(*workers[0]) << Tail(*workers[1]);
    EXPECT_LT(SecondsSince(run_start), kRunTimeout) << "timed out waiting for " << waiting_for << "\n"
                                                    << Tail(coordinator) << Tail(*workers[0]) << Tail(*workers[1]);
    return !coordinator.exit_code.has_value() && SecondsSince(run_start) < kRunTimeout;
  };

  // Training is under way: take worker 1's link down.
  const std::string metrics = run_dir + "/metrics.jsonl";
  while (RoundsIn(metrics) < kFaultAtRound) {
    ASSERT_TRUE(still_running(absl::StrCat("round ", kFaultAtRound)));
    Sleep(0.05);
  }
  const double fault_at = SecondsSince(run_start);
  const size_t log_at_fault = ReadFile(coordinator.stderr_path).size();  // what follows is the fault's doing
  // A worker holds no lease between the coordinator taking its result and
  // receiving its next GetWork, and with packet loss that gap is often a
  // retransmission timeout long; a link cut then has nothing to redo. So the
  // link first becomes an MTU black hole (full-size packets out of worker 1
  // vanish; requests, heartbeats and acks pass): its next result is stuck in
  // flight with its lease active, and then the link goes down.
  const std::string black_hole = dir_ + "/black_hole.nft";
  std::ofstream(black_hole) << "table inet reptile_black_hole {\n"
                            << "  chain output { type filter hook output priority 1; policy accept;\n"
                            << "    oifname \"toc\" meta length > 1000 counter drop\n  }\n"
                            << "}\n";
  ASSERT_NO_FATAL_FAILURE(MustRun({ip_, "netns", "exec", worker_ns[0], nft_, "-f", black_hole}));
  const auto black_hole_at = Clock::now();
  while (true) {
    const auto [code, ruleset] =
        Tool({ip_, "netns", "exec", worker_ns[0], nft_, "list", "table", "inet", "reptile_black_hole"});
    ASSERT_EQ(code, 0) << ruleset;
    if (DroppedPackets(ruleset) > 0) break;
    ASSERT_TRUE(still_running("worker 1 to send a result into the black hole"));
    ASSERT_LT(SecondsSince(black_hole_at), 30) << "worker 1 sent no full-size packet in 30 s\n" << Tail(*workers[0]);
    Sleep(0.02);
  }
  const double stuck_after = SecondsSince(black_hole_at);
  ASSERT_NO_FATAL_FAILURE(MustRun({ip_, "-n", worker_ns[0], "link", "set", "toc", "down"}));
  const auto down_at = Clock::now();
  const int rounds_at_down = RoundsIn(metrics);

  // Worker 1's ids at the coordinator, from its join lines ("worker 3 (host:pid
  // at ipv4:10.77.1.2:port) joined").
  const std::regex joined_from_1(R"(worker (\d+) \([^\n]* at ipv4:10\.77\.1\.2:\d+\) joined)");
  auto worker1_ids = [&](const std::string& log) {
    std::vector<std::string> ids;
    for (auto it = std::sregex_iterator(log.begin(), log.end(), joined_from_1); it != std::sregex_iterator(); ++it)
      ids.push_back((*it)[1]);
    return ids;
  };
  // Down until the coordinator has given worker 1 up, and at least kMinOutage.
  std::string lost_id;
  size_t lost_at = 0;  // where the coordinator's log says so
  while (lost_id.empty() || SecondsSince(down_at) < kMinOutage) {
    ASSERT_TRUE(still_running("the coordinator to give up on worker 1"));
    ASSERT_LT(SecondsSince(down_at), 30) << "worker 1 never reported lost\n" << Tail(coordinator);
    const std::string log = ReadFile(coordinator.stderr_path);
    for (const std::string& id : worker1_ids(log)) {
      std::smatch m;
      const auto from = log.begin() + log_at_fault;
      if (lost_id.empty() &&
          std::regex_search(from, log.end(), m, std::regex(absl::StrCat("worker ", id, R"( \([^\n]*\) lost)")))) {
        lost_id = id;
        lost_at = log_at_fault + m.position(0);
      }
    }
    Sleep(0.05);
  }
  ASSERT_NO_FATAL_FAILURE(MustRun({ip_, "netns", "exec", worker_ns[0], nft_, "delete", "table", "inet",
                                   "reptile_black_hole"}));
  ASSERT_NO_FATAL_FAILURE(MustRun({ip_, "-n", worker_ns[0], "link", "set", "toc", "up"}));
  const double outage = SecondsSince(down_at);
  const int rounds_at_up = RoundsIn(metrics);
  EXPECT_LT(rounds_at_up, kRounds) << "training ended during the outage; the test needs more rounds";

  // Worker 1 comes back by itself while training is still going on.
  while (worker1_ids(ReadFile(coordinator.stderr_path).substr(lost_at)).empty()) {
    ASSERT_TRUE(still_running("worker 1 to rejoin"));
    Sleep(0.05);
  }
  const double rejoined_after = SecondsSince(down_at) - outage;
  const int rounds_at_rejoin = RoundsIn(metrics);
  EXPECT_LT(rounds_at_rejoin, kRounds) << "worker 1 rejoined only after the last round";

  const std::optional<int> coordinator_code = Finish(coordinator, std::max(1.0, kRunTimeout - SecondsSince(run_start)));
  ASSERT_TRUE(coordinator_code.has_value()) << "the distributed run did not end within " << kRunTimeout << " s\n"
                                            << Tail(coordinator) << Tail(*workers[0]) << Tail(*workers[1]);
  const double distributed_seconds = SecondsSince(run_start);
  ASSERT_EQ(*coordinator_code, 0) << Tail(coordinator) << Tail(*workers[0]) << Tail(*workers[1]);
  for (Running* worker : workers) {
    const std::optional<int> code = Finish(*worker, 20);
    EXPECT_TRUE(code.has_value()) << worker->name << " still running 20 s after the run ended\n" << Tail(*worker);
    if (code.has_value()) EXPECT_EQ(*code, 0) << Tail(*worker);
  }
  const std::string distributed_out = ReadFile(coordinator.stdout_path);
  const std::string distributed_sha = Sha(distributed_out);
  ASSERT_EQ(distributed_sha.size(), 64u) << distributed_out << Tail(coordinator);
  EXPECT_NE(distributed_out.find(absl::StrCat("round ", kRounds, " ")), std::string::npos) << distributed_out;
  EXPECT_EQ(RoundsIn(metrics), kRounds);

  // The fault happened and was handled as designed: the task stuck on worker
  // 1 was done by worker 2, either redone once worker 1 was given up on or
  // as a second copy for a straggler, whichever the coordinator did first.
  const std::string log = ReadFile(coordinator.stderr_path);
  const std::string after_fault = log.substr(log_at_fault);
  const std::regex redone(absl::StrCat(R"(is redone: worker )", lost_id, " lost"));
  const std::regex second_copy(absl::StrCat(R"(has run [0-9.]+ s on worker )", lost_id, "; a copy goes to"));
  const bool was_redone = std::regex_search(after_fault, redone);
  const bool was_copied = std::regex_search(after_fault, second_copy);
  EXPECT_TRUE(was_redone || was_copied) << "the task stuck on worker " << lost_id << " was not done elsewhere\n"
                                        << LinesWith(log, "worker ");
  const std::string worker1_log = ReadFile(workers[0]->stderr_path);
  EXPECT_GE(CountOccurrences(worker1_log, " as worker "), 2) << "worker 1 did not rejoin\n" << worker1_log;

  // Packets were really dropped on both links.
  std::vector<long> dropped;
  for (const std::string& ns : worker_ns) {
    const auto [code, ruleset] = Tool({ip_, "netns", "exec", ns, nft_, "list", "table", "inet", "reptile_loss"});
    EXPECT_EQ(code, 0) << ruleset;
    dropped.push_back(DroppedPackets(ruleset));
    EXPECT_GT(dropped.back(), 0) << "no packet dropped in " << ns << "\n" << ruleset;
  }

  // The same training in one process with threads.
  const auto local_start = Clock::now();
  std::vector<std::string> local_argv = {REPTILE_BINARY, "train", "--run_dir", dir_ + "/in_process", "--workers", "2",
                                         "runtime.local_workers=THREADS"};
  local_argv.insert(local_argv.end(), training.begin(), training.end());
  Running& local = Start("in_process", local_argv);
  const std::optional<int> local_code = Finish(local, 240);
  ASSERT_TRUE(local_code.has_value()) << "the in-process run did not end within 240 s\n" << Tail(local);
  ASSERT_EQ(*local_code, 0) << Tail(local);
  const double local_seconds = SecondsSince(local_start);
  const std::string local_out = ReadFile(local.stdout_path);
  EXPECT_EQ(distributed_sha, Sha(local_out)) << "distributed: " << distributed_out << "in process: " << local_out;

  std::cout << "netns run: black hole at round " << kFaultAtRound << " (" << fault_at << " s into the run), "
            << "a result stuck " << stuck_after << " s later; link down at round " << rounds_at_down << " for "
            << outage << " s, up at round " << rounds_at_up << "; worker 1 rejoined " << rejoined_after
            << " s later at round " << rounds_at_rejoin << "; distributed " << distributed_seconds << " s, in process "
            << local_seconds << " s, total " << SecondsSince(test_start) << " s; packets dropped by nft "
            << dropped[0] << " / " << dropped[1] << "; coordinator log: " << CountOccurrences(log, "is redone") << " redone, "
            << CountOccurrences(log, ") lost") << " lost, " << CountOccurrences(log, ") joined") << " joins; the stuck task was "
            << (was_redone ? "redone" : was_copied ? "copied to the other worker" : "lost") << "\n"
            << LinesWith(log, "worker ") << std::endl;
}

}  // namespace
}  // namespace reptile
