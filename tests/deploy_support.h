// Helpers for the tests of deploy/: running kubectl and node as child
// processes, rendering kustomizations, the strict manifest validator
// (tests/k8s/validate.cjs) and its JSON output read as protobuf Values, and a
// reader for deploy/docker/Dockerfile.
//
// Tools the deploy tests need and do not find (kubectl, node, the validator's
// npm packages) are test failures that say what to install, never skips: CI
// has them after scripts/install_deps.sh and scripts/test.sh.
#ifndef REPTILE_TESTS_DEPLOY_SUPPORT_H_
#define REPTILE_TESTS_DEPLOY_SUPPORT_H_

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/child_process.h"

namespace reptile::testing {

using google::protobuf::Value;

// Paths as tests/test_support.h gives them, without its LibTorch headers.
inline std::string SourcePath(const std::string& relative) { return std::string(REPTILE_SOURCE_DIR) + "/" + relative; }

inline std::string OmniglotDir() {
  const char* env = std::getenv("REPTILE_OMNIGLOT_DIR");
  return env != nullptr ? env : SourcePath("../shared/data/omniglot");
}

// "reptile_tests_<hash of the source tree>": two checkouts testing at once
// on one machine never share a test's directories.
inline std::string TestTreeFolder() {
  return "reptile_tests_" + std::to_string(std::hash<std::string>{}(REPTILE_SOURCE_DIR) % 1000000);
}

// A fresh empty directory under the running test's temp dir.
inline std::string TempDir(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / TestTreeFolder() /
                                    (std::string(info->test_suite_name()) + "." + info->name()) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

// A TCP port free on loopback when asked.
inline int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0)
    port = ntohs(address.sin_port);
  close(fd);
  return port;
}


struct CommandResult {
  int exit_code = -1;  // -1: did not end within the timeout (killed)
  std::string out, err;
};

// Runs `argv` (argv[0] an absolute path) to completion, output captured in
// files beside `log_prefix`.
inline CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& log_prefix,
                                const std::vector<std::string>& env = {}, double timeout_seconds = 120,
                                const std::string& cwd = REPTILE_SOURCE_DIR) {
  auto child = ChildProcess::Start(argv, log_prefix, cwd, env);
  CommandResult result;
  result.exit_code = child->ExitCode(timeout_seconds);
  result.out = child->out();
  result.err = child->err();
  return result;
}

