// End-to-end tests of the `reptile` binary: real processes, real files.
#include <png.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/ascii.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/child_process.h"
#include "tests/test_support.h"

namespace reptile {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

using Result = testing::ShellResult;
using testing::RunReptile;
using testing::Shell;

std::string Sha(const std::string& output) {
  const size_t at = output.find("sha256 ");
  return at == std::string::npos ? "" : output.substr(at + 7, 64);
}

const char kSineShort[] = "--config configs/sine.textproto outer.rounds=60 eval.every_rounds=20 eval.episodes=5 "
                          "eval.final_episodes=20 runtime.checkpoint_every_rounds=10";

TEST(CliTest, TrainInspectEvalAndResume) {
  const std::string dir = testing::TempDir("run");
  Result train = RunReptile(absl::StrCat("train --run_dir ", dir, " ", kSineShort));
  ASSERT_EQ(train.exit_code, 0) << train.output;
  EXPECT_THAT(train.output, HasSubstr("round 60/60"));
  EXPECT_THAT(train.output, HasSubstr("rounds/s"));
  EXPECT_THAT(train.output, HasSubstr("final evaluation: query MSE"));
  const std::string sha = Sha(train.output);
  ASSERT_EQ(sha.size(), 64u);

  std::ifstream metrics(dir + "/metrics.jsonl");
  std::string line;
  int rounds = 0, evals = 0, finals = 0;
  while (std::getline(metrics, line)) {
    rounds += line.find("\"kind\":\"round\"") != std::string::npos;
    evals += line.find("\"kind\":\"eval\"") != std::string::npos;
    finals += line.find("\"kind\":\"final_eval\"") != std::string::npos;
  }
  EXPECT_EQ(rounds, 60);
  EXPECT_EQ(evals, 2);
  EXPECT_EQ(finals, 1);
  EXPECT_TRUE(std::filesystem::exists(dir + "/config.textproto"));

  Result inspect = RunReptile(absl::StrCat("inspect --run_dir ", dir));
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_THAT(inspect.output, HasSubstr("round 60 of 60"));
  EXPECT_EQ(Sha(inspect.output), sha);

  Result eval = RunReptile(absl::StrCat("eval --run_dir ", dir, " --episodes 10"));
  ASSERT_EQ(eval.exit_code, 0) << eval.output;
  EXPECT_THAT(eval.output, HasSubstr("query MSE"));

  // Stopped at round 25, then resumed (without --config) with another worker count.
  const std::string resumed = testing::TempDir("resumed");
  Result first = RunReptile(absl::StrCat("train --run_dir ", resumed, " --stop_at_round 25 --workers 1 ", kSineShort));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_NE(Sha(first.output), sha);
  Result second = RunReptile(absl::StrCat("train --run_dir ", resumed, " --workers 3"));
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_THAT(second.output, HasSubstr("resuming"));
  EXPECT_EQ(Sha(second.output), sha);

  // A finished run has nothing left to do: no second final evaluation.
  Result again = RunReptile(absl::StrCat("train --run_dir ", dir));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("the run finished at round 60; nothing to do"));
  EXPECT_THAT(again.output, Not(HasSubstr("final evaluation")));
  EXPECT_EQ(Sha(again.output), sha);
}

