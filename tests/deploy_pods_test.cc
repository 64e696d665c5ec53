// The pods deploy/k8s renders, run as local processes: each container's
// command, arguments and environment taken from the rendered pod spec, its
// volumes made directories (ConfigMap files, the Secret that README's
// `kubectl create secret` makes from deploy/k8s/credentials.sh, claims, empty
// dirs; the dataset claim is the real Omniglot data), the image's files
// (deploy/docker/Dockerfile's COPYs) taken from this machine, and the
// Service's DNS name resolved to loopback. Checks that the coordinator and
// workers train together over TLS with the token, that a second worker joins
// when the Deployment is "scaled", that the probes answer, and that SIGTERM
// leaves a checkpoint `reptile inspect` reads; and that the MPIJob launcher's
// command trains under a local mpirun.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <thread>

#include "absl/strings/escaping.h"
#include "tests/deploy_support.h"

namespace reptile::testing {
namespace {

bool IsPathBoundary(char c) { return c == '/' || c == '"' || c == '\'' || c == ' ' || c == '\n' || c == ','; }

// Replaces each `from` of `rules` where it stands as a whole path or address:
// preceded by the start, '=', a quote, a space or a comma, and followed by the
// end, '/', a quote, a space or a comma. The longest rule wins.
std::string Rewrite(const std::string& text, std::vector<std::pair<std::string, std::string>> rules) {
  std::sort(rules.begin(), rules.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  std::string out;
  for (size_t i = 0; i < text.size();) {
    const bool start = i == 0 || text[i - 1] == '=' || IsPathBoundary(text[i - 1]);
    bool replaced = false;
    for (const auto& [from, to] : rules) {
      const size_t end = i + from.size();
      if (start && text.compare(i, from.size(), from) == 0 && (end == text.size() || IsPathBoundary(text[end]))) {
        out += to;
        i = end;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += text[i++];
  }
  return out;
}

// A container of a rendered pod, ready to run here.
struct LocalContainer {
  std::vector<std::string> argv;
  std::vector<std::string> env;  // NAME=value, added to this process's
  std::vector<std::pair<std::string, std::string>> paths;  // container path -> local path, and addresses
  int grace_seconds = 30;        // the pod's terminationGracePeriodSeconds
  std::string Local(const std::string& container_path) const { return Rewrite(container_path, paths); }
};

// Turns rendered pod templates into local processes' commands (see the file
// comment). Claims are directories shared by every pod under `root`, except
// those in `node_data` (claim name or hostPath -> local directory).
class LocalPods {
 public:
  LocalPods(const std::vector<Value>& objects, const Value* secret, std::string root,
            std::map<std::string, std::string> node_data)
      : objects_(objects), secret_(secret), root_(std::move(root)), node_data_(std::move(node_data)) {}

  // Where `address` (HOST:PORT as the pods name it) is reached here.
  // Maps `address` to `local` in the containers made from now on (again:
  // replaces the mapping).
  void MapAddress(const std::string& address, const std::string& local) {
    for (auto& [from, to] : addresses_)
      if (from == address) {
        to = local;
        return;
      }
    addresses_.push_back({address, local});
  }

  // The container `container_name` of `pod` (a pod template), its volumes
  // made directories under <root>/<pod_name>.
  LocalContainer Container(const std::string& pod_name, const Value& pod, const std::string& container_name) {
    LocalContainer local;
    local.grace_seconds = static_cast<int>(GetNumber(pod, "spec.terminationGracePeriodSeconds", 30));
    const Value* container = nullptr;
    for (const Value* c : GetList(pod, "spec.containers"))
      if (GetString(*c, "name") == container_name) container = c;
    if (container == nullptr) {
      ADD_FAILURE() << "no container " << container_name;
      return local;
    }
    // Every mount a directory; then files written with all paths known.
    std::vector<std::pair<const Value*, std::string>> to_fill;
    for (const Value* mount : GetList(*container, "volumeMounts")) {
      const Value* volume = nullptr;
      for (const Value* v : GetList(pod, "spec.volumes"))
        if (GetString(*v, "name") == GetString(*mount, "name")) volume = v;
      EXPECT_NE(volume, nullptr) << GetString(*mount, "name");
      EXPECT_EQ(Get(*mount, "subPath"), nullptr) << "subPath mounts are not mapped";
      if (volume == nullptr) continue;
      std::string dir;
      if (const Value* claim = Get(*volume, "persistentVolumeClaim")) {
        const std::string name = GetString(*claim, "claimName");
        dir = node_data_.count(name) ? node_data_[name] : root_ + "/claims/" + name;
      } else if (const Value* host = Get(*volume, "hostPath")) {
        const std::string path = GetString(*host, "path");
        EXPECT_EQ(node_data_.count(path), 1u) << "hostPath " << path << " has no local directory";
        dir = node_data_[path];
      } else {
        dir = root_ + "/" + pod_name + "/" + GetString(*volume, "name");
        to_fill.push_back({volume, dir});
      }
      std::filesystem::create_directories(dir);
      local.paths.push_back({GetString(*mount, "mountPath"), dir});
    }
    for (const auto& [from, to] : ImageFilesOnThisMachine()) local.paths.push_back({from, to});
    local.paths.insert(local.paths.end(), addresses_.begin(), addresses_.end());
    for (const auto& [volume, dir] : to_fill) Fill(pod, *volume, dir, local.paths);

    std::vector<std::string> command = GetStrings(*container, "command");
    const std::vector<std::string> args = GetStrings(*container, "args");
    command.insert(command.end(), args.begin(), args.end());
    for (const std::string& word : command) local.argv.push_back(Rewrite(word, local.paths));
    for (const Value* variable : GetList(*container, "env")) {
      std::string value = GetString(*variable, "value");
      if (const Value* ref = Get(*variable, "valueFrom.secretKeyRef")) {
        if (secret_ == nullptr) {
          ADD_FAILURE() << "no Secret to take " << GetString(*variable, "name") << " from";
          continue;
        }
        EXPECT_EQ(GetString(*ref, "name"), GetString(*secret_, "metadata.name"));
        value = SecretValue(GetString(*ref, "key"));
      } else if (const Value* ref = Get(*variable, "valueFrom.configMapKeyRef")) {
        value = FieldString(Get(*FindObject(objects_, "ConfigMap", GetString(*ref, "name")), "data"), GetString(*ref, "key"));
      } else {
        EXPECT_EQ(Get(*variable, "valueFrom"), nullptr) << "unmapped env source of " << GetString(*variable, "name");
      }
      local.env.push_back(GetString(*variable, "name") + "=" + Rewrite(value, local.paths));
    }
    return local;
  }

  // The exec command of the container's probe ("readinessProbe", ...).
  static std::vector<std::string> Probe(const Value& pod, const LocalContainer& local, const std::string& probe) {
    std::vector<std::string> argv;
    for (const std::string& word : GetStrings(*GetList(pod, "spec.containers").at(0), probe + ".exec.command"))
      argv.push_back(Rewrite(word, local.paths));
    return argv;
  }

 private:
  std::string SecretValue(const std::string& key) const {
    std::string decoded;
    EXPECT_TRUE(absl::Base64Unescape(FieldString(Get(*secret_, "data"), key), &decoded)) << key;
    return decoded;
  }

  // Writes a ConfigMap's or Secret's files (all keys, or the items named)
  // into `dir`, ConfigMap contents with container paths made local, with the
  // modes the kubelet gives them: the item's mode, else the volume's
  // defaultMode, else 0644; and with the pod's fsGroup, group read added
  // whatever the mode (kubernetes/kubernetes#57923).
  void Fill(const Value& pod, const Value& volume, const std::string& dir,
            const std::vector<std::pair<std::string, std::string>>& paths) {
    std::map<std::string, std::string> files;  // key -> contents
    const Value* source = nullptr;
    if ((source = Get(volume, "configMap")) != nullptr) {
      const Value* map = FindObject(objects_, "ConfigMap", GetString(*source, "name"));
      ASSERT_NE(map, nullptr) << GetString(*source, "name");
      for (const auto& [key, value] : Get(*map, "data")->struct_value().fields())
        files[key] = Rewrite(value.string_value(), paths);
    } else if ((source = Get(volume, "secret")) != nullptr) {
      ASSERT_NE(secret_, nullptr) << "no Secret for volume " << GetString(volume, "name");
      ASSERT_EQ(GetString(*source, "secretName"), GetString(*secret_, "metadata.name"));
      for (const auto& [key, value] : Get(*secret_, "data")->struct_value().fields()) files[key] = SecretValue(key);
    } else {
      ASSERT_NE(Get(volume, "emptyDir"), nullptr) << "unmapped volume " << GetString(volume, "name");
      return;
    }
    const int default_mode = static_cast<int>(GetNumber(*source, "defaultMode", 0644));
    const int group_read = Get(pod, "spec.securityContext.fsGroup") != nullptr ? 0440 : 0;
    struct Item {
      std::string key, path;
      int mode;
    };
    std::vector<Item> items;
    for (const Value* item : GetList(*source, "items"))
      items.push_back({GetString(*item, "key"), GetString(*item, "path"),
                       static_cast<int>(GetNumber(*item, "mode", default_mode))});
    if (items.empty())
      for (const auto& [key, contents] : files) items.push_back({key, key, default_mode});
    for (const Item& item : items) {
      ASSERT_EQ(files.count(item.key), 1u) << "no key " << item.key;
      const std::string file = dir + "/" + item.path;
      std::ofstream(file) << files[item.key];
      std::filesystem::permissions(file, static_cast<std::filesystem::perms>(item.mode | group_read));
    }
  }

  const std::vector<Value>& objects_;
  const Value* secret_;
  std::string root_;
  std::map<std::string, std::string> node_data_;
  std::vector<std::pair<std::string, std::string>> addresses_;
};

// The "workers" field of each round line of a metrics.jsonl.
std::vector<int> WorkersPerRound(const std::string& metrics) {
  std::vector<int> workers;
  for (absl::string_view line : absl::StrSplit(ReadWholeFile(metrics), '\n')) {
    if (!absl::StrContains(line, "\"kind\":\"round\"")) continue;
    const size_t at = line.find("\"workers\":");
    workers.push_back(at == std::string::npos ? -1 : std::atoi(std::string(line.substr(at + 10)).c_str()));
  }
  return workers;
}

// SIGKILLs every process of this test still running whose command line
// names `marker` (a path unique to the test): ranks that mpirun left behind.
void KillLeftovers(const std::string& marker) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = ReadWholeFile(entry.path().string() + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (absl::StrContains(cmdline, marker)) kill(std::atoi(name.c_str()), SIGKILL);
  }
}

// Waits until `done` or `seconds` pass or `process` ends; true if `done`.
bool WaitFor(const std::function<bool()>& done, double seconds, ChildProcess* process) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    if (process != nullptr && !process->running()) return done();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return done();
}

class DeployPodsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("pods");
    ASSERT_TRUE(std::filesystem::exists(OmniglotDir() + "/images_background.zip"))
        << "the Omniglot zips are not in " << OmniglotDir() << " (set REPTILE_OMNIGLOT_DIR)";
  }