// The absolute path of `name` found on $PATH, or "".
inline std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path != nullptr ? path : "/usr/bin:/bin", ':')) {
    const std::filesystem::path candidate = std::filesystem::path(std::string(dir)) / name;
    if (!dir.empty() && access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return "";
}

// kubectl, checked to carry kustomize v5 or later (deploy/k8s uses `patches`
// and directories in `resources`, which kustomize v2, in Debian's kubectl
// 1.20, does not read). "" and a test failure if there is none.
inline std::string Kubectl() {
  const std::string kubectl = FindOnPath("kubectl");
  if (kubectl.empty()) {
    ADD_FAILURE() << "kubectl is missing: the deploy tests render deploy/k8s with `kubectl kustomize`; "
                     "scripts/install_deps.sh installs it";
    return "";
  }
  // A log prefix of this process's own: test processes run side by side.
  const CommandResult version = RunCommand({kubectl, "version", "--client"},
                                           ::testing::TempDir() + "/kubectl_version_" + std::to_string(getpid()));
  const size_t at = version.out.find("Kustomize Version: v");
  const int major = at == std::string::npos ? 0 : std::atoi(version.out.c_str() + at + 20);
  if (major < 5) {
    ADD_FAILURE() << kubectl << " does not carry kustomize v5 or later (`kubectl version --client`: " << version.out
                  << version.err << "); install kubectl 1.27 or later (scripts/install_deps.sh does when none is there)";
    return "";
  }
  return kubectl;
}

// node; "" and a test failure if there is none.
inline std::string Node() {
  const std::string node = FindOnPath("node");
  if (node.empty()) ADD_FAILURE() << "node is missing: tests/k8s/validate.cjs runs on Node.js; scripts/install_deps.sh installs it";
  return node;
}

// The validator's node_modules (installed by tests/k8s/install.sh beside the
// build: build/k8s-validate); "" and a test failure if it is not there.
inline std::string ValidatorModules() {
  const std::string modules =
      (std::filesystem::path(REPTILE_BINARY).parent_path() / "k8s-validate" / "node_modules").string();
  if (!std::filesystem::exists(modules + "/kubernetes-models")) {
    ADD_FAILURE() << "the validator's npm packages are not in " << modules
                  << ": run `bash tests/k8s/install.sh` (scripts/test.sh does)";
    return "";
  }
  return modules;
}

// `kubectl kustomize deploy/k8s/<kustomization>` written to `out_file`.
inline absl::Status Render(const std::string& kustomization, const std::string& out_file) {
  const std::string kubectl = Kubectl();
  if (kubectl.empty()) return absl::FailedPreconditionError("no usable kubectl");
  const CommandResult result =
      RunCommand({kubectl, "kustomize", SourcePath("deploy/k8s/" + kustomization)}, out_file + ".kubectl");
  if (result.exit_code != 0)
    return absl::InternalError(absl::StrCat("kubectl kustomize deploy/k8s/", kustomization, ": ", result.err));
  std::ofstream(out_file) << result.out;
  return absl::OkStatus();
}

struct Validation {
  int exit_code = -1;
  std::string output;                                 // one line per problem, or "N objects valid"
  std::vector<Value> objects;                         // every document of the files, in order
  std::map<std::string, std::vector<Value>> by_file;  // the same, by file
};

// Runs tests/k8s/validate.cjs on `files`, with the MPIJob CRD that
// deploy/k8s/schemas holds; `work_dir` takes its logs and JSON output.
inline Validation Validate(const std::vector<std::string>& files, const std::string& work_dir) {
  Validation validation;
  const std::string node = Node(), modules = ValidatorModules();
  if (node.empty() || modules.empty()) return validation;
  const std::string json = work_dir + "/validated.json";
  std::vector<std::string> argv = {node,   SourcePath("tests/k8s/validate.cjs"),
                                   "--crd", SourcePath("deploy/k8s/schemas/mpijob-v2beta1-crd.yaml"),
                                   "--json", json};
  argv.insert(argv.end(), files.begin(), files.end());
  const CommandResult result = RunCommand(argv, work_dir + "/validate", {"NODE_PATH=" + modules});
  validation.exit_code = result.exit_code;
  validation.output = result.out + result.err;
  google::protobuf::ListValue list;
  const auto parsed = google::protobuf::util::JsonStringToMessage(ReadWholeFile(json), &list);
  EXPECT_TRUE(parsed.ok()) << "validator JSON output " << json << ": " << parsed.ToString();
  for (const Value& entry : list.values()) {
    const Value& object = entry.struct_value().fields().at("object");
    validation.objects.push_back(object);
    validation.by_file[entry.struct_value().fields().at("file").string_value()].push_back(object);
  }
  return validation;
}

// ---- reading protobuf Values of Kubernetes objects -------------------------

// The value at a dotted path of object fields ("spec.template.spec"), or
// nullptr if any step is missing. Keys with dots: Field().
inline const Value* Get(const Value& value, absl::string_view path) {
  const Value* at = &value;
  for (absl::string_view step : absl::StrSplit(path, '.')) {
    if (at->kind_case() != Value::kStructValue) return nullptr;
    const auto& fields = at->struct_value().fields();
    const auto it = fields.find(std::string(step));
    if (it == fields.end()) return nullptr;
    at = &it->second;
  }
  return at;
}

// The field `key` of an object value (a key may hold dots, as labels and
// ConfigMap keys do), or nullptr.
inline const Value* Field(const Value* value, const std::string& key) {
  if (value == nullptr || value->kind_case() != Value::kStructValue) return nullptr;
  const auto it = value->struct_value().fields().find(key);
  return it == value->struct_value().fields().end() ? nullptr : &it->second;
}

inline std::string FieldString(const Value* value, const std::string& key) {
  const Value* at = Field(value, key);
  return at != nullptr && at->kind_case() == Value::kStringValue ? at->string_value() : "";
}

inline std::string GetString(const Value& value, absl::string_view path) {
  const Value* at = Get(value, path);
  return at != nullptr && at->kind_case() == Value::kStringValue ? at->string_value() : "";
}

inline bool GetBool(const Value& value, absl::string_view path) {
  const Value* at = Get(value, path);
  return at != nullptr && at->kind_case() == Value::kBoolValue && at->bool_value();
}

inline double GetNumber(const Value& value, absl::string_view path, double missing = -1) {
  const Value* at = Get(value, path);
  return at != nullptr && at->kind_case() == Value::kNumberValue ? at->number_value() : missing;
}

// The elements of the list at `path`; empty if there is none.
inline std::vector<const Value*> GetList(const Value& value, absl::string_view path) {
  std::vector<const Value*> items;
  const Value* at = Get(value, path);
  if (at != nullptr && at->kind_case() == Value::kListValue)
    for (const Value& item : at->list_value().values()) items.push_back(&item);
  return items;
}

inline std::vector<std::string> GetStrings(const Value& value, absl::string_view path) {
  std::vector<std::string> strings;
  for (const Value* item : GetList(value, path)) strings.push_back(item->string_value());
  return strings;
}

// The object of `kind` named `name` (for a generated ConfigMap: whose name
// starts with `name` and a hash suffix), or nullptr.
inline const Value* FindObject(const std::vector<Value>& objects, absl::string_view kind, absl::string_view name) {
  for (const Value& object : objects) {
    const std::string object_name = GetString(object, "metadata.name");
    if (GetString(object, "kind") == kind &&
        (object_name == name || (kind == "ConfigMap" && absl::StartsWith(object_name, absl::StrCat(name, "-")))))
      return &object;
  }
  return nullptr;
}

inline std::vector<const Value*> FindKind(const std::vector<Value>& objects, absl::string_view kind) {
  std::vector<const Value*> found;
  for (const Value& object : objects)
    if (GetString(object, "kind") == kind) found.push_back(&object);
  return found;
}

// ---- deploy/docker/Dockerfile ------------------------------------------------

// One stage of a Dockerfile: its FROM image and name, and its instructions
// with continuation lines joined and comments dropped, e.g. "RUN a && b".
struct DockerStage {
  std::string image, name;
  std::vector<std::string> instructions;
};

inline std::vector<DockerStage> ParseDockerfile(const std::string& text) {
  std::vector<DockerStage> stages;
  std::string pending;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    const absl::string_view line = absl::StripAsciiWhitespace(raw);
    if (line.empty() || absl::StartsWith(line, "#")) continue;
    absl::string_view body = line;
    const bool continues = absl::ConsumeSuffix(&body, "\\");
    absl::StrAppend(&pending, pending.empty() ? "" : " ", absl::StripAsciiWhitespace(body));
    if (continues) continue;
    std::vector<std::string> words = absl::StrSplit(pending, ' ', absl::SkipEmpty());
    if (!words.empty() && words[0] == "FROM") {
      DockerStage stage;
      stage.image = words.size() > 1 ? words[1] : "";
      if (words.size() > 3 && absl::AsciiStrToUpper(words[2]) == "AS") stage.name = words[3];
      stages.push_back(stage);
    } else if (!stages.empty()) {
      stages.back().instructions.push_back(pending);
    }
    pending.clear();
  }
  return stages;
}

