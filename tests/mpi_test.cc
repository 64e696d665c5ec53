// The MPI runtime under a real `mpirun`: 1+1 and 1+3 ranks give the
// parameters of the in-process run; a rank SIGKILLed mid-run ends the job
// promptly with a message naming it, and relaunching resumes to the same end.
// MPI_REDUCE_SUM mode is repeatable for a fixed job size, brings less into
// rank 0, and lands next to the in-order parameters.
#include <signal.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "coordinator/checkpoint.h"
#include "gtest/gtest.h"
#include "tests/child_process.h"
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

// The pid of the process of `rank` among mpirun's children.
pid_t RankPid(pid_t mpirun, int rank) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string stat = ReadWholeFile(entry.path().string() + "/stat");
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::vector<std::string> fields = absl::StrSplit(stat.substr(close + 2), ' ');
    if (fields.size() < 2 || std::atoi(fields[1].c_str()) != mpirun) continue;
    std::ifstream in(entry.path().string() + "/environ", std::ios::binary);
    std::string variable;
    while (std::getline(in, variable, '\0'))
      if (variable == absl::StrCat("OMPI_COMM_WORLD_RANK=", rank)) return std::atoi(name.c_str());
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
                                        "--stop_at_round", "20"};
  auto grpc = ChildProcess::Start(grpc_args, logs + "/grpc");
  ASSERT_EQ(grpc->ExitCode(300), 0) << grpc->err();
  EXPECT_TRUE(absl::StrContains(grpc->err(), "at round 10")) << grpc->err();
  auto last = StartMpi(2, run, overrides, logs + "/mpi_last");
  ASSERT_EQ(last->ExitCode(300), 0) << last->err();
  EXPECT_TRUE(absl::StrContains(last->err(), "at round 20")) << last->err();
  EXPECT_EQ(ParameterSha(last->out()), ThreadsReference(overrides, logs + "/reference"));
}

// The bytes rank 0 received over a run: "bytes_in" of its last round record
// (the transport counts from the start of the process).
int64_t BytesIntoRank0(const std::string& run_dir) {
  int64_t total = 0;
  for (absl::string_view line : absl::StrSplit(ReadWholeFile(run_dir + "/metrics.jsonl"), '\n')) {
    const size_t at = line.find("\"bytes_in\":");
    if (!absl::StrContains(line, "\"kind\":\"round\"") || at == absl::string_view::npos) continue;
    total = std::atoll(std::string(line.substr(at + 11)).c_str());
  }
  return total;
}

TEST(MpiTest, ReduceSumModeIsRepeatableAndBringsLessIntoRankZero) {
  const std::string logs = TempDir("logs");
  std::vector<std::string> overrides = Overrides(20);
  const std::string gather_run = TempDir("gather");
  auto gather = StartMpi(4, gather_run, overrides, logs + "/gather");
  ASSERT_EQ(gather->ExitCode(300), 0) << gather->err();
  overrides.push_back("runtime.mpi_reduction=MPI_REDUCE_SUM");
  std::vector<std::string> runs, shas;
  for (int attempt = 0; attempt < 2; ++attempt) {
    runs.push_back(TempDir(absl::StrCat("reduce", attempt)));
    auto reduce = StartMpi(4, runs.back(), overrides, absl::StrCat(logs, "/reduce", attempt));
    ASSERT_EQ(reduce->ExitCode(300), 0) << reduce->err();
    shas.push_back(ParameterSha(reduce->out()));
  }
  EXPECT_EQ(shas[0], shas[1]) << "the same job size gave two different results";
  // Demo meta-batches of 5 tasks over 3 working ranks: rank 0 receives one
  // summed model per round instead of five deltas.
  const int64_t gathered = BytesIntoRank0(gather_run), reduced = BytesIntoRank0(runs[0]);
  EXPECT_GT(gathered, 0);
  EXPECT_LT(reduced * 4, gathered) << reduced << " vs " << gathered;
  // Only the summation order differs: the parameters stay close.
  auto in_order = ReadCheckpoint(gather_run + "/checkpoint.bin");
  auto summed = ReadCheckpoint(runs[0] + "/checkpoint.bin");
  ASSERT_TRUE(in_order.ok() && summed.ok());
  EXPECT_EQ(summed->round, 20);
  const double scale = in_order->meta.parameters.abs().max().item<double>();
  const double gap = (summed->meta.parameters - in_order->meta.parameters).abs().max().item<double>();
  EXPECT_LT(gap, 1e-2 * scale) << "reduce-sum parameters drifted from the in-order run";
}

}  // namespace
}  // namespace reptile::testing
