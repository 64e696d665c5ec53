// The container image built and run by a Docker engine: coordinator and
// workers as containers on a user-defined network, under the restrictions of
// deploy/k8s's securityContext (read-only root file system with a tmpfs at
// /tmp, every capability dropped, no-new-privileges, uid 10001), the Omniglot
// zips mounted read-only, TLS and the token as the Secret gives them. Checks
// that the run ends with the parameters of the same config trained in one
// process with threads, that the coordinator stopped (SIGTERM) or killed and
// started again gets its workers back by themselves, that the pods' probe
// answers inside the container, and that a worker container started mid-run
// joins.
//
// Two images, one parameter each:
// - HostBinary (ctest label `docker`, in scripts/test.sh): the Dockerfile's
//   `runtime-base` stage, then its runtime stage's instructions with the
//   files that stage takes from the build stage taken from this machine:
//   the binary under test and the libraries deploy/docker/runtime_libraries.sh
//   collects for it. A few minutes, no compiler in a container.
// - Dockerfile (label `docker_build`, left out of
//   scripts/test.sh): deploy/docker/Dockerfile built as it is, build stage
//   and all (about 20 minutes from nothing on 2 cores).
//
// The engine: `docker` on $PATH; when no engine answers and this runs as
// root, dockerd is started here for the test and stopped after it. The base
// image debian:bookworm is made with deploy/docker/base_image.sh (debootstrap)
// when absent. Skips, saying why, where no engine can run: no docker binary,
// not root with no engine running, or a dockerd that does not come up.
#include <grp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "tests/deploy_support.h"

namespace reptile::testing {
namespace {

constexpr int kUid = 10001;  // the image's user, and deploy/k8s's runAsUser
constexpr char kConfig[] = "omniglot_5w1s.textproto";

// Omniglot 5-way 1-shot cut to a run that lasts through two coordinator
// restarts and a join; short heartbeats so that a stopped coordinator is
// noticed at once, a checkpoint every 10 rounds, one metrics line a round.
std::vector<std::string> Overrides(const std::string& data_dir) {
  return {"task.data_dir=" + data_dir,      "outer.rounds=400",
          "eval.every_rounds=0",            "eval.final_episodes=10",
          "runtime.checkpoint_every_rounds=10", "runtime.metrics_every_rounds=1",
          "runtime.heartbeat_seconds=0.3",  "runtime.worker_timeout_seconds=1.5",
          "runtime.log_every_seconds=1"};
}

// ---- the engine ---------------------------------------------------------------

// The Docker engine the tests talk to; dockerd started here if none answered.
// One per test process (ctest runs each test in a process of its own, one at
// a time: RESOURCE_LOCK docker).
class DockerEngine {
 public:
  static DockerEngine& Get() {
    static DockerEngine* engine = new DockerEngine();
    return *engine;
  }

  // "" when the engine answers; else why it cannot (the reason to skip).
  const std::string& unavailable() const { return unavailable_; }
  const std::string& docker() const { return docker_; }

  // Stops the dockerd started here (SIGTERM: it stops its containers and
  // containerd), if any.
  void Stop() {
    if (dockerd_ == nullptr) return;
    dockerd_->Signal(SIGTERM);
    if (dockerd_->ExitCode(60) != 0) std::cerr << "dockerd: " << Tail(dockerd_->err()) << "\n";
    dockerd_.reset();
  }

  static std::string Tail(const std::string& text, size_t bytes = 2000) {
    return text.size() <= bytes ? text : "..." + text.substr(text.size() - bytes);
  }

