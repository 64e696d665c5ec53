// `task.family: IMAGE_FOLDER` against real data, with real processes:
// Debian's Fashion-MNIST written out as class folders of PNGs (by
// tests/data/fashion_mnist_folders.py) trains to the same bits as the
// FASHION_MNIST family on the same split, a grey set keeps one channel (so
// CONV_OMNIGLOT trains on it), and the run records what it found; and
// evaluations during training draw from val/, the final one from test/.
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "core/data/image_files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/child_process.h"
#include "tests/test_support.h"

namespace reptile::testing {
namespace {

using ::testing::HasSubstr;

TEST(ImageFolderRunTest, FashionMnistAsPngFoldersTrainsToTheBitsOfTheFashionMnistFamily) {
  const std::string folders = TempDir("fashion_folders"), cache = TempDir("cache");
  setenv("REPTILE_CACHE_DIR", cache.c_str(), 1);  // for the reptile processes too
  const ShellResult written =
      Shell(absl::StrCat("/usr/bin/python3 tests/data/fashion_mnist_folders.py ", folders));
  ASSERT_EQ(written.exit_code, 0) << written.output;
  const std::string logs = TempDir("logs");
  auto train = [&](const std::string& run, const std::vector<std::string>& extra) {
    std::vector<std::string> args = {REPTILE_BINARY, "train", "--config",
                                     SourcePath("configs/fashion_mnist_5w1s.textproto"), "--run_dir", run,
                                     "outer.rounds=6", "eval.every_rounds=3", "eval.episodes=4",
                                     "eval.final_episodes=6", "--workers", "2"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto child = ChildProcess::Start(args, logs + "/" + std::filesystem::path(run).filename().string());
    EXPECT_EQ(child->ExitCode(300), 0) << child->err();
    return ParameterSha(child->out());
  };
  const std::string family = train(TempDir("family"), {});
  ASSERT_EQ(family.size(), 64u);
  const std::string run = TempDir("folders");
  EXPECT_EQ(train(run, {"task.family=IMAGE_FOLDER", "task.data_dir=" + folders}), family);
  EXPECT_THAT(ReadWholeFile(run + "/config.textproto"), HasSubstr("image_channels: 1"));
  // Decoded once per split, into files the coordinator and its workers mapped.
  int cached = 0;
  for (const auto& entry : std::filesystem::directory_iterator(cache)) cached += entry.path().extension() == ".bin";
  EXPECT_EQ(cached, 2);
  std::filesystem::remove_all(folders);
  std::filesystem::remove_all(cache);
}

// <root>/<split>/class<k>/<i>.jpg, 12x12 grey, every pixel `value(k)`.
void WriteSplit(const std::string& root, const std::string& split, int classes, int per_class,
                const std::function<uint8_t(int)>& value) {
  for (int k = 0; k < classes; ++k) {
    const std::string dir = absl::StrCat(root, "/", split, "/class", k);
    std::filesystem::create_directories(dir);
    DecodedImage image;
    image.channels = 1;
    image.height = image.width = 12;
    image.pixels.assign(144, value(k));
    for (int i = 0; i < per_class; ++i)
      ASSERT_TRUE(WriteJpegFile(absl::StrCat(dir, "/", i, ".jpg"), image, 100).ok()) << dir;
  }
}

// val/ holds the same image in every class, so no model tells its classes
// apart: an evaluation on it scores exactly 1/ways (equal logits pick the
// first class). test/ is learnable: a grey level per class.
TEST(ImageFolderRunTest, EvaluationsDuringTrainingUseValAndTheFinalOneUsesTest) {
  const std::string root = TempDir("splits"), cache = TempDir("cache");
  setenv("REPTILE_CACHE_DIR", cache.c_str(), 1);
  const auto grey_level = [](int k) { return static_cast<uint8_t>(40 * k); };
  WriteSplit(root, "train", 4, 4, grey_level);
  WriteSplit(root, "val", 3, 4, [](int) { return uint8_t{128}; });
  WriteSplit(root, "test", 3, 4, grey_level);
  const std::string run = TempDir("run");
  auto child = ChildProcess::Start(
      {REPTILE_BINARY, "train", "--config", SourcePath("configs/fashion_mnist_5w1s.textproto"), "--run_dir", run,
       "task.family=IMAGE_FOLDER", "task.data_dir=" + root, "task.ways=3", "task.train_shots=2",
       "task.image_size=12", "outer.rounds=20", "eval.every_rounds=5", "eval.episodes=6", "eval.final_episodes=6",
       "eval.inner_iterations=10", "--workers", "2"},
      TempDir("logs") + "/run");
  ASSERT_EQ(child->ExitCode(300), 0) << child->err();
  std::vector<double> during, final;
  for (absl::string_view line : absl::StrSplit(ReadWholeFile(run + "/metrics.jsonl"), '\n')) {
    const bool eval = absl::StrContains(line, R"("kind":"eval")");
    if (!eval && !absl::StrContains(line, R"("kind":"final_eval")")) continue;
    const size_t at = line.find(R"("accuracy":)");
    ASSERT_NE(at, absl::string_view::npos) << line;
    (eval ? during : final).push_back(std::stod(std::string(line.substr(at + 11))));
  }
  ASSERT_EQ(during.size(), 3u);  // rounds 5, 10, 15; round 20 has the final one
  for (double accuracy : during) EXPECT_NEAR(accuracy, 1.0 / 3, 1e-5);
  ASSERT_EQ(final.size(), 1u);
  EXPECT_GT(final[0], 0.5);
  std::filesystem::remove_all(cache);
}

}  // namespace
}  // namespace reptile::testing
