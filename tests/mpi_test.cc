// The MPI runtime under a real `mpirun`: 1+1 and 1+3 ranks give the
// parameters of the in-process run; a rank SIGKILLed mid-run ends the job
// promptly with a message naming it, and relaunching resumes to the same end;
// ranks on three "nodes" (network namespaces, as root) do too. A job whose
// ranks cannot reach each other (an interface that carries nothing, as root)
// or a rank that stops answering ends within the deadline, rank 0 saying why.
// MPI_REDUCE_SUM and MPI_ALLREDUCE_SUM on 1 to 4 working ranks, with items of
// one task or several, give those parameters too, and bring less into rank 0.
// A rank that lies in its results' headers ends the job, named.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <regex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "coordinator/checkpoint.h"
#include "gtest/gtest.h"
#include "tests/child_process.h"
#include "tests/netns_support.h"
#include "tests/test_support.h"

namespace reptile::testing {
namespace {

const std::vector<std::string> kRootEnv = {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                                           "OMPI_MCA_btl_vader_single_copy_mechanism=none"};

std::vector<std::string> Overrides(int rounds) {
  return {"task.data_dir=" + OmniglotDir(), absl::StrCat("outer.rounds=", rounds), "eval.every_rounds=0",
          "eval.final_episodes=10", "runtime.checkpoint_every_rounds=10"};
}

std::unique_ptr<ChildProcess> StartMpi(int ranks, const std::string& run_dir, const std::vector<std::string>& overrides,
                                       const std::string& log) {
  std::vector<std::string> args = {"/usr/bin/mpirun", "--oversubscribe", "--bind-to", "none", "-np",
                                   std::to_string(ranks), REPTILE_BINARY, "mpi", "--config",
                                   SourcePath("configs/demo.textproto"), "--run_dir", run_dir};
  args.insert(args.end(), overrides.begin(), overrides.end());
  return ChildProcess::Start(args, log, REPTILE_SOURCE_DIR, kRootEnv);
}

std::string ThreadsReference(const std::vector<std::string>& overrides, const std::string& log) {
  std::vector<std::string> args = {REPTILE_BINARY, "train", "--config", SourcePath("configs/demo.textproto"),
                                   "--run_dir", TempDir("reference"), "runtime.local_workers=THREADS"};
  args.insert(args.end(), overrides.begin(), overrides.end());
  auto train = ChildProcess::Start(args, log);
  EXPECT_EQ(train->ExitCode(300), 0) << train->err();
  return ParameterSha(train->out());
}

// The MPI rank of the process whose /proc directory is `proc`, from its
// environment; nullopt for a process that is not a rank.
std::optional<int> WorldRank(const std::string& proc) {
  std::ifstream in(proc + "/environ", std::ios::binary);
  std::string variable;
  const std::string key = "OMPI_COMM_WORLD_RANK=";
  while (std::getline(in, variable, '\0'))
    if (absl::StartsWith(variable, key)) return std::atoi(variable.c_str() + key.size());
  return std::nullopt;
}

// The /proc/<pid> directories of the processes running now.
std::vector<std::filesystem::path> Processes() {
  std::vector<std::filesystem::path> found;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", error)) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") == std::string::npos) found.push_back(entry.path());
  }
  return found;
}

// The pid of the process of `rank` among mpirun's children.
pid_t RankPid(pid_t mpirun, int rank) {
  for (const auto& proc : Processes()) {
    const std::string stat = ReadWholeFile(proc.string() + "/stat");
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::vector<std::string> fields = absl::StrSplit(stat.substr(close + 2), ' ');
    if (fields.size() < 2 || std::atoi(fields[1].c_str()) != mpirun) continue;
    if (WorldRank(proc.string()) == rank) return std::atoi(proc.filename().c_str());
  }
  return -1;
}

TEST(MpiTest, OnePlusOneAndOnePlusThreeRanksMatchTheInProcessRun) {
  const std::string logs = TempDir("logs");
  const std::vector<std::string> overrides = Overrides(30);
  const std::string reference = ThreadsReference(overrides, logs + "/reference");
  for (int ranks : {2, 4}) {
    auto mpi = StartMpi(ranks, TempDir(absl::StrCat("run", ranks)), overrides, absl::StrCat(logs, "/mpi", ranks));
    ASSERT_EQ(mpi->ExitCode(300), 0) << mpi->err() << mpi->out();
    EXPECT_TRUE(absl::StrContains(mpi->err(), absl::StrCat("MPI: ", ranks, " ranks"))) << mpi->err();
    EXPECT_EQ(ParameterSha(mpi->out()), reference) << ranks << " ranks";
  }
  // Rank 0 may work too; the parameters are the same.
  std::vector<std::string> working = overrides;
  working.push_back("runtime.mpi_rank0_works=true");
  auto mpi = StartMpi(2, TempDir("run_rank0_works"), working, logs + "/mpi_rank0_works");
  ASSERT_EQ(mpi->ExitCode(300), 0) << mpi->err();
  EXPECT_TRUE(absl::StrContains(mpi->err(), "and works")) << mpi->err();
  EXPECT_EQ(ParameterSha(mpi->out()), reference);
}

