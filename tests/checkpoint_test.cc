#include <sys/resource.h>
#include <sys/stat.h>

#include <csignal>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "coordinator/atomic_file.h"
#include "coordinator/checkpoint.h"
#include "coordinator/run_directory.h"
#include "core/config.h"
#include "core/fingerprint.h"
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

// A file with a valid checksum around `message`: what a crafted checkpoint
// looks like (the SHA-256 detects damage, not intent).
std::string CheckpointFile(const Checkpoint& message) {
  const std::string payload = message.SerializeAsString();
  const Sha256Digest digest = Sha256(payload.data(), payload.size());
  return "REPTCKP1" + std::string(digest.begin(), digest.end()) + payload;
}

// fuzz/checkpoint_fuzzer found that a checkpoint with no parameter values
// made the reader memcpy into an empty tensor's null data. Such a file, one
// whose size field wraps around when multiplied by 4, and ones whose layout or
// moments disagree with the parameters are refused as corrupt.
TEST(CheckpointTest, TensorsThatDisagreeWithTheirSizesOrLayoutAreRefused) {
  const std::string path = testing::TempDir("ckpt") + "/checkpoint.bin";
  auto refused = [&](const TrainingState& state, const std::string& why) {
    ASSERT_TRUE(WriteCheckpoint(path, state).ok());
    const absl::StatusOr<TrainingState> read = ReadCheckpoint(path);
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << read.status();
    EXPECT_THAT(read.status().message(), HasSubstr(path));
    EXPECT_THAT(read.status().message(), HasSubstr(why));
  };
  TrainingState no_values = SampleState();
  no_values.meta.parameters = torch::empty({0});
  no_values.meta.adam_m = no_values.meta.adam_v = torch::empty({0});
  refused(no_values, "layout tensor 'w' [1000] at offset 0 does not fit in the 0 parameters");

  TrainingState past_the_end = SampleState();
  past_the_end.layout[0].set_offset(1);
  refused(past_the_end, "does not fit");
  past_the_end.layout[0].set_offset(0);
  past_the_end.layout[0].add_dims(int64_t{1} << 62);  // 1000 * 2^62 overflows int64
  refused(past_the_end, "does not fit");

  TrainingState short_moments = SampleState();
  short_moments.meta.adam_v = torch::ones({999});
  refused(short_moments, "Adam's v has 999 values for 1000 parameters");
  short_moments.config.mutable_inner()->set_adam_beta1(0.9f);  // m is kept
  short_moments.meta.adam_v = torch::ones({1000});
  short_moments.meta.adam_m = torch::ones({1001});
  refused(short_moments, "Adam's m has 1001 values for 1000 parameters");
  short_moments.meta.adam_m = torch::Tensor();
  refused(short_moments, "Adam's v without its m, but inner.adam_beta1 is 0.9");

  Checkpoint wraps;
  wraps.set_format_version(1);
  wraps.mutable_parameters()->set_size(int64_t{1} << 62);  // 2^62 floats are 2^64 = 0 bytes, mod 2^64
  WriteFile(path, CheckpointFile(wraps));
  const absl::StatusOr<TrainingState> read = ReadCheckpoint(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << read.status();
  EXPECT_THAT(read.status().message(), HasSubstr("parameters has 0 bytes, not 4611686018427387904 floats"));
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

// The files of `dir` whose names hold the temporary suffix.
int TemporaryFiles(const std::string& dir) {
  int found = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    found += absl::StrContains(entry.path().filename().string(), kTemporarySuffix);
  return found;
}

// A checkpoint is the whole model: its owner's only, whatever the umask.
TEST(CheckpointTest, IsWrittenOwnerOnlyWhateverTheUmask) {
  const std::string dir = testing::TempDir("ckpt");
  const std::string path = dir + "/checkpoint.bin";
  const mode_t umask_before = umask(0);
  const absl::Status written = WriteCheckpoint(path, SampleState());
  umask(umask_before);
  ASSERT_TRUE(written.ok()) << written;
  EXPECT_EQ(ModeOf(path), 0600u);
  EXPECT_EQ(TemporaryFiles(dir), 0);
  // Replacing it keeps it so.
  ASSERT_TRUE(WriteCheckpoint(path, SampleState()).ok());
  EXPECT_EQ(ModeOf(path), 0600u);
  EXPECT_TRUE(ReadCheckpoint(path).ok());
}

TEST(CheckpointTest, AFailedWriteNamesTheFileAndLeavesTheOldCheckpoint) {
  const std::string dir = testing::TempDir("ckpt");
  const absl::Status missing = WriteCheckpoint(dir + "/no/such/dir/checkpoint.bin", SampleState());
  EXPECT_FALSE(missing.ok());
  EXPECT_THAT(missing.message(), HasSubstr(dir + "/no/such/dir/checkpoint.bin.tmp-"));
  EXPECT_THAT(missing.message(), HasSubstr("No such file or directory"));

  const std::string path = dir + "/checkpoint.bin";
  ASSERT_TRUE(WriteCheckpoint(path, SampleState()).ok());
  const std::string before = ReadFile(path);
  // A full disk, as this process sees it: files may not grow past 1 KiB.
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &limit), 0);
  const rlimit small{1024, limit.rlim_max};
  signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const absl::Status full = WriteCheckpoint(path, SampleState());
  setrlimit(RLIMIT_FSIZE, &limit);
  signal(SIGXFSZ, SIG_DFL);
  EXPECT_FALSE(full.ok());
  EXPECT_THAT(full.message(), HasSubstr("cannot write " + path + ".tmp-"));
  EXPECT_EQ(ReadFile(path), before);
  EXPECT_EQ(TemporaryFiles(dir), 0);
}

