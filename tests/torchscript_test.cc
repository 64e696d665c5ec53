// A user's TorchScript model (model.arch: TORCHSCRIPT) end to end, with real
// processes: scripted in Python by tests/torchscript/make_models.py with
// Debian's python3-torch, refused with one line when it does not fit, trained
// to the same bits on threads, shared-memory worker processes, gRPC (a
// worker without the file receives it) and MPI, and exported back to
// PyTorch, whose numbers must match reptile's own.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "coordinator/checkpoint.h"
#include "core/flat_parameters.h"
#include "core/models/models.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/child_process.h"
#include "tests/test_support.h"

namespace reptile::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kPython[] = "/usr/bin/python3";  // Debian's, with python3-torch

// Omniglot 5-way 1-shot as configs/demo.textproto has it, a few rounds.
std::vector<std::string> Omniglot(const std::string& model_file, int rounds) {
  return {"task.data_dir=" + OmniglotDir(),
          "model.arch=TORCHSCRIPT",
          "model.torchscript_file=" + model_file,
          absl::StrCat("outer.rounds=", rounds),
          "eval.every_rounds=2",
          "eval.episodes=3",
          "eval.final_episodes=4",
          "runtime.checkpoint_every_rounds=2",
          "runtime.heartbeat_seconds=0.3",
          "runtime.worker_timeout_seconds=3"};
}

std::vector<std::string> Concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::string Quoted(const std::vector<std::string>& args) {
  std::vector<std::string> quoted;
  for (const std::string& a : args) quoted.push_back("'" + a + "'");
  return absl::StrJoin(quoted, " ");
}

class TorchScriptTest : public ::testing::Test {
 protected:
  // The fixtures, made once per test process (ctest runs one test a process).
  static void SetUpTestSuite() {
    const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / TestTreeFolder() /
                                      absl::StrCat("torchscript_models_", getpid());
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    models_ = new std::string(dir.string());
    const ShellResult made = Shell(absl::StrCat(kPython, " tests/torchscript/make_models.py fixtures ", *models_));
    ASSERT_EQ(made.exit_code, 0) << made.output << "\n(scripts/install_deps.sh installs python3-torch)";
  }

  static void TearDownTestSuite() { std::filesystem::remove_all(*models_); }

  static std::string Model(const std::string& name) { return *models_ + "/" + name; }

  void SetUp() override { logs_ = TempDir("logs"); }
  std::string Log(const std::string& name) const { return logs_ + "/" + name; }

  // `reptile train` of configs/demo.textproto with `overrides`; its
  // parameters' SHA-256 (the test fails if it does not finish).
  std::string Train(const std::string& run_dir, const std::vector<std::string>& overrides, const std::string& log) {
    auto train = ChildProcess::Start(
        Concat({REPTILE_BINARY, "train", "--config", SourcePath("configs/demo.textproto"), "--run_dir", run_dir},
               overrides),
        Log(log));
    EXPECT_EQ(train->ExitCode(300), 0) << train->err();
    return ParameterSha(train->out());
  }

  std::string ThreadsReference(const std::vector<std::string>& overrides) {
    return Train(TempDir("reference"), Concat(overrides, {"runtime.local_workers=THREADS", "--workers", "2"}),
                 "reference");
  }

  static std::string* models_;
  std::string logs_;
};

std::string* TorchScriptTest::models_ = nullptr;

TEST_F(TorchScriptTest, ModelsThatDoNotFitStopBeforeTrainingWithOneLineNamingTheFile) {
  const struct {
    std::string file, problem;
  } cases[] = {
      {"not_torchscript.pt", "not a TorchScript module (save one with torch.jit.save)"},
      {"wrong_ways.pt", "forward maps inputs [2, 1, 28, 28] to [2, 3]; the task needs [2, 5 (task.ways)]"},
      {"float64.pt", "parameter conv.weight is Double, not float32"},
      {"no_parameters.pt", "the module has no parameters"},
      {"bad_forward.pt", "forward fails on a batch of the task's inputs [2, 1, 28, 28]"},
      {"missing.pt", "cannot read it"},
  };
  for (const auto& c : cases) {
    const std::string run = TempDir("refused");
    const ShellResult train = RunReptile(absl::StrCat(
        "train --config configs/demo.textproto --run_dir ", run, " ", Quoted(Omniglot(Model(c.file), 2))));
    EXPECT_EQ(train.exit_code, 1) << train.output;
    EXPECT_THAT(train.output, HasSubstr(absl::StrCat("reptile train: error: ")));
    EXPECT_THAT(train.output, HasSubstr(Model(c.file))) << c.file;
    EXPECT_THAT(train.output, HasSubstr(c.problem)) << c.file;
    EXPECT_FALSE(std::filesystem::exists(run + "/model.pt")) << c.file;
    EXPECT_FALSE(std::filesystem::exists(run + "/checkpoint.bin")) << c.file;
  }
}

