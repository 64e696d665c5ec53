// Shared helpers for tests: paths to the source tree and datasets, config
// loading by name, temporary directories.
#ifndef REPTILE_TESTS_TEST_SUPPORT_H_
#define REPTILE_TESTS_TEST_SUPPORT_H_

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "core/config.h"
#include "core/tasks/task_source.h"
#include "core/work.h"
#include "gtest/gtest.h"
#include "tests/shell.h"

namespace reptile::testing {

inline std::string SourcePath(const std::string& relative) { return std::string(REPTILE_SOURCE_DIR) + "/" + relative; }

inline std::string OmniglotDir() {
  const char* env = std::getenv("REPTILE_OMNIGLOT_DIR");
  return env != nullptr ? env : SourcePath("../shared/data/omniglot");
}

// configs/<name>.textproto with data paths made absolute, then `overrides`.
inline ExperimentConfig LoadNamedConfig(const std::string& name, const std::vector<std::string>& overrides = {}) {
  auto config = LoadConfig(SourcePath("configs/" + name + ".textproto"), overrides);
  EXPECT_TRUE(config.ok()) << config.status();
  if (config->task().family() == OMNIGLOT) config->mutable_task()->set_data_dir(OmniglotDir());
  return *config;
}

// The Omniglot task source, decoded once per test binary.
inline std::shared_ptr<const TaskSource> SharedTaskSource(const ExperimentConfig& config) {
  static std::map<std::string, std::shared_ptr<const TaskSource>>* cache = new std::map<std::string, std::shared_ptr<const TaskSource>>();
  const std::string key = TaskFamily_Name(config.task().family()) + config.task().data_dir();
  auto& source = (*cache)[key];
  if (source == nullptr) {
    auto created = TaskSource::Create(config.task());
    EXPECT_TRUE(created.ok()) << created.status();
    if (created.ok()) source = *created;
  }
  return source;
}

// `n` training items of one sine task each, seeds 100, 101, ...
inline std::vector<WorkItem> SineItems(int n) {
  std::vector<WorkItem> items(n, WorkItem{WorkKind::kTrain, {TaskSpec()}});
  for (int i = 0; i < n; ++i) {
    items[i].tasks[0].set_family(SINE);
    items[i].tasks[0].set_seed(100 + i);
    items[i].tasks[0].set_support_shots(50);
  }
  return items;
}

// A bearer token file as `reptile` accepts one: the owner's only (0600)
// from the moment it exists.
inline void WriteTokenFile(const std::string& path, const std::string& token) {
  std::filesystem::remove(path);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << path;
  const std::string line = token.empty() ? "" : token + "\n";
  ASSERT_EQ(write(fd, line.data(), line.size()), static_cast<ssize_t>(line.size())) << path;
  close(fd);
}

// "reptile_tests_<hash of the source tree>": two checkouts testing at once
// on one machine never share a test's directories.
inline std::string TestTreeFolder() {
  return "reptile_tests_" + std::to_string(std::hash<std::string>{}(REPTILE_SOURCE_DIR) % 1000000);
}

// A fresh empty directory under the test's temp dir.
inline std::string TempDir(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / TestTreeFolder() /
                              (std::string(info->test_suite_name()) + "." + info->name()) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}


// How many times `needle` occurs in `haystack` (overlaps counted).
inline int CountOccurrences(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
  return n;
}

}  // namespace reptile::testing

#endif  // REPTILE_TESTS_TEST_SUPPORT_H_
