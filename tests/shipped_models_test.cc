// The trained models shipped under models/: each loads, and a short
// evaluation of it (100 episodes, its config's evaluation seed) prints exactly
// what was recorded with its checkpoint (recorded_eval.txt, written by
// scripts/reproduce_paper.sh when it commits the run).
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "test_support.h"

namespace reptile::testing {
namespace {

std::vector<std::string> ShippedModels() {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(SourcePath("models")))
    if (entry.is_directory()) names.push_back(entry.path().filename().string());
  return names;
}

// One model: its checkpoint evaluates to its recorded line.
void CheckModel(const std::string& name) {
  const std::string dir = "models/" + name;
  ASSERT_TRUE(std::filesystem::exists(SourcePath(dir + "/checkpoint.bin")));
  std::ifstream recorded_file(SourcePath(dir + "/recorded_eval.txt"));
  ASSERT_TRUE(recorded_file) << dir << "/recorded_eval.txt is missing";
  std::string recorded;
  std::getline(recorded_file, recorded);
  const ShellResult evaluated = Shell(absl::StrCat("(", REPTILE_BINARY, " eval --run_dir ", dir,
                                                   " --episodes 100 --workers 2 task.data_dir=", OmniglotDir(),
                                                   " 2> /dev/null)"));
  ASSERT_EQ(evaluated.exit_code, 0) << evaluated.output;
  EXPECT_EQ(absl::StripSuffix(evaluated.output, "\n"), recorded);
  std::cout << name << ": " << recorded << std::endl;
}

TEST(ShippedModelsTest, EachEvaluatesToTheAccuracyRecordedWithIt) {
  const std::vector<std::string> names = ShippedModels();
  ASSERT_FALSE(names.empty()) << "no models under " << SourcePath("models");
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    CheckModel(name);
  }
}

}  // namespace
}  // namespace reptile::testing