TEST_F(TorchScriptTest, TrainsToTheSameBitsOnThreadsAndWorkerProcessesAndResumes) {
  const std::vector<std::string> overrides = Omniglot(Model("conv_bn_running.pt"), 6);
  const std::string reference = ThreadsReference(overrides);
  ASSERT_EQ(reference.size(), 64u);
  EXPECT_EQ(Train(TempDir("one_thread"), Concat(overrides, {"runtime.local_workers=THREADS", "--workers", "1"}),
                  "one_thread"),
            reference);
  EXPECT_EQ(Train(TempDir("grouped"), Concat(overrides, {"runtime.local_workers=THREADS", "--workers", "3",
                                                         "runtime.tasks_per_item=2"}),
                  "grouped"),
            reference);
  const std::string processes = TempDir("processes");
  EXPECT_EQ(Train(processes, Concat(overrides, {"--workers", "2"}), "processes"), reference);
  // theta holds the batch norm's running statistics: 8 tensors, 2 of them buffers.
  const ShellResult inspect = RunReptile("inspect --run_dir " + processes);
  EXPECT_THAT(inspect.output, HasSubstr("in 8 tensors")) << inspect.output;

  // Stopped after round 3 and resumed, from a run directory moved elsewhere.
  const std::string first = TempDir("stopped");
  Train(first, Concat(overrides, {"--workers", "2", "--stop_at_round", "3"}), "stopped");
  const std::string moved = TempDir("moved") + "/run";
  std::filesystem::rename(first, moved);
  auto resumed = ChildProcess::Start({REPTILE_BINARY, "train", "--run_dir", moved, "--workers", "2"}, Log("resumed"));
  EXPECT_EQ(resumed->ExitCode(300), 0) << resumed->err();
  EXPECT_EQ(ParameterSha(resumed->out()), reference);
  const ShellResult eval = RunReptile("eval --run_dir " + moved + " --episodes 4");
  EXPECT_EQ(eval.exit_code, 0) << eval.output;
}

TEST_F(TorchScriptTest, FirstOrderMamlAndSineTrainTheSameOnThreadsAndProcesses) {
  const std::vector<std::string> fomaml = Concat(Omniglot(Model("conv_bn_running.pt"), 4), {"outer.algorithm=FOMAML"});
  EXPECT_EQ(Train(TempDir("fomaml"), Concat(fomaml, {"--workers", "2"}), "fomaml"), ThreadsReference(fomaml));
  const std::vector<std::string> sine = {"model.arch=TORCHSCRIPT", "model.torchscript_file=" + Model("sine_mlp.pt"),
                                         "outer.rounds=20", "eval.every_rounds=0", "eval.final_episodes=5"};
  auto config = [&](const std::string& run, const std::vector<std::string>& extra) {
    auto train = ChildProcess::Start(
        Concat(Concat({REPTILE_BINARY, "train", "--config", SourcePath("configs/sine.textproto"), "--run_dir", run},
                      sine),
               extra),
        Log("sine"));
    EXPECT_EQ(train->ExitCode(300), 0) << train->err();
    return ParameterSha(train->out());
  };
  EXPECT_EQ(config(TempDir("sine_processes"), {"--workers", "2"}),
            config(TempDir("sine_threads"), {"--workers", "2", "runtime.local_workers=THREADS"}));
}