 private:
  DockerEngine() {
    log_dir_ = ::testing::TempDir() + "/reptile_docker_engine";
    std::filesystem::create_directories(log_dir_);
    docker_ = FindOnPath("docker");
    if (docker_.empty()) {
      unavailable_ = "no `docker` on $PATH (scripts/install_deps.sh installs docker.io)";
      return;
    }
    if (Answers()) return;
    if (geteuid() != 0) {
      unavailable_ = "no Docker engine answers (`docker info`) and starting dockerd needs root";
      return;
    }
    const std::string dockerd = FindOnPath("dockerd");
    if (dockerd.empty()) {
      unavailable_ = "no Docker engine answers and there is no `dockerd` on $PATH to start one";
      return;
    }
    // No init system here: dockerd by hand, its defaults (overlay2, the
    // cgroupfs driver, /var/run/docker.sock).
    dockerd_ = ChildProcess::Start({dockerd}, log_dir_ + "/dockerd", "/");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline && dockerd_->running() && !Answers())
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    if (!Answers()) {
      unavailable_ = "dockerd did not come up within 60 s: " + Tail(dockerd_->err());
      Stop();
    }
  }

  bool Answers() { return RunCommand({docker_, "info"}, log_dir_ + "/docker_info", {}, 30).exit_code == 0; }

  std::string docker_, unavailable_, log_dir_;
  std::unique_ptr<ChildProcess> dockerd_;
};

// Stops the engine this process started once every test has run.
class StopEngineAtExit : public ::testing::Environment {
 public:
  void TearDown() override { DockerEngine::Get().Stop(); }
};
const auto* const kStopEngine = ::testing::AddGlobalTestEnvironment(new StopEngineAtExit);

// ---- the images -----------------------------------------------------------------

// `docker args...` with output in files beside `log`.
CommandResult Docker(const std::vector<std::string>& args, const std::string& log, double timeout = 120,
                     const std::string& cwd = REPTILE_SOURCE_DIR) {
  std::vector<std::string> argv = {DockerEngine::Get().docker()};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, log, {}, timeout, cwd);
}

// debian:bookworm, made with debootstrap when absent.
void EnsureBaseImage(const std::string& log) {
  const CommandResult base =
      RunCommand({"/bin/bash", SourcePath("deploy/docker/base_image.sh"), "debian:bookworm"}, log, {}, 1200);
  ASSERT_EQ(base.exit_code, 0) << base.out << base.err;
}

// The image of deploy/docker/Dockerfile, built as it is, tagged `tag`.
void BuildFromDockerfile(const std::string& tag, const std::string& log) {
  const auto start = std::chrono::steady_clock::now();
  const CommandResult built =
      Docker({"build", "-f", SourcePath("deploy/docker/Dockerfile"), "-t", tag, SourcePath(".")}, log, 3600);
  ASSERT_EQ(built.exit_code, 0) << DockerEngine::Tail(built.out + built.err, 6000);
  std::cout << "docker build of deploy/docker/Dockerfile: "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s\n";
}