  std::vector<Value> RenderAndValidate(const std::string& kustomization) {
    const std::string file = dir_ + "/rendered.yaml";
    const absl::Status rendered = Render(kustomization, file);
    EXPECT_TRUE(rendered.ok()) << rendered;
    Validation validation = Validate({file}, dir_);
    EXPECT_EQ(validation.exit_code, 0) << validation.output;
    return std::move(validation.objects);
  }

  // The Secret reptile-credentials as README makes it: credentials.sh, then
  // `kubectl create secret generic ... --from-file` (client side only);
  // validated like the rendered objects.
  Value MakeSecret() {
    const std::string credentials = dir_ + "/credentials";
    const CommandResult made =
        RunCommand({"/bin/sh", SourcePath("deploy/k8s/credentials.sh"), credentials}, dir_ + "/credentials_sh");
    EXPECT_EQ(made.exit_code, 0) << made.err;
    const std::string kubectl = Kubectl();
    if (kubectl.empty()) return Value();
    const CommandResult secret =
        RunCommand({kubectl, "create", "secret", "generic", "reptile-credentials", "--from-file=" + credentials,
                    "--dry-run=client", "-o", "yaml"},
                   dir_ + "/create_secret");
    EXPECT_EQ(secret.exit_code, 0) << secret.err;
    std::ofstream(dir_ + "/secret.yaml") << secret.out;
    Validation validation = Validate({dir_ + "/secret.yaml"}, dir_);
    EXPECT_EQ(validation.exit_code, 0) << validation.output;
    return validation.objects.empty() ? Value() : validation.objects[0];
  }