// `reptile train --workers N` keeps its shared board in a private folder it
// removes at the end; one killed with SIGKILL cannot, so the next run
// removes it, once its process is gone.
TEST(CliTest, AFolderLeftByAKilledTrainIsRemovedByTheNextOne) {
  const std::string base = access("/dev/shm", W_OK | X_OK) == 0 ? "/dev/shm" : "/tmp";
  const std::string dir = testing::TempDir("killed");
  auto killed = testing::ChildProcess::Start({REPTILE_BINARY, "train", "--run_dir", dir, "--workers", "1", "--config",
                                     "configs/sine.textproto", "outer.rounds=100000"},
                                    dir + "/../killed");
  const std::string prefix = absl::StrCat("reptile-", killed->pid(), "-");
  // The folder is made before the board in it: wait for the board, so that
  // the kill lands on a folder in use.
  std::string folder;
  for (int i = 0; i < 600 && killed->running(); ++i) {
    for (const auto& entry : std::filesystem::directory_iterator(base))
      if (absl::StartsWith(entry.path().filename().string(), prefix)) folder = entry.path().string();
    if (!folder.empty() && std::filesystem::exists(std::filesystem::symlink_status(folder + "/board"))) break;
    usleep(50000);
  }
  ASSERT_FALSE(folder.empty()) << killed->err();
  killed->Signal(SIGKILL);
  ASSERT_TRUE(killed->Wait(10).has_value());
  ASSERT_TRUE(std::filesystem::exists(std::filesystem::symlink_status(folder + "/board"))) << "a killed process removes nothing";

  Result next = RunReptile(absl::StrCat("train --run_dir ", testing::TempDir("next"),
                                        " --workers 1 --config configs/sine.textproto outer.rounds=5"));
  ASSERT_EQ(next.exit_code, 0) << next.output;
  EXPECT_FALSE(std::filesystem::exists(folder)) << folder;
}

// One process at a time holds a run directory: a second `reptile train` on
// it stops at once naming the holder, and a holder killed by SIGKILL leaves
// the lock to the next run, which resumes.
TEST(CliTest, ASecondTrainOnABusyRunDirectoryStopsAtOnceNamingTheHolder) {
  const std::string dir = testing::TempDir("busy");
  const std::vector<std::string> train = {REPTILE_BINARY, "train", "--run_dir", dir, "--workers", "1", "--config",
                                          "configs/sine.textproto", "outer.rounds=100000",
                                          "runtime.checkpoint_every_rounds=10"};
  auto holder = testing::ChildProcess::Start(train, dir + "/../holder");
  const std::string holder_says = absl::StrCat("pid ", holder->pid(), " on ");
  for (int i = 0; i < 600 && holder->running() &&
                  !(absl::StartsWith(testing::ReadWholeFile(dir + "/lock"), holder_says) &&
                    std::filesystem::exists(dir + "/checkpoint.bin"));
       ++i)
    usleep(50000);
  ASSERT_TRUE(holder->running()) << holder->err();

  auto second = testing::ChildProcess::Start(train, dir + "/../second");
  EXPECT_EQ(second->ExitCode(60), 1);
  EXPECT_THAT(second->err(), HasSubstr(absl::StrCat("run directory ", dir, " is in use by another process (",
                                                    holder_says)));
  EXPECT_TRUE(holder->running());

  holder->Signal(SIGKILL);
  ASSERT_TRUE(holder->Wait(10).has_value());
  std::ofstream(dir + "/config.textproto.tmp-1-0") << "torn by the kill";
  Result resumed = RunReptile(absl::StrCat("train --run_dir ", dir, " --stop_at_round 0 --workers 1"));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_THAT(resumed.output, HasSubstr(absl::StrCat("resuming ", dir, " at round ")));
  EXPECT_FALSE(std::filesystem::exists(dir + "/config.textproto.tmp-1-0"));
}

TEST(CliTest, BadInputIsOneClearLineAndNonZeroExit) {
  const std::string dir = testing::TempDir("run");
  Result unknown = RunReptile(absl::StrCat("train --run_dir ", dir, " --config configs/sine.textproto inner.iteratons=3"));
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.output, HasSubstr("iteratons"));
  EXPECT_THAT(unknown.output, Not(HasSubstr("terminate")));

  Result invalid = RunReptile(absl::StrCat("train --run_dir ", dir, " --config configs/sine.textproto outer.rounds=-5"));
  EXPECT_EQ(invalid.exit_code, 1);
  EXPECT_THAT(invalid.output, HasSubstr("outer.rounds"));

  Result missing_data = RunReptile(absl::StrCat("train --run_dir ", dir,
                                         " --config configs/omniglot_5w1s.textproto task.data_dir=/nonexistent/omni"));
  EXPECT_EQ(missing_data.exit_code, 1);
  EXPECT_THAT(missing_data.output, HasSubstr("/nonexistent/omni"));

  std::ofstream(dir + "/checkpoint.bin") << "garbage";
  Result corrupt = RunReptile(absl::StrCat("inspect --run_dir ", dir));
  EXPECT_EQ(corrupt.exit_code, 1);
  EXPECT_THAT(corrupt.output, HasSubstr("checkpoint.bin"));

  Result no_command = RunReptile("frobnicate");
  EXPECT_EQ(no_command.exit_code, 2);
}