// The Dockerfile's runtime-base stage, then its last stage's instructions in a
// context of this machine's files: what that stage copies from the build
// stage (the binary, /runtime) comes from REPTILE_BINARY and
// runtime_libraries.sh run on it here, the rest from the source tree.
void BuildFromThisMachine(const std::string& tag, const std::string& work) {
  const std::string base_tag = tag + "-runtime-base";
  const CommandResult base = Docker({"build", "-f", SourcePath("deploy/docker/Dockerfile"), "--target",
                                     "runtime-base", "-t", base_tag, SourcePath(".")},
                                    work + "/build_runtime_base", 1200);
  ASSERT_EQ(base.exit_code, 0) << DockerEngine::Tail(base.out + base.err, 6000);

  const std::string context = work + "/context";
  std::filesystem::remove_all(context);
  std::filesystem::create_directories(context);
  // What runtime-base has, as the build stage lists it.
  const CommandResult files = Docker({"run", "--rm", "--entrypoint", "/usr/bin/find", base_tag, "/usr/lib",
                                      "/usr/local/lib", "-xdev", "(", "-type", "f", "-o", "-type", "l", ")"},
                                     work + "/runtime_base_files");
  ASSERT_EQ(files.exit_code, 0) << files.err;
  std::ofstream(work + "/runtime-base.files") << files.out;
  const CommandResult collected =
      RunCommand({"/bin/sh", SourcePath("deploy/docker/runtime_libraries.sh"), REPTILE_BINARY,
                  work + "/runtime-base.files", context + "/from-build/runtime"},
                 work + "/runtime_libraries", {}, 300);
  ASSERT_EQ(collected.exit_code, 0) << collected.out << collected.err;

  const std::vector<DockerStage> stages = ProjectDockerfile();
  ASSERT_GE(stages.size(), 2u);
  ASSERT_EQ(stages.back().image, "runtime-base");
  std::string dockerfile = "FROM " + base_tag + "\n";
  for (const std::string& instruction : stages.back().instructions) {
    if (!absl::StartsWith(instruction, "COPY ")) {
      absl::StrAppend(&dockerfile, instruction, "\n");
      continue;
    }
    const std::vector<DockerCopy> copies = DockerCopies(DockerStage{"", "", {instruction}});
    ASSERT_EQ(copies.size(), 1u) << instruction;
    const DockerCopy& copy = copies[0];
    ASSERT_EQ(copy.sources.size(), 1u) << instruction;
    std::string local;  // the source, relative to the context
    if (copy.from.empty()) {
      local = copy.sources[0];
      std::filesystem::create_directories(std::filesystem::path(context + "/" + local).parent_path());
      std::filesystem::copy(SourcePath(local), context + "/" + local, std::filesystem::copy_options::overwrite_existing);
    } else if (copy.sources[0] == "/src/build/reptile") {
      local = "from-build/reptile";
      std::filesystem::copy(REPTILE_BINARY, context + "/" + local, std::filesystem::copy_options::overwrite_existing);
    } else if (copy.sources[0] == "/runtime/") {
      local = "from-build/runtime/";
    } else {
      FAIL() << "no local source for " << instruction;
    }
    absl::StrAppend(&dockerfile, "COPY ", local, " ", copy.destination, "\n");
  }
  std::ofstream(context + "/Dockerfile") << dockerfile;
  const auto start = std::chrono::steady_clock::now();
  const CommandResult built = Docker({"build", "-t", tag, context}, work + "/build", 1200);
  ASSERT_EQ(built.exit_code, 0) << dockerfile << DockerEngine::Tail(built.out + built.err, 6000);
  std::cout << "runtime stage from this machine's binary: "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s\n";
}

// Where the image comes from (the test parameter).
constexpr char kThisMachine[] = "this machine's binary and libraries";
constexpr char kDockerfile[] = "deploy/docker/Dockerfile";

std::string ParamName(const ::testing::TestParamInfo<std::string>& info) {
  return info.param == kThisMachine ? "HostBinary" : "Dockerfile";
}

// ---- the fixture ----------------------------------------------------------------

// A round line of metrics.jsonl.
struct Round {
  int64_t round = 0;
  int workers = 0;
  double rounds_per_second = 0;
};

std::vector<Round> ReadRounds(const std::string& metrics) {
  std::vector<Round> rounds;
  auto field = [](absl::string_view line, absl::string_view name) {
    const size_t at = line.find(absl::StrCat("\"", name, "\":"));
    if (at == absl::string_view::npos) return std::string();
    absl::string_view value = line.substr(at + name.size() + 3);
    return std::string(value.substr(0, value.find_first_of(",}")));
  };
  for (absl::string_view line : absl::StrSplit(ReadWholeFile(metrics), '\n')) {
    if (!absl::StrContains(line, "\"kind\":\"round\"")) continue;
    Round r;
    if (!absl::SimpleAtoi(field(line, "round"), &r.round) || !absl::SimpleAtoi(field(line, "workers"), &r.workers) ||
        !absl::SimpleAtod(field(line, "rounds_per_second"), &r.rounds_per_second))
      continue;  // a line being written
    rounds.push_back(r);
  }
  return rounds;
}

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// The exec command of deploy/k8s/base/coordinator.yaml's readinessProbe: the
// `- word` lines under its `command:`.
std::vector<std::string> ReadinessProbe() {
  std::vector<std::string> argv;
  bool in_probe = false, in_command = false;
  for (absl::string_view line : absl::StrSplit(ReadWholeFile(SourcePath("deploy/k8s/base/coordinator.yaml")), '\n')) {
    absl::string_view word = absl::StripAsciiWhitespace(line);
    if (word == "readinessProbe:") {
      in_probe = true;
    } else if (in_probe && word == "command:") {
      in_command = true;
    } else if (in_command) {
      if (!absl::ConsumePrefix(&word, "- ")) break;
      argv.emplace_back(word);
    }
  }
  return argv;
}

class DockerTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = TempDir("docker");
    if (!DockerEngine::Get().unavailable().empty()) GTEST_SKIP() << "Docker cannot run here: " << DockerEngine::Get().unavailable();
    prefix_ = absl::StrCat("reptile-test-", getpid());
    image_ = GetParam() == kThisMachine ? "reptile:test-host" : "reptile:test";
    ASSERT_NO_FATAL_FAILURE(EnsureBaseImage(dir_ + "/base_image"));
    if (GetParam() == kThisMachine)
      ASSERT_NO_FATAL_FAILURE(BuildFromThisMachine(image_, dir_));
    else
      ASSERT_NO_FATAL_FAILURE(BuildFromDockerfile(image_, dir_ + "/build"));
    const CommandResult size = Docker({"image", "inspect", "-f", "{{.Size}}", image_}, dir_ + "/size");
    image_bytes_ = std::atoll(size.out.c_str());
    std::cout << image_ << ": " << image_bytes_ / 1e6 << " MB\n";
    RecordProperty("image_megabytes", static_cast<int>(image_bytes_ / 1000000));
  }

  void TearDown() override {
    for (const std::string& name : containers_) Docker({"rm", "-f", name}, dir_ + "/rm");
    if (network_) Docker({"network", "rm", prefix_}, dir_ + "/network_rm");
  }

  // The pods' restrictions (deploy/k8s securityContext) as `docker run` flags.
  static std::vector<std::string> Restricted() {
    return {"--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--user", absl::StrCat(kUid, ":", kUid)};
  }

  // `docker run -d` of a container `name` on the test's network.
  void RunDetached(const std::string& name, std::vector<std::string> flags, const std::vector<std::string>& args) {
    std::vector<std::string> run = {"run", "-d", "--name", prefix_ + "-" + name, "--network", prefix_};
    run.insert(run.end(), flags.begin(), flags.end());
    run.push_back(image_);
    run.insert(run.end(), args.begin(), args.end());
    containers_.push_back(prefix_ + "-" + name);
    const CommandResult started = Docker(run, dir_ + "/run_" + name);
    ASSERT_EQ(started.exit_code, 0) << started.err;
  }

  std::string State(const std::string& name, const std::string& field) {
    return std::string(absl::StripAsciiWhitespace(
        Docker({"inspect", "-f", "{{.State." + field + "}}", prefix_ + "-" + name}, dir_ + "/inspect").out));
  }
  bool Running(const std::string& name) { return State(name, "Running") == "true"; }
  std::string Logs(const std::string& name) {
    const CommandResult logs = Docker({"logs", prefix_ + "-" + name}, dir_ + "/logs_" + name);
    return logs.out + logs.err;
  }

  // Waits until `done`, for at most `seconds`, while container `name` runs.
  bool WaitFor(const std::function<bool()>& done, double seconds, const std::string& name) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      if (done()) return true;
      if (!Running(name)) return done();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return done();
  }

  std::string dir_, prefix_, image_;
  int64_t image_bytes_ = 0;
  std::vector<std::string> containers_;
  bool network_ = false;
};