  std::unique_ptr<ChildProcess> Start(const LocalContainer& container, const std::string& log) {
    return ChildProcess::Start(container.argv, dir_ + "/" + log, dir_, container.env);
  }

  int RunProbe(const std::vector<std::string>& probe, const std::string& log) {
    return RunCommand(probe, dir_ + "/" + log, {}, 10).exit_code;
  }

  std::string dir_;
};

// The gRPC runtime's pods, as the base and as the local overlay (whose
// dataset is the node's directory) render them.
class DeployGrpcPodsTest : public DeployPodsTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(DeployGrpcPodsTest, CoordinatorAndWorkersTrainScaleAndCheckpointOnSigterm) {
  const std::vector<Value> objects = RenderAndValidate(GetParam());
  const Value secret = MakeSecret();
  const Value* coordinator = FindObject(objects, "Deployment", "reptile-coordinator");
  const Value* workers = FindObject(objects, "Deployment", "reptile-worker");
  const Value* service = FindObject(objects, "Service", "reptile-coordinator");
  ASSERT_TRUE(coordinator != nullptr && workers != nullptr && service != nullptr);
  ASSERT_EQ(GetString(secret, "kind"), "Secret");

  // The Service's name, the listen address and the probes' address all lead
  // to one free loopback port.
  const int port = FreePort();
  const std::string local = absl::StrCat("127.0.0.1:", port);
  const Value& service_port = *GetList(*service, "spec.ports").at(0);
  const Value& pod = *Get(*coordinator, "spec.template");
  const Value& worker_pod = *Get(*workers, "spec.template");
  const std::string container_port =
      absl::StrCat(GetNumber(*GetList(*GetList(pod, "spec.containers").at(0), "ports").at(0), "containerPort"));
  LocalPods pods(objects, &secret, dir_ + "/volumes",
                 {{"reptile-dataset", OmniglotDir()}, {"/data/omniglot", OmniglotDir()}});
  pods.MapAddress(absl::StrCat(GetString(*service, "metadata.name"), ":", GetNumber(service_port, "port")), local);
  pods.MapAddress("0.0.0.0:" + container_port, local);
  pods.MapAddress("127.0.0.1:" + container_port, local);