// A COPY instruction: --from stage (or ""), sources, destination.
struct DockerCopy {
  std::string from;
  std::vector<std::string> sources;
  std::string destination;
};

inline std::vector<DockerCopy> DockerCopies(const DockerStage& stage) {
  std::vector<DockerCopy> copies;
  for (const std::string& instruction : stage.instructions) {
    std::vector<std::string> words = absl::StrSplit(instruction, ' ', absl::SkipEmpty());
    if (words.empty() || words[0] != "COPY") continue;
    DockerCopy copy;
    std::vector<std::string> paths;
    for (size_t i = 1; i < words.size(); ++i) {
      if (absl::StartsWith(words[i], "--from=")) copy.from = words[i].substr(7);
      else if (!absl::StartsWith(words[i], "--")) paths.push_back(words[i]);
    }
    if (paths.size() < 2) continue;
    copy.destination = paths.back();
    paths.pop_back();
    copy.sources = paths;
    copies.push_back(copy);
  }
  return copies;
}

// The packages an `apt-get install` of the stage names.
inline std::vector<std::string> AptPackages(const DockerStage& stage) {
  std::vector<std::string> packages;
  for (const std::string& instruction : stage.instructions) {
    std::vector<std::string> words = absl::StrSplit(instruction, ' ', absl::SkipEmpty());
    for (size_t i = 0; i + 1 < words.size(); ++i) {
      if (words[i] != "apt-get" || words[i + 1] != "install") continue;
      for (size_t j = i + 2; j < words.size() && words[j] != "&&"; ++j)
        if (!absl::StartsWith(words[j], "-")) packages.push_back(words[j]);
    }
  }
  return packages;
}

inline std::vector<DockerStage> ProjectDockerfile() {
  return ParseDockerfile(ReadWholeFile(SourcePath("deploy/docker/Dockerfile")));
}

// Where each file the runtime image installs (a COPY destination) comes from
// on this machine: the binary under test for the build stage's
// /src/build/reptile, the source tree for other /src/ paths and for files
// copied from the build context.
inline std::map<std::string, std::string> ImageFilesOnThisMachine() {
  std::map<std::string, std::string> files;
  const std::vector<DockerStage> stages = ProjectDockerfile();
  if (stages.empty()) return files;
  for (const DockerCopy& copy : DockerCopies(stages.back())) {
    if (copy.sources.size() != 1) continue;
    absl::string_view source = copy.sources[0];
    if (!copy.from.empty()) {
      if (source == "/src/build/reptile") {
        files[copy.destination] = REPTILE_BINARY;
        continue;
      }
      if (!absl::ConsumePrefix(&source, "/src/")) continue;
    }
    files[copy.destination] = SourcePath(std::string(source));
  }
  return files;
}

}  // namespace reptile::testing

#endif  // REPTILE_TESTS_DEPLOY_SUPPORT_H_