// stdout and stderr apart, for the help and usage-error cases.
struct SplitResult {
  int exit_code;
  std::string out, err;
};

SplitResult RunReptileSplit(const std::string& args) {
  const std::string err_file = testing::TempDir("stderr") + "/err.txt";
  const std::string command = absl::StrCat("cd ", REPTILE_SOURCE_DIR, " && ", REPTILE_BINARY, " ", args, " 2>", err_file);
  FILE* pipe = popen(command.c_str(), "r");
  SplitResult result{-1, "", ""};
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.out.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.err = testing::ReadWholeFile(err_file);
  return result;
}

int Lines(const std::string& text) { return static_cast<int>(std::count(text.begin(), text.end(), '\n')); }

// What abseil's own --help prints when no flag is defined in a file named
// like the program: useless here, and never shown.
void ExpectNoAbseilHelp(const std::string& text) {
  EXPECT_THAT(text, Not(HasSubstr("No flags matched")));
  EXPECT_THAT(text, Not(HasSubstr("Try --helpfull")));
}

TEST(CliTest, HelpListsTheCommandsAndExitsZero) {
  for (const std::string args : {"--help", "help", "-h", "--helpshort"}) {
    SplitResult help = RunReptileSplit(args);
    EXPECT_EQ(help.exit_code, 0) << args << ": " << help.err;
    EXPECT_EQ(help.err, "") << args;
    ExpectNoAbseilHelp(help.out);
    EXPECT_THAT(help.out, HasSubstr("usage: reptile COMMAND"));
    for (const char* command : {"train", "eval", "adapt", "inspect", "plot", "analyze", "coordinator", "worker", "mpi"})
      EXPECT_THAT(help.out, HasSubstr(absl::StrCat("\n  ", command, " "))) << args;
    EXPECT_THAT(help.out, HasSubstr("reptile help COMMAND"));
  }
}

