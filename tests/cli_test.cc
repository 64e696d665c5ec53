// End-to-end tests of the `reptile` binary: real processes, real files.
#include <png.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/child_process.h"
#include "tests/test_support.h"

namespace reptile {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

struct Result {
  int exit_code;
  std::string output;  // stdout and stderr
};

// Runs a shell command line in the source tree, capturing its output.
Result Shell(const std::string& line) {
  const std::string command = absl::StrCat("cd ", REPTILE_SOURCE_DIR, " && ", line, " 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  Result result{-1, ""};
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

Result RunReptile(const std::string& args) { return Shell(absl::StrCat(REPTILE_BINARY, " ", args)); }

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

  Result no_images = RunReptile(absl::StrCat("adapt --run_dir ", dir, " --support_dir ", support, " --query_dir ", dir));
  EXPECT_EQ(no_images.exit_code, 1);
  EXPECT_THAT(no_images.output, HasSubstr("no .png files"));
}

}  // namespace
}  // namespace reptile