TEST(MpiTest, AKilledRankEndsTheJobAndTheRelaunchResumes) {
  const std::string logs = TempDir("logs");
  const std::string run = TempDir("run");
  const std::vector<std::string> overrides = Overrides(80);
  auto mpi = StartMpi(3, run, overrides, logs + "/first");
  // Kill rank 2 once some rounds are checkpointed.
  for (int i = 0; i < 3000 && !std::filesystem::exists(run + "/checkpoint.bin"); ++i) {
    ASSERT_TRUE(mpi->running()) << mpi->err();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const pid_t victim = RankPid(mpi->pid(), 2);
  ASSERT_GT(victim, 0) << "rank 2 not found among mpirun's children";
  kill(victim, SIGKILL);
  const auto killed_at = std::chrono::steady_clock::now();
  const int code = mpi->ExitCode(60);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  EXPECT_NE(code, 0);
  EXPECT_NE(code, -1) << "the job hung after a rank died";
  EXPECT_LT(seconds, 30);
  EXPECT_TRUE(absl::StrContains(mpi->err() + mpi->out(), "rank 2")) << mpi->err() << mpi->out();

  auto relaunched = StartMpi(3, run, overrides, logs + "/second");
  ASSERT_EQ(relaunched->ExitCode(300), 0) << relaunched->err();
  EXPECT_TRUE(absl::StrContains(relaunched->err(), "resuming")) << relaunched->err();
  EXPECT_EQ(ParameterSha(relaunched->out()), ThreadsReference(overrides, logs + "/reference"));
}

// mpirun passes SIGTERM to every rank: the workers finish their share of the
// batch, rank 0 completes the round, checkpoints and ends the job, and the
// relaunch goes on from there to the in-process result.
TEST(MpiTest, SigtermToMpirunCheckpointsAndTheRelaunchResumes) {
  const std::string logs = TempDir("logs");
  const std::string run = TempDir("run");
  std::vector<std::string> overrides = Overrides(60);
  overrides.push_back("runtime.checkpoint_every_rounds=1000");  // only the stop checkpoints
  auto mpi = StartMpi(3, run, overrides, logs + "/first");
  for (int i = 0; i < 3000 && absl::StrContains(ReadWholeFile(run + "/metrics.jsonl"), "\"round\":5,") == false; ++i) {
    ASSERT_TRUE(mpi->running()) << mpi->err();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(mpi->pid(), SIGTERM);
  EXPECT_NE(mpi->ExitCode(60), -1) << "the job did not end after SIGTERM";
  auto stopped = ReadCheckpoint(run + "/checkpoint.bin");
  ASSERT_TRUE(stopped.ok()) << stopped.status() << mpi->err();
  EXPECT_GE(stopped->round, 5);
  EXPECT_LT(stopped->round, 60);
  auto relaunched = StartMpi(3, run, overrides, logs + "/second");
  ASSERT_EQ(relaunched->ExitCode(300), 0) << relaunched->err();
  EXPECT_TRUE(absl::StrContains(relaunched->err(), absl::StrCat("at round ", stopped->round))) << relaunched->err();
  EXPECT_EQ(ParameterSha(relaunched->out()), ThreadsReference(overrides, logs + "/reference"));
}

TEST(MpiTest, AnMpiCheckpointResumesUnderGrpcAndBack) {
  const std::string logs = TempDir("logs");
  const std::string run = TempDir("run");
  const std::vector<std::string> overrides = Overrides(30);
  // MPI for the first 10 rounds, gRPC worker processes to round 20, MPI to the end.
  auto mpi = ChildProcess::Start({"/usr/bin/mpirun", "--oversubscribe", "--bind-to", "none", "-np", "2", REPTILE_BINARY,
                             "mpi", "--config", SourcePath("configs/demo.textproto"), "--run_dir", run,
                             "--stop_at_round", "10", overrides[0], overrides[1], overrides[2], overrides[3],
                             overrides[4]},
                            logs + "/mpi_first", REPTILE_SOURCE_DIR, kRootEnv);
  ASSERT_EQ(mpi->ExitCode(300), 0) << mpi->err();
  std::vector<std::string> grpc_args = {REPTILE_BINARY, "train", "--run_dir", run, "--workers", "2",
                                        "--stop_at_round", "20", "runtime.local_workers=GRPC_PROCESSES"};
  auto grpc = ChildProcess::Start(grpc_args, logs + "/grpc");
  ASSERT_EQ(grpc->ExitCode(300), 0) << grpc->err();
  EXPECT_TRUE(absl::StrContains(grpc->err(), "at round 10")) << grpc->err();
  EXPECT_TRUE(absl::StrContains(grpc->err(), "(coordinator on unix:")) << grpc->err();
  auto last = StartMpi(2, run, overrides, logs + "/mpi_last");
  ASSERT_EQ(last->ExitCode(300), 0) << last->err();
  EXPECT_TRUE(absl::StrContains(last->err(), "at round 20")) << last->err();
  EXPECT_EQ(ParameterSha(last->out()), ThreadsReference(overrides, logs + "/reference"));
}

// A rank that lies in its results' headers (tests/mpi_liar.c, preloaded
// into rank 1 of an MPMD job): a header of 64 MiB, 7 tasks for an item of
// one, or bytes that do not parse. The job ends with one line naming the
// rank, without receiving what the rank sends and without a hang.
TEST(MpiTest, ALyingRankEndsTheJobWithALineNamingIt) {
  const std::string logs = TempDir("logs");
  const std::map<std::string, std::string> lies = {{"huge", "its header is 67108864 bytes (at most 8192)"},
                                                   {"tasks", "result covers 7 tasks; the lease has 1"},
                                                   {"garbage", "its header does not parse"}};
  for (const auto& [lie, detail] : lies) {
    std::vector<std::string> app = {REPTILE_BINARY, "mpi", "--config", SourcePath("configs/demo.textproto"),
                                    "--run_dir", TempDir(lie)};
    for (const std::string& o : Overrides(30)) app.push_back(o);
    std::vector<std::string> args = {"/usr/bin/mpirun", "--oversubscribe", "--bind-to", "none", "-np", "1"};
    args.insert(args.end(), app.begin(), app.end());
    args.insert(args.end(), {":", "-np", "1", "-x", absl::StrCat("LD_PRELOAD=", MPI_LIAR_LIBRARY), "-x",
                             "MPI_LIAR=" + lie});
    args.insert(args.end(), app.begin(), app.end());
    auto job = ChildProcess::Start(args, logs + "/" + lie, REPTILE_SOURCE_DIR, kRootEnv);
    const int code = job->ExitCode(120);
    EXPECT_NE(code, -1) << lie << ": the job hung\n" << job->err();
    EXPECT_NE(code, 0) << lie;
    EXPECT_TRUE(absl::StrContains(job->err(), "MPI: rank 1 broke the protocol with work item")) << job->err();
    EXPECT_TRUE(absl::StrContains(job->err(), detail)) << job->err();
    EXPECT_FALSE(absl::StrContains(job->err(), "bad_alloc")) << job->err();
  }
}

// A byte counter of rank 0 over a run ("bytes_in": received, "bytes_out":
// sent), from its last round record (the transport counts from the start of
// the process).
int64_t Rank0Bytes(const std::string& run_dir, const std::string& counter) {
  int64_t total = 0;
  const std::string key = absl::StrCat("\"", counter, "\":");
  for (absl::string_view line : absl::StrSplit(ReadWholeFile(run_dir + "/metrics.jsonl"), '\n')) {
    const size_t at = line.find(key);
    if (!absl::StrContains(line, "\"kind\":\"round\"") || at == absl::string_view::npos) continue;
    total = std::atoll(std::string(line.substr(at + key.size())).c_str());
  }
  return total;
}

// Exact sums make every reduction mode, job size and grouping of tasks
// into items land on the in-process run's bits.
TEST(MpiTest, ReduceAndAllreduceOfExactSumsMatchTheInProcessRunForOneToFourRanks) {
  const std::string logs = TempDir("logs");
  const std::vector<std::string> overrides = Overrides(20);
  const std::string reference = ThreadsReference(overrides, logs + "/reference");
  const std::string gather_run = TempDir("gather");
  auto gather = StartMpi(4, gather_run, overrides, logs + "/gather");
  ASSERT_EQ(gather->ExitCode(300), 0) << gather->err();
  EXPECT_EQ(ParameterSha(gather->out()), reference);
  std::string reduce_run, allreduce_run;
  for (const char* mode : {"MPI_REDUCE_SUM", "MPI_ALLREDUCE_SUM"}) {
    for (int ranks : {2, 3, 4, 5}) {  // 1 to 4 working ranks
      std::vector<std::string> mode_overrides = overrides;
      mode_overrides.push_back(absl::StrCat("runtime.mpi_reduction=", mode));
      // Items of 2 tasks on 3 working ranks: rank-summed items, summed again.
      if (ranks == 4) mode_overrides.push_back("runtime.tasks_per_item=2");
      const std::string run = TempDir(absl::StrCat(mode, ranks));
      auto mpi = StartMpi(ranks, run, mode_overrides, absl::StrCat(logs, "/", mode, ranks));
      ASSERT_EQ(mpi->ExitCode(300), 0) << mpi->err();
      EXPECT_EQ(ParameterSha(mpi->out()), reference) << mode << " on " << ranks << " ranks";
      if (ranks == 5) (std::string(mode) == "MPI_REDUCE_SUM" ? reduce_run : allreduce_run) = run;
    }
  }
  // Demo meta-batches of 5 tasks on 4 working ranks: rank 0 receives one
  // exact sum (16 bytes per value) per round instead of five fp32 results.
  const int64_t gathered = Rank0Bytes(gather_run, "bytes_in"), reduced = Rank0Bytes(reduce_run, "bytes_in");
  EXPECT_GT(gathered, 0);
  EXPECT_LT(reduced, gathered) << reduced << " vs " << gathered;
  // Allreduce: the state goes out once, not in each of the 20 rounds.
  const int64_t broadcast = Rank0Bytes(reduce_run, "bytes_out");
  const int64_t kept = Rank0Bytes(allreduce_run, "bytes_out");
  EXPECT_GT(kept, 0);
  EXPECT_LE(kept * 20, broadcast) << kept << " vs " << broadcast;
  // With the items of 2 tasks, gathered results are exact sums too.
  std::vector<std::string> grouped = overrides;
  grouped.push_back("runtime.tasks_per_item=2");
  auto grouped_gather = StartMpi(3, TempDir("grouped_gather"), grouped, logs + "/grouped_gather");
  ASSERT_EQ(grouped_gather->ExitCode(300), 0) << grouped_gather->err();
  EXPECT_EQ(ParameterSha(grouped_gather->out()), reference);
}

// "Nodes" on this machine: network namespaces joined by veth (each node's
// eth0) to a bridge in another, the head, where mpirun runs. mpirun starts an
// orted on each node through tests/mpi_netns_rsh.sh, the rsh agent that enters
// the namespace its hostfile address belongs to.
class MpiNodesTest : public ::testing::Test {
 protected:
  // The head's bridge gets <prefix>.1/24, node k <prefix>.(11 + k)/24.
  void SetUpHead(const std::string& prefix) {
    prefix_ = prefix;
    dir_ = TempDir("netns");
    auto namespaces = TestNamespaces::Create(dir_);
    ASSERT_TRUE(namespaces.ok()) << namespaces.status();
    namespaces_ = std::move(*namespaces);
    auto head = namespaces_->Add("h");
    ASSERT_TRUE(head.ok()) << head.status();
    head_ = *head;
    ASSERT_TRUE(namespaces_->Ip({"-n", head_, "link", "add", "br0", "type", "bridge"}).ok());
    ASSERT_TRUE(namespaces_->Ip({"-n", head_, "addr", "add", prefix + ".1/24", "dev", "br0"}).ok());
    ASSERT_TRUE(namespaces_->Ip({"-n", head_, "link", "set", "br0", "up"}).ok());
  }

  // A node named `suffix` on the head's bridge.
  void AddNode(const std::string& suffix) {
    auto ns = namespaces_->Add(suffix);
    ASSERT_TRUE(ns.ok()) << ns.status();
    const std::string address = absl::StrCat(prefix_, ".", 11 + nodes_.size());
    const std::string link = "to" + suffix;
    for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
             {"-n", head_, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", *ns},
             {"-n", head_, "link", "set", link, "master", "br0", "up"},
             {"-n", *ns, "addr", "add", address + "/24", "dev", "eth0"},
             {"-n", *ns, "link", "set", "eth0", "up"}}) {
      const absl::Status status = namespaces_->Ip(args);
      ASSERT_TRUE(status.ok()) << status;
    }
    nodes_.push_back({*ns, address});
  }

  // The environment of mpirun: as root, with the agent's map of addresses to
  // namespaces.
  std::vector<std::string> MpirunEnv(const std::string& agent_log) const {
    std::string hosts;
    for (const Node& node : nodes_) absl::StrAppend(&hosts, hosts.empty() ? "" : " ", node.address, "=", node.ns);
    std::vector<std::string> env = kRootEnv;
    env.push_back("REPTILE_NETNS_HOSTS=" + hosts);
    env.push_back("REPTILE_NETNS_RSH_LOG=" + agent_log);
    return env;
  }

  void TearDown() override {
    mpirun_.reset();      // SIGKILLs mpirun if it still runs,
    namespaces_.reset();  // then whatever it left on the nodes, and deletes them
    // Session directories of orteds killed that way (ompi.<hostname>.<uid>).
    std::error_code error;
    for (const Node& node : nodes_)
      for (const auto& entry : std::filesystem::directory_iterator(std::filesystem::temp_directory_path(), error))
        if (absl::StartsWith(entry.path().filename().string(), "ompi." + node.ns + "."))
          std::filesystem::remove_all(entry.path(), error);
  }

  // A node's eth0 byte counters.
  std::pair<long, long> ReceivedAndSent(const std::string& ns) {
    const std::string stats = "/sys/class/net/eth0/statistics/";
    const auto [code, output] = namespaces_->Run(
        {namespaces_->ip(), "netns", "exec", ns, FindTool("cat"), stats + "rx_bytes", stats + "tx_bytes"});
    EXPECT_EQ(code, 0) << output;
    std::vector<std::string> lines = absl::StrSplit(output, '\n', absl::SkipEmpty());
    if (lines.size() < 2) return {-1, -1};
    return {std::atol(lines[0].c_str()), std::atol(lines[1].c_str())};
  }

  struct Node {
    std::string ns, address;
  };
  std::string dir_, head_, prefix_;
  std::vector<Node> nodes_;
  std::unique_ptr<TestNamespaces> namespaces_;
  std::unique_ptr<ChildProcess> mpirun_;
};

// Three nodes: rank 0 is alone on node a, rank 1 on node b, ranks 2 and 3
// share node c; between nodes the ranks talk over TCP on the veth subnet
// (shared memory only within node c).
class MpiNetnsTest : public MpiNodesTest {
 protected:
  static constexpr char kSubnet[] = "10.78.0.0/24";

  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to create network namespaces (euid " << geteuid() << ")";
    ASSERT_NO_FATAL_FAILURE(SetUpHead("10.78.0"));
    for (const char* node : {"a", "b", "c"}) ASSERT_NO_FATAL_FAILURE(AddNode(node));
  }

  // mpirun of 4 ranks of the demo config into `run`, from the head, over
  // the nodes' slots in `hostfile`, placed as `placement` says.
  std::vector<std::string> MpirunArgs(const std::string& hostfile, const std::vector<std::string>& placement,
                                      const std::string& run, const std::vector<std::string>& overrides) const {
    std::vector<std::string> args = {namespaces_->ip(), "netns", "exec", head_, "/usr/bin/mpirun",
                                     "--hostfile", hostfile, "-np", "4"};
    args.insert(args.end(), placement.begin(), placement.end());
    const std::vector<std::string> rest = {
        "--bind-to", "none", "--mca", "plm_rsh_agent", SourcePath("tests/mpi_netns_rsh.sh"),
        "--mca", "oob_tcp_if_include", kSubnet, "--mca", "btl_tcp_if_include", kSubnet,
        "--mca", "btl", "self,vader,tcp",
        REPTILE_BINARY, "mpi", "--config", SourcePath("configs/demo.textproto"), "--run_dir", run};
    args.insert(args.end(), rest.begin(), rest.end());
    args.insert(args.end(), overrides.begin(), overrides.end());
    return args;
  }
};