TEST_F(TorchScriptTest, AGrpcWorkerWithoutTheFileReceivesItAndOneWithAnotherIsRefused) {
  const std::vector<std::string> overrides = Omniglot(Model("conv_bn_running.pt"), 4);
  const std::string reference = ThreadsReference(overrides);
  const std::string run = TempDir("coordinator");
  int port = 0;
  auto coordinator = StartListening(
      Concat({REPTILE_BINARY, "coordinator", "--config", SourcePath("configs/demo.textproto"), "--run_dir", run,
              "--listen", "127.0.0.1:0"},
             overrides),
      run, Log("coordinator"), &port);
  ASSERT_GT(port, 0) << coordinator->err();

  // Another model: refused at join, naming both digests.
  auto other = StartLoopbackWorker(REPTILE_BINARY, port, Log("other"),
                                   {"--config", SourcePath("configs/demo.textproto"),
                                    "model.arch=TORCHSCRIPT", "model.torchscript_file=" + Model("conv_bn_other.pt"),
                                    "task.data_dir=" + OmniglotDir()});
  EXPECT_EQ(other->ExitCode(60), 1) << other->err();
  EXPECT_THAT(other->err(), HasSubstr("worker's model file has SHA-256"));

  // The run's own copy is out of the worker's sight: it must fetch the model.
  const std::string hidden = run + "/model.pt.hidden";
  std::filesystem::rename(run + "/model.pt", hidden);
  auto worker = StartLoopbackWorker(REPTILE_BINARY, port, Log("worker"));
  for (int i = 0; i < 600 && worker->err().find("received the run's model") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::filesystem::rename(hidden, run + "/model.pt");
  EXPECT_THAT(worker->err(), HasSubstr("received the run's model"));
  EXPECT_EQ(coordinator->ExitCode(300), 0) << coordinator->err();
  EXPECT_EQ(worker->ExitCode(60), 0) << worker->err();
  EXPECT_EQ(ParameterSha(coordinator->out()), reference);
}

TEST_F(TorchScriptTest, MpiRanksReceiveTheModelAndMatchThreads) {
  const std::vector<std::string> overrides = Omniglot(Model("conv_bn_running.pt"), 4);
  const std::string reference = ThreadsReference(overrides);
  const std::string run = TempDir("mpi");
  auto mpi = ChildProcess::Start(
      Concat({"/usr/bin/mpirun", "--oversubscribe", "--bind-to", "none", "-np", "3", REPTILE_BINARY, "mpi",
              "--config", SourcePath("configs/demo.textproto"), "--run_dir", run},
             overrides),
      Log("mpi"), REPTILE_SOURCE_DIR,
      {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
       "OMPI_MCA_btl_vader_single_copy_mechanism=none"});
  EXPECT_EQ(mpi->ExitCode(300), 0) << mpi->err();
  EXPECT_EQ(ParameterSha(mpi->out()), reference);
}

// reptile's own logits for the checkpoint of `run_dir` on the tests' fixed
// input of `shape`.
std::vector<double> ReptileLogits(const std::string& run_dir, const std::vector<int64_t>& shape) {
  absl::StatusOr<TrainingState> state = ReadCheckpoint(run_dir + "/checkpoint.bin");
  EXPECT_TRUE(state.ok()) << state.status();
  ExperimentConfig config = state->config;
  if (config.model().arch() == TORCHSCRIPT) config.mutable_model()->set_torchscript_file(run_dir + "/model.pt");
  absl::StatusOr<std::shared_ptr<MetaModel>> model = MakeModel(config);
  EXPECT_TRUE(model.ok()) << model.status();
  FlatParameters flat(**model);
  torch::NoGradGuard no_grad;
  flat.values().copy_(state->meta.parameters);
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const torch::Tensor out = (*model)->forward(torch::linspace(0, 1, numel).reshape(shape)).to(torch::kFloat64);
  return std::vector<double>(out.data_ptr<double>(), out.data_ptr<double>() + out.numel());
}

std::vector<double> Numbers(const std::string& line) {
  std::vector<double> numbers;
  for (absl::string_view word : absl::StrSplit(line, ' ', absl::SkipWhitespace())) numbers.push_back(std::stod(std::string(word)));
  return numbers;
}

void ExpectClose(const std::vector<double>& ours, const std::vector<double>& theirs) {
  ASSERT_EQ(ours.size(), theirs.size());
  double worst = 0;
  for (size_t i = 0; i < ours.size(); ++i) worst = std::max(worst, std::abs(ours[i] - theirs[i]));
  EXPECT_LE(worst, 1e-5);
}

TEST_F(TorchScriptTest, ExportedModelsGivePyTorchReptilesOwnLogits) {
  // A built-in network as a state dict, loaded into python/reptile_models.py's twin.
  const std::string builtin = TempDir("builtin");
  Train(builtin, {"task.data_dir=" + OmniglotDir(), "outer.rounds=3", "eval.every_rounds=0", "eval.final_episodes=2",
                  "runtime.local_workers=THREADS"},
        "builtin");
  const std::string state_dict = builtin + "/exported.pt";
  const ShellResult exported = RunReptile(absl::StrCat("export --run_dir ", builtin, " --out ", state_dict));
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  EXPECT_THAT(exported.output, HasSubstr("state dict, round 3"));
  const ShellResult torch_logits =
      Shell(absl::StrCat(kPython, " tests/torchscript/logits.py state_dict ", state_dict, " 5 6 1 28 28"));
  ASSERT_EQ(torch_logits.exit_code, 0) << torch_logits.output;
  ExpectClose(ReptileLogits(builtin, {6, 1, 28, 28}), Numbers(torch_logits.output));

  // A TorchScript run as TorchScript, with its trained batch-norm statistics.
  const std::string scripted = TempDir("scripted");
  Train(scripted, Concat(Omniglot(Model("conv_bn_running.pt"), 3), {"runtime.local_workers=THREADS"}), "scripted");
  const std::string module = scripted + "/exported.pt";
  ASSERT_EQ(RunReptile(absl::StrCat("export --run_dir ", scripted, " --out ", module)).exit_code, 0);
  const ShellResult jit_logits =
      Shell(absl::StrCat(kPython, " tests/torchscript/logits.py torchscript ", module, " 6 1 28 28"));
  ASSERT_EQ(jit_logits.exit_code, 0) << jit_logits.output;
  ExpectClose(ReptileLogits(scripted, {6, 1, 28, 28}), Numbers(jit_logits.output));

  // Its state dict holds theta's tensors, buffers included, by the module's names.
  const std::string tensors = scripted + "/tensors.pt";
  ASSERT_EQ(RunReptile(absl::StrCat("export --run_dir ", scripted, " --out ", tensors, " --format state_dict")).exit_code,
            0);
  const ShellResult keys = Shell(absl::StrCat(kPython, " tests/torchscript/logits.py tensors ", tensors));
  EXPECT_THAT(keys.output, HasSubstr("norm.running_mean [8]"));
  EXPECT_THAT(keys.output, HasSubstr("head.weight [5, 1568]"));

  // A built-in run has no TorchScript module to write.
  const ShellResult refused =
      RunReptile(absl::StrCat("export --run_dir ", builtin, " --out ", builtin, "/x.pt --format torchscript"));
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_THAT(refused.output, HasSubstr("use --format state_dict"));
}

// The twin's batch_norm -> relu runs as the built-in network's fused kernel
// (core/models/torchscript_model.cc), so it computes the same bits.
TEST_F(TorchScriptTest, ATwinOfTheBuiltInNetworkTrainsToItsBits) {
  // CONV_OMNIGLOT's theta at round 0, into python/reptile_models.py's twin.
  const std::vector<std::string> common = {"task.data_dir=" + OmniglotDir(), "eval.every_rounds=0",
                                           "eval.final_episodes=0"};
  const std::string builtin = TempDir("builtin");
  const std::string initial = Train(builtin, Concat(common, {"--stop_at_round", "0"}), "initial");
  ASSERT_EQ(RunReptile(absl::StrCat("export --run_dir ", builtin, " --out ", builtin, "/theta0.pt")).exit_code, 0);
  const std::string twin = builtin + "/twin.pt";
  const ShellResult made =
      Shell(absl::StrCat(kPython, " tests/torchscript/make_models.py twin ", builtin, "/theta0.pt ", twin));
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const std::vector<std::string> scripted =
      Concat(common, {"model.arch=TORCHSCRIPT", "model.torchscript_file=" + twin});
  const std::string twin_run = TempDir("twin");
  EXPECT_EQ(Train(twin_run, Concat(scripted, {"--stop_at_round", "0"}), "twin_initial"), initial);

  // Ten rounds on, built-in on threads and the twin on worker processes.
  const std::string trained =
      Train(builtin, Concat(common, {"runtime.local_workers=THREADS", "--stop_at_round", "10"}), "builtin_round10");
  EXPECT_EQ(Train(twin_run, Concat(scripted, {"runtime.local_workers=PROCESSES", "--stop_at_round", "10"}),
                  "twin_round10"),
            trained);
}

}  // namespace
}  // namespace reptile::testing
