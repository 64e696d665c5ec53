#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "coordinator/checkpoint.h"
#include "coordinator/run_directory.h"
#include "core/config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_support.h"

namespace reptile {
namespace {

using ::testing::HasSubstr;

TrainingState SampleState() {
  TrainingState state;
  state.config = testing::LoadNamedConfig("omniglot_5w1s");
  state.round = 1234;
  ParameterShape shape;
  shape.set_name("w");
  shape.add_dims(1000);
  state.layout.push_back(shape);
  torch::manual_seed(0);
  state.meta.parameters = torch::randn({1000});
  state.meta.adam_m = torch::randn({1000});
  state.meta.adam_v = torch::rand({1000});
  state.meta.adam_step = 6170;
  return state;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

TEST(CheckpointTest, RoundTripsBitwise) {
  const std::string path = testing::TempDir("ckpt") + "/checkpoint.bin";
  const TrainingState state = SampleState();
  ASSERT_TRUE(WriteCheckpoint(path, state).ok());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  auto read = ReadCheckpoint(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->round, 1234);
  EXPECT_EQ(read->config.SerializeAsString(), state.config.SerializeAsString());
  EXPECT_TRUE(torch::equal(read->meta.parameters, state.meta.parameters));
  EXPECT_TRUE(torch::equal(read->meta.adam_v, state.meta.adam_v));
  EXPECT_EQ(read->meta.adam_step, 6170);
  EXPECT_EQ(read->layout.size(), 1u);
  EXPECT_EQ(ParameterFingerprint(read->meta.parameters), ParameterFingerprint(state.meta.parameters));
  EXPECT_EQ(ParameterFingerprint(state.meta.parameters).size(), 64u);
}

TEST(CheckpointTest, CorruptTruncatedAndForeignFilesAreReportedNotLoaded) {
  const std::string dir = testing::TempDir("ckpt");
  const std::string path = dir + "/checkpoint.bin";
  ASSERT_TRUE(WriteCheckpoint(path, SampleState()).ok());
  const std::string good = ReadFile(path);

  std::string flipped = good;
  flipped[good.size() / 2] ^= 0x40;
  WriteFile(path, flipped);
  auto corrupt = ReadCheckpoint(path);
  EXPECT_EQ(corrupt.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(corrupt.status().message(), HasSubstr(path));

  WriteFile(path, good.substr(0, good.size() - 100));
  EXPECT_EQ(ReadCheckpoint(path).status().code(), absl::StatusCode::kDataLoss);

  WriteFile(path, "name: \"not a checkpoint\"");
  EXPECT_THAT(ReadCheckpoint(path).status().message(), HasSubstr("not a reptile checkpoint"));

  EXPECT_EQ(ReadCheckpoint(dir + "/missing.bin").status().code(), absl::StatusCode::kNotFound);
}

TEST(CheckpointTest, FingerprintSeesASingleBit) {
  torch::Tensor a = torch::zeros({10});
  torch::Tensor b = a.clone();
  b[3] = 1e-45f;  // the smallest denormal: one bit
  EXPECT_NE(ParameterFingerprint(a), ParameterFingerprint(b));
}

mode_t ModeOf(const std::string& path) {
  struct stat info {};
  EXPECT_EQ(stat(path.c_str(), &info), 0) << path;
  return info.st_mode & 07777;
}

// A checkpoint is the whole model: its owner's only, whatever the umask, and
// whatever mode a temporary file left by a crash had.
TEST(CheckpointTest, IsWrittenOwnerOnlyWhateverTheUmaskOrALeftoverTemporaryFile) {
  const std::string path = testing::TempDir("ckpt") + "/checkpoint.bin";
  const mode_t umask_before = umask(0);
  WriteFile(path + ".tmp", "torn by a crash");
  chmod((path + ".tmp").c_str(), 0666);
  const absl::Status written = WriteCheckpoint(path, SampleState());
  umask(umask_before);
  ASSERT_TRUE(written.ok()) << written;
  EXPECT_EQ(ModeOf(path), 0600u);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  // Replacing it keeps it so.
  ASSERT_TRUE(WriteCheckpoint(path, SampleState()).ok());
  EXPECT_EQ(ModeOf(path), 0600u);
  EXPECT_TRUE(ReadCheckpoint(path).ok());
}

TEST(CheckpointTest, AFailedWriteNamesTheFileAndLeavesTheOldCheckpoint) {
  const std::string dir = testing::TempDir("ckpt");
  const absl::Status missing = WriteCheckpoint(dir + "/no/such/dir/checkpoint.bin", SampleState());
  EXPECT_FALSE(missing.ok());
  EXPECT_THAT(missing.message(), HasSubstr(dir + "/no/such/dir/checkpoint.bin.tmp"));
  EXPECT_THAT(missing.message(), HasSubstr("No such file or directory"));

  const std::string path = dir + "/checkpoint.bin";
  ASSERT_TRUE(WriteCheckpoint(path, SampleState()).ok());
  const std::string before = ReadFile(path);
  std::filesystem::create_directory(path + ".tmp");  // cannot be replaced by a file
  EXPECT_FALSE(WriteCheckpoint(path, SampleState()).ok());
  EXPECT_EQ(ReadFile(path), before);
}

TEST(RunDirectoryTest, ConfigIsReplacedAtomicallyAndReadableByOthers) {
  const std::string path = testing::TempDir("run");
  auto dir = RunDirectory::Open(path);
  ASSERT_TRUE(dir.ok()) << dir.status();
  const ExperimentConfig config = testing::LoadNamedConfig("sine");
  WriteFile(path + "/config.textproto.tmp", "torn by a crash");
  const mode_t umask_before = umask(022);
  const absl::Status written = (*dir)->WriteConfig(config);
  umask(umask_before);
  ASSERT_TRUE(written.ok()) << written;
  EXPECT_FALSE(std::filesystem::exists(path + "/config.textproto.tmp"));
  EXPECT_EQ(ReadFile(path + "/config.textproto"), ConfigToText(config));
  EXPECT_EQ(ModeOf(path + "/config.textproto"), 0644u);
}

}  // namespace
}  // namespace reptile