TEST_F(MpiNetnsTest, RanksOnThreeNodesLaunchedThroughAnRshAgentMatchTheInProcessRun) {
  const auto start = std::chrono::steady_clock::now();
  const std::string logs = TempDir("logs"), run = TempDir("run");
  const std::vector<std::string> overrides = Overrides(30);
  const std::string hostfile = dir_ + "/hostfile", agent_log = dir_ + "/agent.log";
  std::ofstream(hostfile) << nodes_[0].address << " slots=1\n"
                          << nodes_[1].address << " slots=1\n"
                          << nodes_[2].address << " slots=2\n";
  mpirun_ = ChildProcess::Start(MpirunArgs(hostfile, {}, run, overrides), logs + "/mpirun", REPTILE_SOURCE_DIR,
                                MpirunEnv(agent_log));

  // Where each rank runs: the inode of its network namespace, while it runs.
  std::map<ino_t, std::string> node_of;
  for (const Node& node : nodes_) {
    struct stat st;
    ASSERT_EQ(stat(("/run/netns/" + node.ns).c_str(), &st), 0) << node.ns;
    node_of[st.st_ino] = node.ns;
  }
  std::map<int, std::string> rank_node;
  while (rank_node.size() < 4 && mpirun_->running()) {
    for (const auto& proc : Processes()) {
      const std::optional<int> rank = WorldRank(proc.string());
      if (!rank.has_value() || !absl::StrContains(ReadWholeFile(proc.string() + "/cmdline"), run)) continue;
      struct stat st;
      if (stat((proc.string() + "/ns/net").c_str(), &st) != 0) continue;
      rank_node[*rank] = node_of.count(st.st_ino) ? node_of[st.st_ino] : "another namespace";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const int code = mpirun_->ExitCode(300);
  const double mpi_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(code, 0) << mpirun_->err() << mpirun_->out() << "\nagent log:\n" << ReadWholeFile(agent_log);
  EXPECT_TRUE(absl::StrContains(mpirun_->err(), "MPI: 4 ranks")) << mpirun_->err();
  EXPECT_EQ(rank_node, (std::map<int, std::string>{
                           {0, nodes_[0].ns}, {1, nodes_[1].ns}, {2, nodes_[2].ns}, {3, nodes_[2].ns}}));
  const std::string launches = ReadWholeFile(agent_log);
  for (const Node& node : nodes_)
    EXPECT_TRUE(absl::StrContains(launches, node.address + " " + node.ns + " ")) << launches;

  // Rank 0 is alone on node a: everything it sent and received crossed a's
  // veth link. The workers on b and c each got θ and sent results.
  const std::string metrics = ReadWholeFile(run + "/metrics.jsonl");
  long bytes_in = -1, bytes_out = -1;
  const std::regex bytes(R"re("bytes_in":(\d+),"bytes_out":(\d+))re");
  for (auto it = std::sregex_iterator(metrics.begin(), metrics.end(), bytes); it != std::sregex_iterator(); ++it) {
    bytes_in = std::stol((*it)[1]);
    bytes_out = std::stol((*it)[2]);
  }
  ASSERT_GT(bytes_in, 0) << metrics;
  ASSERT_GT(bytes_out, 0) << metrics;
  std::vector<std::pair<long, long>> counters;
  for (const Node& node : nodes_) counters.push_back(ReceivedAndSent(node.ns));
  EXPECT_GE(counters[0].first, bytes_in);
  EXPECT_GE(counters[0].second, bytes_out);
  for (int k = 1; k <= 2; ++k) {
    EXPECT_GE(counters[k].first, bytes_out / 5) << nodes_[k].ns;
    EXPECT_GE(counters[k].second, bytes_in / 5) << nodes_[k].ns;
  }

  EXPECT_EQ(ParameterSha(mpirun_->out()), ThreadsReference(overrides, logs + "/reference")) << mpirun_->out();
  const double total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "mpirun across namespaces: " << mpi_seconds << " s, total " << total_seconds
            << " s; rank 0 in " << bytes_in << " B out " << bytes_out << " B; eth0 received/sent";
  for (size_t k = 0; k < nodes_.size(); ++k)
    std::cout << " " << nodes_[k].ns << " " << counters[k].first << "/" << counters[k].second;
  std::cout << std::endl;
}

// MPI_REDUCE_SUM in two levels: ranks 1 and 3 share node b (mapped by
// node: a holds one slot, b two, c one), and b's ranks add their sums over
// shared memory before one sum leaves the node, per tensor and round. Open
// MPI's own reduce over all ranks, which ignores the nodes, sent 1.51 times
// that over b's link when measured; the two levels send 1.005 times.
TEST_F(MpiNetnsTest, TheReductionSendsOneSumPerNodeOverItsLink) {
  const std::string logs = TempDir("logs"), run = TempDir("run");
  std::vector<std::string> overrides = Overrides(30);
  overrides.push_back("runtime.mpi_reduction=MPI_REDUCE_SUM");
  const std::string hostfile = dir_ + "/hostfile", agent_log = dir_ + "/agent.log";
  std::ofstream(hostfile) << nodes_[0].address << " slots=1\n"
                          << nodes_[1].address << " slots=2\n"
                          << nodes_[2].address << " slots=1\n";
  const std::pair<long, long> b_before = ReceivedAndSent(nodes_[1].ns);
  mpirun_ = ChildProcess::Start(MpirunArgs(hostfile, {"--map-by", "node"}, run, overrides), logs + "/mpirun",
                                REPTILE_SOURCE_DIR, MpirunEnv(agent_log));
  ASSERT_EQ(mpirun_->ExitCode(300), 0) << mpirun_->err() << mpirun_->out() << "\nagent log:\n"
                                       << ReadWholeFile(agent_log);
  EXPECT_EQ(ParameterSha(mpirun_->out()), ThreadsReference(overrides, logs + "/reference")) << mpirun_->out();
  // What rank 0 took in: one sum per tensor and round, the size of what
  // one node sends.
  const int64_t sums_in = Rank0Bytes(run, "bytes_in");
  ASSERT_GT(sums_in, 0);
  const long b_sent = ReceivedAndSent(nodes_[1].ns).second - b_before.second;
  EXPECT_GT(b_sent, sums_in / 2);
  EXPECT_LT(b_sent, sums_in * 5 / 4) << "node b sent " << b_sent << " B; one sum a round is " << sums_in << " B";
  std::cout << "two-level reduction: node b sent " << b_sent << " B for " << sums_in << " B of sums into rank 0"
            << std::endl;
}

// Two nodes whose MPI interface carries nothing, like a docker0 bridge with no
// container on it: each node's eth1 is up, with an address on a subnet of its
// own, but its veth peer is down (no carrier). The orteds start over eth0;
// `--mca btl_tcp_if_include eth1` sends MPI traffic over eth1, where no
// connection completes. Without a deadline such a job sat at round 0, two
// ranks spinning, until killed.
class MpiUnreachableTest : public MpiNodesTest {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to create network namespaces (euid " << geteuid() << ")";
    ASSERT_NO_FATAL_FAILURE(SetUpHead("10.76.0"));
    for (const char* node : {"a", "b"}) {
      ASSERT_NO_FATAL_FAILURE(AddNode(node));
      const std::string& ns = nodes_.back().ns;
      const std::string dead = absl::StrCat("dn", node);  // eth1's peer, left down
      for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
               {"-n", head_, "link", "add", dead, "type", "veth", "peer", "name", "eth1", "netns", ns},
               {"-n", ns, "addr", "add", absl::StrCat("10.77.0.", 10 + nodes_.size(), "/24"), "dev", "eth1"},
               {"-n", ns, "link", "set", "eth1", "up"}}) {
        const absl::Status status = namespaces_->Ip(args);
        ASSERT_TRUE(status.ok()) << status;
      }
    }
  }
};