  // Every pod serves /metrics on the port of its scrape annotation: here one
  // free loopback port each.
  auto map_metrics = [&pods](const Value& template_) {
    const std::string metrics_port = FieldString(Get(template_, "metadata.annotations"), "prometheus.io/port");
    const std::string metrics_local = absl::StrCat("127.0.0.1:", FreePort());
    pods.MapAddress("0.0.0.0:" + metrics_port, metrics_local);
    return metrics_local;
  };
  const std::string coordinator_metrics = map_metrics(pod);
  const LocalContainer c = pods.Container("coordinator-0", pod, "coordinator");
  ASSERT_EQ(c.argv.at(0), REPTILE_BINARY);
  auto coordinator_process = Start(c, "coordinator");
  const std::vector<std::string> readiness = LocalPods::Probe(pod, c, "readinessProbe");
  const std::vector<std::string> liveness = LocalPods::Probe(pod, c, "livenessProbe");
  ASSERT_EQ(readiness.at(0), SourcePath("deploy/docker/reptile-health"));
  ASSERT_TRUE(WaitFor([&] { return RunProbe(readiness, "readiness") == 0; }, 60, coordinator_process.get()))
      << coordinator_process->err();
  // It took the TLS key pair and the token from the Secret's files.
  EXPECT_TRUE(absl::StrContains(coordinator_process->err(), "(TLS, bearer token)")) << coordinator_process->err();

  // One worker (its token from the environment, the CA from its volume).
  map_metrics(worker_pod);
  const LocalContainer w0 = pods.Container("worker-0", worker_pod, "worker");
  EXPECT_TRUE(absl::c_linear_search(w0.argv, "--coordinator=" + local)) << absl::StrJoin(w0.argv, " ");
  auto worker0 = Start(w0, "worker0");
  const std::string run_dir = c.Local("/var/lib/reptile/run");
  ASSERT_TRUE(WaitFor([&] { return WorkersPerRound(run_dir + "/metrics.jsonl").size() >= 3; }, 90,
                      coordinator_process.get()))
      << coordinator_process->err() << worker0->err();
  EXPECT_EQ(WorkersPerRound(run_dir + "/metrics.jsonl").at(0), 1);

  // `kubectl scale deployment/reptile-worker --replicas=2`: a second pod of
  // the same template joins the run in progress.
  map_metrics(worker_pod);
  auto worker1 = Start(pods.Container("worker-1", worker_pod, "worker"), "worker1");
  ASSERT_TRUE(WaitFor(
      [&] { return absl::c_linear_search(WorkersPerRound(run_dir + "/metrics.jsonl"), 2); }, 90,
      coordinator_process.get()))
      << coordinator_process->err() << worker1->err();
  EXPECT_EQ(RunProbe(liveness, "liveness"), 0);
  // The coordinator's /metrics, where the annotations say.
  const CommandResult scrape = RunCommand({"/usr/bin/curl", "-sS", "--max-time", "5", "http://" + coordinator_metrics + "/metrics"},
                                          dir_ + "/scrape");
  EXPECT_EQ(scrape.exit_code, 0) << scrape.err;
  EXPECT_TRUE(absl::StrContains(scrape.out, "reptile_workers_alive")) << scrape.out;

