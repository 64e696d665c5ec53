// Fuzzes what `reptile train --config FILE field=value ...` decodes: the input
// is the config file's text, then NUL-separated overrides (as argv delivers
// them). Every step must fail cleanly or succeed, and an accepted config must
// survive the text round trip that writing and resuming a run directory does.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "core/config.h"
#include "google/protobuf/stubs/logging.h"

// Protobuf logs malformed input (e.g. strings that are not UTF-8) to stderr;
// the fuzzer only needs the return values.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string> parts =
      absl::StrSplit(std::string(reinterpret_cast<const char*>(data), size), '\0');
  absl::StatusOr<reptile::ExperimentConfig> config = reptile::ParseConfig(parts[0], "fuzz.textproto");
  if (!config.ok()) return 0;
  const reptile::ExperimentConfig parsed = *config;
  for (size_t i = 1; i < parts.size(); ++i) (void)reptile::ApplyOverride(parts[i], &*config);
  (void)reptile::ValidateConfig(*config);
  (void)reptile::ConfigSummary(*config);
  (void)reptile::ConfigFingerprint(*config);
  (void)reptile::ConfigDifferences(parsed, *config);

  const std::string text = reptile::ConfigToText(*config);
  absl::StatusOr<reptile::ExperimentConfig> reread = reptile::ParseConfig(text, "config.textproto");
  if (!reread.ok() || reptile::ConfigToText(*reread) != text) __builtin_trap();
  return 0;
}