TEST_F(MpiUnreachableTest, AnInterfaceTheRanksCannotUseEndsTheJobWithinTheDeadlineSayingWhy) {
  constexpr double kDeadline = 5;  // runtime.mpi_connect_timeout_seconds
  const std::string logs = TempDir("logs"), run = TempDir("run");
  const std::string hostfile = dir_ + "/hostfile", agent_log = dir_ + "/agent.log";
  std::ofstream(hostfile) << nodes_[0].address << " slots=1\n" << nodes_[1].address << " slots=2\n";
  std::vector<std::string> args = {namespaces_->ip(), "netns", "exec", head_, "/usr/bin/mpirun",
                                   "--hostfile", hostfile, "-np", "3", "--bind-to", "none",
                                   "--mca", "plm_rsh_agent", SourcePath("tests/mpi_netns_rsh.sh"),
                                   "--mca", "oob_tcp_if_include", "10.76.0.0/24",  // the head has no eth0
                                   "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "eth1",
                                   REPTILE_BINARY, "mpi", "--config", SourcePath("configs/demo.textproto"),
                                   "--run_dir", run, absl::StrCat("runtime.mpi_connect_timeout_seconds=", kDeadline)};
  const std::vector<std::string> overrides = Overrides(30);
  args.insert(args.end(), overrides.begin(), overrides.end());
  const auto start = std::chrono::steady_clock::now();
  mpirun_ = ChildProcess::Start(args, logs + "/mpirun", REPTILE_SOURCE_DIR, MpirunEnv(agent_log));
  // The deadline runs from rank 0's setup, once it has loaded the dataset.
  while (mpirun_->running() && !absl::StrContains(mpirun_->err(), "dataset:") &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const auto ready = std::chrono::steady_clock::now();
  const int code = mpirun_->ExitCode(120);
  const auto ended = std::chrono::steady_clock::now();
  const double seconds = std::chrono::duration<double>(ended - ready).count();
  const std::string err = mpirun_->err(), out = mpirun_->out();
  ASSERT_NE(code, -1) << "the job hung\n" << err << out;
  EXPECT_EQ(code, 1) << err << out;  // rank 0's MPI_Abort code, which mpirun returns
  EXPECT_GT(seconds, kDeadline - 0.5) << err;
  EXPECT_LT(seconds, kDeadline + 15) << err;
  // Which ranks, the likely cause, the fix, and what rank 0's host has.
  for (const char* says : {"rank 0 heard nothing from ranks 1 and 2 (of 3 ranks) within 5 s "
                           "(runtime.mpi_connect_timeout_seconds)",
                           "network interface", "docker0", "--mca btl_tcp_if_include", "--mca oob_tcp_if_include",
                           "OMPI_MCA_btl_tcp_if_include", "eth1 10.77.0.11/24 (no carrier)", "eth0 10.76.0.11/24",
                           "btl_tcp_if_include=eth1", "MPI_ABORT was invoked on rank 0"})
    EXPECT_TRUE(absl::StrContains(err, says)) << "missing \"" << says << "\" in\n" << err;
  EXPECT_FALSE(std::filesystem::exists(run + "/checkpoint.bin"));
  // mpirun took every rank down with it: none runs on any node.
  for (const Node& node : nodes_)
    for (pid_t pid : namespaces_->Pids(node.ns))
      EXPECT_FALSE(absl::StrContains(ReadWholeFile(absl::StrCat("/proc/", pid, "/cmdline")), run))
          << "a rank still runs on " << node.ns << ": pid " << pid;
  std::cout << "unreachable interface: mpirun ended " << seconds << " s after rank 0 had loaded the dataset ("
            << std::chrono::duration<double>(ended - start).count() << " s in all), deadline " << kDeadline << " s"
            << std::endl;
}

// A rank that stops answering mid-run (SIGSTOP: a hung process, a cut link)
// ends the job once its work is overdue: runtime.task_timeout_seconds per
// item it owes, plus runtime.mpi_connect_timeout_seconds. No root needed.
TEST(MpiTest, ARankThatStopsAnsweringEndsTheJobOnceItsWorkIsOverdue) {
  const std::string logs = TempDir("logs"), run = TempDir("run");
  std::vector<std::string> overrides = Overrides(2000);
  overrides.push_back("runtime.task_timeout_seconds=8");  // also the workers' setup: loading the dataset
  overrides.push_back("runtime.mpi_connect_timeout_seconds=3");
  auto mpi = StartMpi(3, run, overrides, logs + "/mpi");
  for (int i = 0; i < 3000 && !absl::StrContains(ReadWholeFile(run + "/metrics.jsonl"), "\"round\":5,"); ++i) {
    ASSERT_TRUE(mpi->running()) << mpi->err();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const pid_t victim = RankPid(mpi->pid(), 2);
  ASSERT_GT(victim, 0) << "rank 2 not found among mpirun's children";
  kill(victim, SIGSTOP);
  const auto stopped_at = std::chrono::steady_clock::now();
  const int code = mpi->ExitCode(120);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped_at).count();
  const std::string err = mpi->err();
  if (code == -1) kill(victim, SIGKILL);
  ASSERT_NE(code, -1) << "the job hung after a rank stopped\n" << err;
  EXPECT_EQ(code, 1) << err;
  // Rank 2 owes at most 3 of the 5 items of a round: 3 x 8 s + 3 s, or 3 s
  // for a broadcast.
  EXPECT_LT(seconds, 27 + 15) << err;
  // Stopped while computing, rank 2 is named ("no result ..." once overdue,
  // "no tensor ..." 3 s after a result's header); while waiting for the next
  // batch, the state's broadcast stalls.
  EXPECT_TRUE(absl::StrContains(err, "from rank 2 within") || absl::StrContains(err, "the broadcast of")) << err;
  EXPECT_TRUE(absl::StrContains(err, "btl_tcp_if_include")) << err;
  // (Exit code 1 with every rank gone is the abort; Open MPI's own banner
  // about it is not always in mpirun's stderr by the time it exits.)
  std::cout << "stopped rank: mpirun ended " << seconds << " s after SIGSTOP; rank 0 said: "
            << err.substr(std::min(err.size(), err.find("reptile mpi: error:")), 200) << std::endl;
}

}  // namespace
}  // namespace reptile::testing