TEST(CliTest, CommandHelpListsItsFlagsWithDefaultsAndExitsZero) {
  struct Case {
    std::string command;
    std::vector<std::string> flags;  // "--name=default" as printed
    std::vector<std::string> not_flags;
  };
  const std::vector<Case> cases = {
      {"train", {"--config=\"\"", "--run_dir=\"\"", "--workers=0", "--stop_at_round=-1"}, {"--listen", "--coordinator"}},
      {"eval", {"--run_dir=\"\"", "--checkpoint=\"\"", "--episodes=0"}, {"--listen"}},
      {"adapt", {"--support_dir=\"\"", "--query_dir=\"\""}, {"--episodes"}},
      {"inspect", {"--run_dir=\"\"", "--checkpoint=\"\""}, {"--config"}},
      {"plot", {"--run_dir=\"\"", "--out=\"\""}, {"--episodes", "--config"}},
      {"analyze", {"--run_dir=\"\"", "--checkpoint=\"\"", "--episodes=0", "--workers=0", "--out=\"\""}, {"--listen"}},
      {"coordinator",
       {"--listen=\"127.0.0.1:7070\"", "--insecure_listen=false", "--port_file=\"\"", "--token_file=\"\"",
        "--tls_cert=\"\"", "--tls_key=\"\"", "--tls_ca=\"\""},
       {"--coordinator", "--tls_server_name"}},
      {"worker", {"--coordinator=\"\"", "--data_dir=\"\"", "--learners=1", "--tls_server_name=\"\""}, {"--listen", "--run_dir"}},
      {"mpi", {"--config=\"\"", "--run_dir=\"\""}, {"--listen"}},
  };
  for (const Case& c : cases) {
    for (const std::string& args :
         {c.command + " --help", "help " + c.command, c.command + " -h", c.command + " --run_dir /x --help"}) {
      SplitResult help = RunReptileSplit(args);
      EXPECT_EQ(help.exit_code, 0) << args << ": " << help.err;
      EXPECT_EQ(help.err, "") << args;
      ExpectNoAbseilHelp(help.out);
      EXPECT_THAT(help.out, HasSubstr(absl::StrCat("usage: reptile ", c.command))) << args;
      for (const std::string& flag : c.flags) EXPECT_THAT(help.out, HasSubstr("  " + flag + " ")) << args;
      for (const std::string& flag : c.not_flags) EXPECT_THAT(help.out, Not(HasSubstr(flag + "="))) << args;
      // One line per flag: the name and default, then its description.
      for (absl::string_view line : absl::StrSplit(help.out, '\n'))
        if (absl::StartsWith(line, "  --")) EXPECT_NE(line.find("  ", 4), absl::string_view::npos) << line;
    }
  }
  // A flag's description is the part for the command asked about.
  SplitResult worker = RunReptileSplit("worker --help");
  EXPECT_THAT(worker.out, HasSubstr("authority to trust"));
  EXPECT_THAT(worker.out, Not(HasSubstr("require client certificates")));
  SplitResult coordinator = RunReptileSplit("help coordinator");
  EXPECT_THAT(coordinator.out, HasSubstr("require client certificates"));
  EXPECT_THAT(coordinator.out, Not(HasSubstr("authority to trust")));
  // The help command's own help.
  SplitResult help_help = RunReptileSplit("help help");
  EXPECT_EQ(help_help.exit_code, 0);
  EXPECT_THAT(help_help.out, HasSubstr("usage: reptile help [COMMAND]"));
}

TEST(CliTest, UnknownCommandOrFlagIsOneLineOnStderrAndNonZeroExit) {
  SplitResult command = RunReptileSplit("frobnicate");
  EXPECT_EQ(command.exit_code, 2);
  EXPECT_EQ(command.out, "");
  EXPECT_EQ(Lines(command.err), 1) << command.err;
  EXPECT_THAT(command.err, HasSubstr("unknown command 'frobnicate'"));

  SplitResult help_unknown = RunReptileSplit("help frobnicate");
  EXPECT_EQ(help_unknown.exit_code, 2);
  EXPECT_EQ(help_unknown.out, "");
  EXPECT_EQ(Lines(help_unknown.err), 1) << help_unknown.err;
  EXPECT_THAT(help_unknown.err, HasSubstr("unknown command 'frobnicate'"));

  for (const std::string args : {"train --frobnicate", "--frobnicate", "inspect --frobnicate=3 --run_dir /x"}) {
    SplitResult flag = RunReptileSplit(args);
    EXPECT_NE(flag.exit_code, 0) << args;
    EXPECT_EQ(flag.out, "") << args;
    EXPECT_EQ(Lines(flag.err), 1) << args << ": " << flag.err;
    EXPECT_THAT(flag.err, HasSubstr("frobnicate")) << args;
  }

  SplitResult nothing = RunReptileSplit("");
  EXPECT_EQ(nothing.exit_code, 2);
  EXPECT_THAT(nothing.err, HasSubstr("usage: reptile COMMAND"));
}

