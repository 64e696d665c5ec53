// `task.family: IMAGE_FOLDER` against real data, with real processes:
// Debian's Fashion-MNIST written out as class folders of PNGs (by
// tests/data/fashion_mnist_folders.py) trains to the same bits as the
// FASHION_MNIST family on the same split, a grey set keeps one channel (so
// CONV_OMNIGLOT trains on it), and the run records what it found.
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
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

}  // namespace
}  // namespace reptile::testing