  // SIGTERM, as the kubelet sends it: a checkpoint within the grace period,
  // exit 0; the probes fail once it is gone.
  coordinator_process->Signal(SIGTERM);
  ASSERT_EQ(coordinator_process->ExitCode(c.grace_seconds), 0) << coordinator_process->err();
  EXPECT_TRUE(std::filesystem::exists(run_dir + "/checkpoint.bin"));
  EXPECT_NE(RunProbe(liveness, "liveness_after"), 0);
  const CommandResult inspect = RunCommand({REPTILE_BINARY, "inspect", "--run_dir", run_dir}, dir_ + "/inspect");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  const int rounds = static_cast<int>(WorkersPerRound(run_dir + "/metrics.jsonl").size());
  EXPECT_TRUE(absl::StrContains(inspect.out, absl::StrCat("round ", rounds, " of "))) << inspect.out << " after " << rounds;

  // Workers of a stopped coordinator wait for it; SIGTERM ends them.
  for (ChildProcess* worker : {worker0.get(), worker1.get()}) {
    worker->Signal(SIGTERM);
    EXPECT_EQ(worker->ExitCode(w0.grace_seconds), 0) << worker->err();
  }
}

INSTANTIATE_TEST_SUITE_P(Kustomizations, DeployGrpcPodsTest, ::testing::Values("base", "overlays/local"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param == "base" ? std::string("Base") : std::string("LocalOverlay");
                         });

// The MPIJob's launcher command (mpirun ... reptile mpi --config ... --run_dir
// ...) run here as the launcher pod would run it, with mpirun starting one
// rank per core of this machine instead of one per hostfile slot.
TEST_F(DeployPodsTest, MpiJobLauncherCommandTrainsUnderLocalMpirun) {
  const std::vector<Value> objects = RenderAndValidate("overlays/mpi");
  const Value* job = FindObject(objects, "MPIJob", "reptile");
  ASSERT_NE(job, nullptr);
  const Value& pod = *Get(*job, "spec.mpiReplicaSpecs.Launcher.template");
  const std::string volumes = dir_ + "/volumes";
  LocalPods pods(objects, nullptr, volumes, {{"reptile-dataset", OmniglotDir()}});
  LocalContainer launcher = pods.Container("launcher", pod, "launcher");
  ASSERT_EQ(launcher.argv.at(0), "/usr/bin/mpirun");
  EXPECT_TRUE(absl::c_linear_search(launcher.argv, REPTILE_BINARY)) << absl::StrJoin(launcher.argv, " ");
  // The pod runs as the image's user; a test running as root needs Open
  // MPI's consent.
  launcher.env.push_back("OMPI_ALLOW_RUN_AS_ROOT=1");
  launcher.env.push_back("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1");
  // The pod network's interface (eth0) need not exist here; all ranks are
  // on this machine anyway.
  const size_t before = launcher.env.size();
  launcher.env.erase(std::remove_if(launcher.env.begin(), launcher.env.end(),
                                    [](const std::string& v) {
                                      return absl::StartsWith(v, "OMPI_MCA_btl_tcp_if_include=") ||
                                             absl::StartsWith(v, "OMPI_MCA_oob_tcp_if_include=");
                                    }),
                     launcher.env.end());
  EXPECT_EQ(launcher.env.size(), before - 2);
  auto mpirun = Start(launcher, "launcher");
  const std::string run_dir = launcher.Local("/var/lib/reptile/run");
  const bool trained = WaitFor([&] { return WorkersPerRound(run_dir + "/metrics.jsonl").size() >= 5; }, 120,
                               mpirun.get());
  EXPECT_TRUE(trained) << mpirun->err();
  EXPECT_TRUE(absl::StrContains(mpirun->err(), "MPI: ")) << mpirun->err();
  EXPECT_TRUE(absl::StrContains(ReadWholeFile(run_dir + "/config.textproto"), "omniglot_5w1s"));
  mpirun->Signal(SIGTERM);
  EXPECT_NE(mpirun->ExitCode(launcher.grace_seconds), -1) << "mpirun outlived its grace period";
  KillLeftovers(volumes);
}

}  // namespace
}  // namespace reptile::testing