// The container image's default command (deploy/docker/Dockerfile CMD, after
// its ENTRYPOINT, the binary) prints the help and exits 0.
TEST(CliTest, ContainerDefaultCommandPrintsHelpAndExitsZero) {
  const std::string dockerfile = testing::ReadWholeFile(std::string(REPTILE_SOURCE_DIR) + "/deploy/docker/Dockerfile");
  std::string cmd;
  for (absl::string_view line : absl::StrSplit(dockerfile, '\n'))
    if (absl::StartsWith(line, "CMD ")) cmd = std::string(line.substr(4));
  ASSERT_FALSE(cmd.empty()) << "no CMD in the Dockerfile";
  // CMD ["a", "b"]: exec form, arguments without shell quoting.
  ASSERT_TRUE(absl::StartsWith(cmd, "[") && absl::EndsWith(cmd, "]")) << cmd;
  std::string args;
  for (absl::string_view arg : absl::StrSplit(cmd.substr(1, cmd.size() - 2), ',', absl::SkipWhitespace()))
    absl::StrAppend(&args, " ", absl::StripAsciiWhitespace(arg));  // still in double quotes: fine for sh
  SplitResult run = RunReptileSplit(args);
  EXPECT_EQ(run.exit_code, 0) << args << ": " << run.err;
  EXPECT_THAT(run.out, HasSubstr("usage: reptile COMMAND"));
  ExpectNoAbseilHelp(run.out + run.err);
}

// scripts/build.sh (the first step of scripts/demo.sh) shows progress: one
// line per file (or unity batch) compiled and target built, from make's or
// Ninja's output (with make's percentage), while the
// whole output still goes to build.log.
TEST(BuildScriptTest, ShowsProgressLinesAndKeepsTheFullLog) {
  const std::string script = testing::ReadWholeFile(std::string(REPTILE_SOURCE_DIR) + "/scripts/build.sh");
  EXPECT_THAT(script, HasSubstr("| tee -a build.log | condense"));
  const std::string dir = testing::TempDir("build_script");
  std::ofstream(dir + "/make.txt")
      << "[  2%] Building CXX object CMakeFiles/reptile_core.dir/core/config.cc.o\n"
         "/work/core/config.cc:10:5: warning: unused variable 'x'\n"
         "[ 40%] Built target reptile_core\n"
         "[ 40%] Building CXX object CMakeFiles/reptile_core.dir/Unity/unity_1_cxx.cxx.o\n"
         "[ 41%] Linking CXX executable reptile\n"
         "[ 42%] Linking CXX static library libreptile_core.a\n"
         "[ 43%] Building CXX object tests/CMakeFiles/cli_test.dir/cli_test.cc.o\n"
         "[ 44%] protoc + grpc_cpp_plugin: coordinator.proto\n"
         "[ 45%] Running cpp protocol buffer compiler on proto/reptile.proto\n"
         "gmake[2]: Entering directory '/work/build'\n";
  Result condensed = Shell(absl::StrCat("bash -c 'source <(sed -n \"/^condense()/,/^}/p\" scripts/build.sh) && condense < ",
                                        dir, "/make.txt'"));
  ASSERT_EQ(condensed.exit_code, 0) << condensed.output;
  EXPECT_EQ(condensed.output,
            "[  2%] compiling core/config.cc (reptile_core)\n"
            "[ 40%] built reptile_core\n"
            "[ 40%] compiling reptile_core, batch 1\n"
            "[ 41%] linking reptile\n"
            "[ 42%] linking libreptile_core.a\n"
            "[ 43%] compiling cli_test.cc (cli_test)\n"
            "[ 44%] protoc + grpc_cpp_plugin: coordinator.proto\n"
            "[ 45%] Running cpp protocol buffer compiler on proto/reptile.proto\n");
}

TEST(CliTest, SigtermCheckpointsAndExitsCleanly) {
  const std::string dir = testing::TempDir("run");
  auto train = testing::ChildProcess::Start({REPTILE_BINARY, "train", "--run_dir", dir, "--config",
                                             "configs/sine.textproto", "outer.rounds=100000000"},
                                            dir + "/../train");
  // Once rounds are being recorded, SIGTERM must checkpoint and exit 0.
  for (int i = 0; i < 1200 && testing::ReadWholeFile(dir + "/metrics.jsonl").empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  train->Signal(SIGTERM);
  EXPECT_EQ(train->ExitCode(60), 0) << train->err();
  Result inspect = RunReptile(absl::StrCat("inspect --run_dir ", dir));
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_THAT(inspect.output, Not(HasSubstr("round 0 ")));
}

void WritePng(const std::string& path, const std::vector<uint8_t>& grey, int size) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = size;
  image.height = size;
  image.format = PNG_FORMAT_GRAY;
  ASSERT_TRUE(png_image_write_to_file(&image, path.c_str(), 0, grey.data(), size, nullptr)) << path;
}