TEST_P(DockerTest, ImageHoldsWhatThePodsRun) {
  // The binary's libraries all resolve; it runs as the image's user.
  const CommandResult help = Docker({"run", "--rm", image_, "--help"}, dir_ + "/help");
  EXPECT_EQ(help.exit_code, 0) << help.err;
  EXPECT_TRUE(absl::StrContains(help.out + help.err, "coordinator")) << help.out << help.err;
  const CommandResult ldd =
      Docker({"run", "--rm", "--entrypoint", "/usr/bin/ldd", image_, "/usr/local/bin/reptile"}, dir_ + "/ldd");
  EXPECT_EQ(ldd.exit_code, 0) << ldd.err;
  EXPECT_FALSE(absl::StrContains(ldd.out, "not found")) << ldd.out;
  // The pods' tools, under the pods' restrictions: mpirun, curl with HTTP/2
  // (reptile-health), sshd accepting the MPIJob workers' config with a key
  // where the MPI Operator mounts it; no host keys baked into the image.
  std::vector<std::string> run = {"run", "--rm", "--entrypoint", "/bin/sh"};
  for (const std::string& flag : Restricted()) run.push_back(flag);
  run.insert(run.end(), {image_, "-c",
                         "id -u && mpirun --version && curl --version && ! ls /etc/ssh/ssh_host_* 2> /dev/null && "
                         "ssh-keygen -q -t rsa -N '' -f /tmp/id_rsa && "
                         "/usr/sbin/sshd -t -f /etc/reptile/sshd_config -o HostKey=/tmp/id_rsa && echo sshd-ok"});
  const CommandResult tools = Docker(run, dir_ + "/tools");
  EXPECT_EQ(tools.exit_code, 0) << tools.out << tools.err;
  EXPECT_TRUE(absl::StartsWith(tools.out, absl::StrCat(kUid, "\n"))) << tools.out;
  EXPECT_TRUE(absl::StrContains(tools.out, "Open MPI")) << tools.out;
  EXPECT_TRUE(absl::StrContains(tools.out, "HTTP2")) << tools.out;
  EXPECT_TRUE(absl::StrContains(tools.out, "sshd-ok")) << tools.out << tools.err;
  // Issue 13's image was 1.35 GB with whole packages for every library.
  EXPECT_LT(image_bytes_, 900e6) << "the image grew";
}

