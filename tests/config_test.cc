#include <filesystem>

#include "core/config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_support.h"

namespace reptile {
namespace {

using ::testing::HasSubstr;
using testing::LoadNamedConfig;
using testing::SourcePath;

TEST(ConfigTest, EveryShippedConfigLoadsAndValidates) {
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(SourcePath("configs"))) {
    auto config = LoadConfig(entry.path().string(), {});
    EXPECT_TRUE(config.ok()) << entry.path() << ": " << config.status();
    ++count;
  }
  EXPECT_GE(count, 7);
}

TEST(ConfigTest, OmniglotConfigsCarryThePapersHyperparameters) {
  ExperimentConfig five = LoadNamedConfig("omniglot_5w1s");
  EXPECT_EQ(five.inner().batch_size(), 10);
  EXPECT_EQ(five.inner().iterations(), 5);
  EXPECT_EQ(five.task().train_shots(), 10);
  EXPECT_EQ(five.outer().meta_batch_size(), 5);
  EXPECT_FLOAT_EQ(five.inner().learning_rate(), 1e-3f);
  EXPECT_FLOAT_EQ(five.inner().adam_beta1(), 0.0f);
  EXPECT_EQ(five.outer().rounds(), 100000);
  EXPECT_EQ(five.eval().inner_iterations(), 50);
  EXPECT_EQ(five.eval().inner_batch_size(), 5);
  ExperimentConfig twenty = LoadNamedConfig("omniglot_20w5s");
  EXPECT_EQ(twenty.task().ways(), 20);
  EXPECT_EQ(twenty.task().eval_shots(), 5);
  EXPECT_EQ(twenty.inner().batch_size(), 20);
  EXPECT_EQ(twenty.inner().iterations(), 10);
  EXPECT_FLOAT_EQ(twenty.inner().learning_rate(), 5e-4f);
  EXPECT_EQ(twenty.outer().rounds(), 200000);
  EXPECT_EQ(twenty.eval().inner_batch_size(), 10);
}

TEST(ConfigTest, OverridesSetNestedFieldsEnumsStringsAndZero) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s");
  ASSERT_TRUE(ApplyOverride("inner.iterations=7", &config).ok());
  ASSERT_TRUE(ApplyOverride("inner.state_mode=RESET", &config).ok());
  ASSERT_TRUE(ApplyOverride("task.data_dir=/some where/omniglot", &config).ok());
  ASSERT_TRUE(ApplyOverride("outer.step_size_final=0", &config).ok());
  ASSERT_TRUE(ApplyOverride("seed=42", &config).ok());
  EXPECT_EQ(config.inner().iterations(), 7);
  EXPECT_EQ(config.inner().state_mode(), RESET);
  EXPECT_EQ(config.task().data_dir(), "/some where/omniglot");
  EXPECT_EQ(config.seed(), 42u);
}

TEST(ConfigTest, BadOverridesNameTheField) {
  ExperimentConfig config = LoadNamedConfig("sine");
  auto unknown = ApplyOverride("inner.iteratons=3", &config);
  EXPECT_THAT(unknown.message(), HasSubstr("iteratons"));
  auto bad_value = ApplyOverride("inner.iterations=many", &config);
  EXPECT_FALSE(bad_value.ok());
  EXPECT_THAT(bad_value.message(), HasSubstr("iterations"));
  EXPECT_FALSE(ApplyOverride("inner=3", &config).ok());
  EXPECT_FALSE(ApplyOverride("no_equals_sign", &config).ok());
}

TEST(ConfigTest, ValidationNamesTheFieldAndTheProblem) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s");
  config.mutable_inner()->set_iterations(0);
  auto status = ValidateConfig(config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("inner.iterations"));
  EXPECT_THAT(status.message(), HasSubstr("> 0"));

  config = LoadNamedConfig("omniglot_5w1s");
  config.mutable_model()->set_arch(MLP_SINE);
  EXPECT_THAT(ValidateConfig(config).message(), HasSubstr("model.arch"));

  config = LoadNamedConfig("omniglot_5w1s");
  config.mutable_task()->set_eval_shots(20);
  EXPECT_THAT(ValidateConfig(config).message(), HasSubstr("task.eval_shots"));
}

// eval_shots + query_shots overflowed int when one was huge (undefined
// behaviour, which fuzz/config_fuzzer's UBSan build reports on such an
// input), and NaN passed the range checks written as `x < 0`.
TEST(ConfigTest, HugeCountsAndNaNsAreRefused) {
  ExperimentConfig config = LoadNamedConfig("omniglot_5w1s");
  ASSERT_TRUE(ApplyOverride("task.eval_shots=2147483647", &config).ok());
  EXPECT_THAT(ValidateConfig(config).message(), HasSubstr("task.eval_shots"));
  for (const char* field : {"inner.adam_beta1", "inner.adam_beta2", "outer.step_size_final",
                            "runtime.heartbeat_seconds", "runtime.worker_timeout_seconds",
                            "runtime.task_timeout_seconds", "runtime.mpi_connect_timeout_seconds",
                            "inner.learning_rate"}) {
    config = LoadNamedConfig("omniglot_5w1s");
    ASSERT_TRUE(ApplyOverride(std::string(field) + "=nan", &config).ok()) << field;
    const absl::Status status = ValidateConfig(config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(status.message(), HasSubstr(field));
  }
}

TEST(ConfigTest, ParseErrorsGiveFileLineAndField) {
  auto config = ParseConfig("name: \"x\"\ninner { iteratons: 5 }\n", "my.textproto");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("my.textproto:2"));
  EXPECT_THAT(config.status().message(), HasSubstr("iteratons"));
  EXPECT_EQ(LoadConfig("/nonexistent/config.textproto", {}).status().code(), absl::StatusCode::kNotFound);
}

TEST(ConfigTest, DifferencesAreReported) {
  ExperimentConfig a = LoadNamedConfig("sine");
  ExperimentConfig b = a;
  EXPECT_EQ(ConfigDifferences(a, b), "");
  b.mutable_outer()->set_rounds(5);
  EXPECT_THAT(ConfigDifferences(a, b), HasSubstr("rounds"));
}

}  // namespace
}  // namespace reptile