// The message a checkpoint file holds, read back without the reader's logic.
Checkpoint CheckpointMessage(const std::string& path) {
  const std::string file = ReadFile(path);
  Checkpoint message;
  EXPECT_TRUE(message.ParseFromString(file.substr(8 + 32)));
  return message;
}

// With adam_beta1 = 0 Adam's m is not part of the meta-state: it is not
// written, and a checkpoint written before that, which holds one, still
// loads, without it.
TEST(CheckpointTest, WithBetaOneZeroTheFirstMomentIsNeitherWrittenNorRead) {
  const std::string path = testing::TempDir("ckpt") + "/checkpoint.bin";
  const TrainingState state = SampleState();  // omniglot_5w1s: CARRY, adam_beta1 0
  ASSERT_EQ(state.config.inner().adam_beta1(), 0.0f);
  ASSERT_TRUE(state.meta.adam_m.defined());
  ASSERT_TRUE(WriteCheckpoint(path, state).ok());
  const Checkpoint written = CheckpointMessage(path);
  EXPECT_FALSE(written.has_adam_m());
  EXPECT_TRUE(written.has_adam_v());

  // An old-style checkpoint: the same state with m, as the writer made it
  // before m was left out.
  Checkpoint old = written;
  old.mutable_adam_m()->set_size(1000);
  old.mutable_adam_m()->set_data(state.meta.adam_m.data_ptr<float>(), 1000 * sizeof(float));
  WriteFile(path, CheckpointFile(old));
  const absl::StatusOr<TrainingState> read = ReadCheckpoint(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_FALSE(read->meta.adam_m.defined());
  EXPECT_TRUE(torch::equal(read->meta.parameters, state.meta.parameters));
  EXPECT_TRUE(torch::equal(read->meta.adam_v, state.meta.adam_v));
  EXPECT_EQ(read->meta.adam_step, 6170);
  EXPECT_EQ(read->round, 1234);
  // Written again, it is a new-style checkpoint that reads the same.
  ASSERT_TRUE(WriteCheckpoint(path, *read).ok());
  EXPECT_FALSE(CheckpointMessage(path).has_adam_m());
  const absl::StatusOr<TrainingState> again = ReadCheckpoint(path);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(torch::equal(again->meta.adam_v, state.meta.adam_v));
  EXPECT_FALSE(again->meta.adam_m.defined());
}

// With adam_beta1 != 0 m is carried: written and read back bitwise, as before.
TEST(CheckpointTest, WithBetaOneNonZeroTheFirstMomentRoundTrips) {
  const std::string path = testing::TempDir("ckpt") + "/checkpoint.bin";
  TrainingState state = SampleState();
  state.config.mutable_inner()->set_adam_beta1(0.9f);
  ASSERT_TRUE(WriteCheckpoint(path, state).ok());
  EXPECT_TRUE(CheckpointMessage(path).has_adam_m());
  const absl::StatusOr<TrainingState> read = ReadCheckpoint(path);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_TRUE(read->meta.adam_m.defined());
  EXPECT_TRUE(torch::equal(read->meta.adam_m, state.meta.adam_m));
  EXPECT_TRUE(torch::equal(read->meta.adam_v, state.meta.adam_v));
  EXPECT_EQ(read->meta.adam_step, 6170);
}

TEST(RunDirectoryTest, ConfigIsReplacedAtomicallyAndReadableByOthers) {
  const std::string path = testing::TempDir("run");
  WriteFile(path + "/config.textproto.tmp-1-0", "torn by a crash");
  auto dir = RunDirectory::Open(path);
  ASSERT_TRUE(dir.ok()) << dir.status();
  const ExperimentConfig config = testing::LoadNamedConfig("sine");
  const mode_t umask_before = umask(022);
  const absl::Status written = (*dir)->WriteConfig(config);
  umask(umask_before);
  ASSERT_TRUE(written.ok()) << written;
  EXPECT_FALSE(std::filesystem::exists(path + "/config.textproto.tmp-1-0"));
  EXPECT_EQ(ReadFile(path + "/config.textproto"), ConfigToText(config));
  EXPECT_EQ(ModeOf(path + "/config.textproto"), 0644u);
}

TEST(CheckpointTest, ARunTooLargeToCheckpointIsRefusedBeforeItsFirstRound) {
  // The demo config carries Adam's v (beta1 = 0): two tensors of 4 bytes a value.
  const ExperimentConfig carry = testing::LoadNamedConfig("demo");
  EXPECT_TRUE(CheckCheckpointFits(carry, 200'000'000).ok());
  const absl::Status refused = CheckCheckpointFits(carry, 300'000'000);
  EXPECT_TRUE(absl::IsInvalidArgument(refused));
  EXPECT_NE(refused.message().find("makes checkpoints of 2.24 GiB (2 fp32 tensors"), std::string::npos) << refused;
  ExperimentConfig reset = carry;
  reset.mutable_inner()->set_state_mode(RESET);
  EXPECT_TRUE(CheckCheckpointFits(reset, 300'000'000).ok());
}

}  // namespace
}  // namespace reptile