// Dark strokes on white, like a drawing: a bar whose direction names the class.
std::vector<uint8_t> Drawing(int kind, int size, int jitter) {
  std::vector<uint8_t> pixels(size * size, 255);
  for (int i = 8; i < size - 8; ++i) {
    const int j = size / 2 + jitter;
    const int at = kind == 0 ? j * size + i : kind == 1 ? i * size + j : i * size + i;
    for (int t = -3; t <= 3; ++t) pixels[std::clamp(at + t * (kind == 0 ? size : 1), 0, size * size - 1)] = 0;
  }
  return pixels;
}

TEST(CliTest, AdaptLabelsAUsersImages) {
  const std::string dir = testing::TempDir("run");
  Result train = RunReptile(absl::StrCat("train --run_dir ", dir, " --config configs/omniglot_5w1s.textproto task.data_dir=",
                                  testing::OmniglotDir(), " outer.rounds=30 eval.every_rounds=0 eval.final_episodes=0"));
  ASSERT_EQ(train.exit_code, 0) << train.output;
  const std::string support = testing::TempDir("support"), query = testing::TempDir("query");
  const std::vector<std::string> names = {"flat", "upright", "slanted"};
  for (int kind = 0; kind < 3; ++kind) {
    std::filesystem::create_directories(support + "/" + names[kind]);
    WritePng(support + "/" + names[kind] + "/a.png", Drawing(kind, 105, 0), 105);
    WritePng(absl::StrCat(query, "/q", kind, ".png"), Drawing(kind, 105, 4), 105);
  }
  Result adapt = RunReptile(absl::StrCat("adapt --run_dir ", dir, " --support_dir ", support, " --query_dir ", query));
  ASSERT_EQ(adapt.exit_code, 0) << adapt.output;
  std::vector<std::string> lines = absl::StrSplit(adapt.output, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << adapt.output;
  int correct = 0;
  for (int kind = 0; kind < 3; ++kind) {
    std::vector<std::string> fields = absl::StrSplit(lines[kind], '\t');
    ASSERT_EQ(fields.size(), 2u);
    EXPECT_EQ(fields[0], absl::StrCat("q", kind, ".png"));
    EXPECT_THAT(names, ::testing::Contains(fields[1]));
    correct += fields[1] == names[kind];
  }
  EXPECT_GE(correct, 2) << adapt.output;

  // --out: the adapted model as a state dict PyTorch loads, theta moved by the adaptation.
  Result adapted = RunReptile(absl::StrCat("adapt --run_dir ", dir, " --support_dir ", support, " --query_dir ", query,
                                           " --out ", dir, "/adapted.pt"));
  ASSERT_EQ(adapted.exit_code, 0) << adapted.output;
  EXPECT_THAT(adapted.output, HasSubstr("wrote the adapted model to " + dir + "/adapted.pt"));
  ASSERT_EQ(RunReptile(absl::StrCat("export --run_dir ", dir, " --out ", dir, "/theta.pt")).exit_code, 0);
  Result moved = testing::Shell(absl::StrCat("/usr/bin/python3 tests/torchscript/logits.py compare ", dir, "/theta.pt ",
                                             dir, "/adapted.pt"));
  ASSERT_EQ(moved.exit_code, 0) << moved.output;
  EXPECT_GT(std::stod(moved.output), 1e-4) << "adaptation should move theta";

  Result no_images = RunReptile(absl::StrCat("adapt --run_dir ", dir, " --support_dir ", support, " --query_dir ", dir));
  EXPECT_EQ(no_images.exit_code, 1);
  EXPECT_THAT(no_images.output, HasSubstr("no .png or .jpg files"));
}

}  // namespace
}  // namespace reptile