TEST_P(DockerTest, CoordinatorAndWorkersTrainUnderPodRestrictionsRestartAndJoin) {
  ASSERT_TRUE(std::filesystem::exists(OmniglotDir() + "/images_background.zip"))
      << "the Omniglot zips are not in " << OmniglotDir() << " (set REPTILE_OMNIGLOT_DIR)";
  // The reference: the same config in one process with two threads.
  const std::string reference_run = dir_ + "/reference";
  std::vector<std::string> train = {REPTILE_BINARY, "train", "--config", SourcePath(std::string("configs/") + kConfig),
                                    "--run_dir", reference_run, "--workers", "2", "runtime.local_workers=THREADS"};
  for (const std::string& o : Overrides(OmniglotDir())) train.push_back(o);
  const CommandResult reference = RunCommand(train, dir_ + "/reference", {}, 600);
  ASSERT_EQ(reference.exit_code, 0) << reference.err;
  const std::string expected_sha = ParameterSha(reference.out);
  ASSERT_EQ(expected_sha.size(), 64u) << reference.out;
  std::vector<double> reference_speed;
  for (const Round& r : ReadRounds(reference_run + "/metrics.jsonl")) reference_speed.push_back(r.rounds_per_second);

  // The volumes as the kubelet makes them: the Secret's files from
  // deploy/k8s/credentials.sh readable by group 10001 (fsGroup) only, the run
  // directory the user's, the configs and the dataset read-only.
  const std::string credentials = dir_ + "/credentials", run_dir = dir_ + "/run";
  const CommandResult made = RunCommand({"/bin/sh", SourcePath("deploy/k8s/credentials.sh"), credentials}, dir_ + "/credentials_sh");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  std::filesystem::create_directories(run_dir);
  const bool root = geteuid() == 0;
  for (const std::string file : {"ca.crt", "tls.crt", "tls.key"}) {
    const std::string path = credentials + "/" + file;
    if (root) ASSERT_EQ(chown(path.c_str(), 0, kUid), 0) << path;
    chmod(path.c_str(), root ? 0440 : 0444);
  }
  if (root) {
    ASSERT_EQ(chown(credentials.c_str(), 0, kUid), 0);
    ASSERT_EQ(chown(run_dir.c_str(), kUid, kUid), 0);
  }
  chmod(credentials.c_str(), root ? 0750 : 0755);
  if (!root) chmod(run_dir.c_str(), 0777);
  const std::string token(absl::StripAsciiWhitespace(ReadWholeFile(credentials + "/token")));

  std::vector<std::string> common = Restricted();
  // OpenBLAS picks its kernels by CPU unless $OPENBLAS_CORETYPE names them,
  // and kernels differ in the last bits: the containers get this process's
  // OpenBLAS settings, as the reference run has them (this machine sets
  // OPENBLAS_CORETYPE=Haswell; without it the run ends elsewhere).
  for (char** e = environ; *e != nullptr; ++e)
    if (absl::StartsWith(*e, "OPENBLAS_")) common.insert(common.end(), {"-e", *e});
  common.insert(common.end(), {"-e", "REPTILE_TOKEN=" + token, "-v", credentials + ":/etc/reptile/credentials:ro",
                               "-v", OmniglotDir() + ":/data/omniglot:ro"});
  std::vector<std::string> coordinator_flags = common;
  coordinator_flags.insert(coordinator_flags.end(),
                           {"--network-alias", "reptile-coordinator", "-v", SourcePath("configs") + ":/etc/reptile/config:ro",
                            "-v", run_dir + ":/var/lib/reptile"});
  std::vector<std::string> coordinator_args = {
      "coordinator", std::string("--config=/etc/reptile/config/") + kConfig, "--run_dir=/var/lib/reptile/run",
      "--listen=0.0.0.0:7070", "--tls_cert=/etc/reptile/credentials/tls.crt",
      "--tls_key=/etc/reptile/credentials/tls.key"};
  for (const std::string& o : Overrides("/data/omniglot")) coordinator_args.push_back(o);
  const std::vector<std::string> worker_args = {
      "worker", "--coordinator=reptile-coordinator:7070", "--tls_ca=/etc/reptile/credentials/ca.crt",
      "--tls_server_name=reptile-coordinator", "--data_dir=/data/omniglot"};

  ASSERT_EQ(Docker({"network", "create", prefix_}, dir_ + "/network").exit_code, 0);
  network_ = true;
  const std::string metrics = run_dir + "/run/metrics.jsonl";
  auto last_round = [&] {
    const std::vector<Round> rounds = ReadRounds(metrics);
    return rounds.empty() ? int64_t{0} : rounds.back().round;
  };
  // The readiness probe of the coordinator's pod, run in its container.
  const std::vector<std::string> probe = ReadinessProbe();
  ASSERT_EQ(probe.size(), 4u) << absl::StrJoin(probe, " ");
  ASSERT_EQ(probe[0], "/usr/local/bin/reptile-health");
  auto probe_answers = [&] {
    std::vector<std::string> exec = {"exec", prefix_ + "-coordinator"};
    exec.insert(exec.end(), probe.begin(), probe.end());
    return Docker(exec, dir_ + "/probe", 20).exit_code == 0;
  };

  ASSERT_NO_FATAL_FAILURE(RunDetached("coordinator", coordinator_flags, coordinator_args));
  ASSERT_TRUE(WaitFor(probe_answers, 60, "coordinator")) << Logs("coordinator");
  ASSERT_NO_FATAL_FAILURE(RunDetached("worker0", common, worker_args));
  ASSERT_TRUE(WaitFor([&] { return last_round() >= 30; }, 300, "coordinator")) << Logs("coordinator") << Logs("worker0");

  // `docker stop`: SIGTERM, a checkpoint, exit 0; `docker start`: it resumes
  // and the worker, which kept waiting, comes back by itself.
  const CommandResult stopped = Docker({"stop", "-t", "120", prefix_ + "-coordinator"}, dir_ + "/stop", 150);
  ASSERT_EQ(stopped.exit_code, 0) << stopped.err;
  EXPECT_EQ(State("coordinator", "ExitCode"), "0") << Logs("coordinator");
  EXPECT_TRUE(std::filesystem::exists(run_dir + "/run/checkpoint.bin"));
  EXPECT_TRUE(Running("worker0")) << Logs("worker0");
  int64_t before = last_round();
  ASSERT_EQ(Docker({"start", prefix_ + "-coordinator"}, dir_ + "/start").exit_code, 0);
  ASSERT_TRUE(WaitFor([&] { return last_round() >= before + 30; }, 300, "coordinator"))
      << Logs("coordinator") << Logs("worker0");
  EXPECT_TRUE(probe_answers()) << "the probe after docker start";

  // `docker kill`: SIGKILL, no checkpoint but the last scheduled one; started
  // again it recomputes the rounds since, and the worker is back again.
  ASSERT_EQ(Docker({"kill", prefix_ + "-coordinator"}, dir_ + "/kill").exit_code, 0);
  ASSERT_TRUE(WaitFor([&] { return !Running("coordinator"); }, 30, "coordinator"));
  EXPECT_EQ(State("coordinator", "ExitCode"), "137");
  before = last_round();
  ASSERT_EQ(Docker({"start", prefix_ + "-coordinator"}, dir_ + "/start2").exit_code, 0);
  ASSERT_TRUE(WaitFor([&] { return last_round() >= before + 30; }, 300, "coordinator"))
      << Logs("coordinator") << Logs("worker0");
  EXPECT_TRUE(probe_answers()) << "the probe after docker kill and start";

  // A second worker container, started mid-run, joins.
  ASSERT_NO_FATAL_FAILURE(RunDetached("worker1", common, worker_args));
  const int64_t joined_after = last_round();
  ASSERT_TRUE(WaitFor(
      [&] {
        const std::vector<Round> rounds = ReadRounds(metrics);
        return absl::c_any_of(rounds, [&](const Round& r) { return r.round > joined_after && r.workers == 2; });
      },
      300, "coordinator"))
      << Logs("coordinator") << Logs("worker1");

  // The end: exit 0 with the in-process parameters; the workers told to leave.
  const CommandResult waited = Docker({"wait", prefix_ + "-coordinator"}, dir_ + "/wait", 600);
  ASSERT_EQ(absl::StripAsciiWhitespace(waited.out), "0") << Logs("coordinator");
  const CommandResult logs = Docker({"logs", prefix_ + "-coordinator"}, dir_ + "/coordinator_logs");
  EXPECT_EQ(ParameterSha(logs.out), expected_sha) << logs.out << logs.err;
  for (const std::string worker : {"worker0", "worker1"}) {
    const CommandResult done = Docker({"wait", prefix_ + "-" + worker}, dir_ + "/wait_" + worker, 60);
    EXPECT_EQ(absl::StripAsciiWhitespace(done.out), "0") << Logs(worker);
  }

  // Speed: rounds with both worker containers against the threads' run.
  std::vector<double> container_speed;
  for (const Round& r : ReadRounds(metrics))
    if (r.round > joined_after && r.workers == 2) container_speed.push_back(r.rounds_per_second);
  const std::string speed = absl::StrFormat(
      "rounds/s, median of the metrics lines: 2 worker containers over gRPC with TLS %.1f (%d rounds); "
      "in process, 2 threads %.1f (%d rounds)",
      Median(container_speed), container_speed.size(), Median(reference_speed), reference_speed.size());
  std::cout << speed << "\n";
  RecordProperty("speed", speed);
}

INSTANTIATE_TEST_SUITE_P(Images, DockerTest, ::testing::Values(kThisMachine, kDockerfile),
                         ParamName);

}  // namespace
}  // namespace reptile::testing
