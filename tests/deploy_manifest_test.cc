// deploy/ checked offline, with no Docker engine and no cluster:
// - every kustomization under deploy/k8s renders with `kubectl kustomize`, and
//   every rendered object validates strictly (unknown fields refused) against
//   the Kubernetes API schemas, the MPIJob against the MPI Operator's CRD;
// - the validator refuses misspelled fields, naming them;
// - the rendered objects fit together (names, ports, labels, images, users,
//   probes, resources) and with deploy/docker/Dockerfile;
// - the Dockerfile builds with the project's own scripts, runs as a non-root
//   user, and its runtime stage gets every shared library build/reptile
//   loads (the pods' tools as packages, the rest collected by
//   deploy/docker/runtime_libraries.sh).
// tests/deploy_pods_test.cc runs the rendered pods' commands as processes.
#include <map>
#include <set>

#include "absl/strings/str_replace.h"
#include "tests/deploy_support.h"

namespace reptile::testing {
namespace {

constexpr char kRegistryImage[] = "registry.example.com/reptile:1.0";

// What each kustomization renders, by kind.
struct Expected {
  std::string kustomization;
  std::string image;
  std::map<std::string, int> kinds;
};

const std::vector<Expected>& Kustomizations() {
  static const auto* all = new std::vector<Expected>{
      {"base", "reptile", {{"ConfigMap", 1}, {"PersistentVolumeClaim", 2}, {"Deployment", 2}, {"Service", 1}}},
      {"overlays/cluster", kRegistryImage,
       {{"ConfigMap", 1}, {"PersistentVolumeClaim", 2}, {"Deployment", 2}, {"Service", 1}}},
      {"overlays/local", "reptile:local",
       {{"ConfigMap", 1}, {"PersistentVolumeClaim", 1}, {"Deployment", 2}, {"Service", 1}}},
      {"overlays/mpi", kRegistryImage, {{"ConfigMap", 1}, {"PersistentVolumeClaim", 2}, {"MPIJob", 1}}},
  };
  return *all;
}

// Every pod template of the rendered objects with where it is: Deployments'
// and the MPIJob's replicas'.
std::vector<std::pair<std::string, const Value*>> PodTemplates(const std::vector<Value>& objects) {
  std::vector<std::pair<std::string, const Value*>> templates;
  for (const Value& object : objects) {
    const std::string name = GetString(object, "kind") + "/" + GetString(object, "metadata.name");
    if (const Value* t = Get(object, "spec.template")) templates.push_back({name, t});
    if (const Value* replicas = Get(object, "spec.mpiReplicaSpecs"))
      for (const auto& [role, replica] : replicas->struct_value().fields())
        if (const Value* t = Get(replica, "template")) templates.push_back({name + " " + role, t});
  }
  return templates;
}

// The numeric uid:gid of the runtime stage's USER instruction, or "".
std::string ImageUser() {
  const std::vector<DockerStage> stages = ProjectDockerfile();
  std::string user;
  if (stages.empty()) return user;
  for (const std::string& instruction : stages.back().instructions)
    if (absl::StartsWith(instruction, "USER ")) user = instruction.substr(5);
  return user;
}

class DeployManifestTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = TempDir("work"); }

  // Every kustomization rendered and all of them validated in one run of the
  // validator (its schemas load once); a test failure if any step fails. The
  // objects stay in the fixture, so pointers into them stay valid.
  std::map<std::string, std::vector<Value>>& RenderAll() {
    if (!rendered_.empty()) return rendered_;
    std::vector<std::string> files;
    for (const Expected& expected : Kustomizations()) {
      files.push_back(dir_ + "/" + absl::StrReplaceAll(expected.kustomization, {{"/", "_"}}) + ".yaml");
      const absl::Status status = Render(expected.kustomization, files.back());
      EXPECT_TRUE(status.ok()) << status;
      if (!status.ok()) return rendered_;
    }
    Validation validation = Validate(files, dir_);
    EXPECT_EQ(validation.exit_code, 0) << validation.output;
    EXPECT_TRUE(absl::StrContains(validation.output, "objects valid")) << validation.output;
    for (size_t i = 0; i < files.size(); ++i)
      rendered_[Kustomizations()[i].kustomization] = std::move(validation.by_file[files[i]]);
    return rendered_;
  }

  const std::vector<Value>& Objects(const std::string& kustomization) { return RenderAll()[kustomization]; }

  std::string dir_;
  std::map<std::string, std::vector<Value>> rendered_;
};

TEST_F(DeployManifestTest, EveryKustomizationRendersAndValidatesStrictly) {
  for (const Expected& expected : Kustomizations()) {
    SCOPED_TRACE(expected.kustomization);
    const std::vector<Value>& objects = Objects(expected.kustomization);
    std::map<std::string, int> kinds;
    for (const Value& object : objects) ++kinds[GetString(object, "kind")];
    EXPECT_EQ(kinds, expected.kinds);
    // Every container of every pod runs the overlay's image.
    for (const auto& [where, pod] : PodTemplates(objects))
      for (const Value* container : GetList(*pod, "spec.containers"))
        EXPECT_EQ(GetString(*container, "image"), expected.image) << where;
  }
}

TEST_F(DeployManifestTest, ValidatorRefusesMisspelledFieldsNamingThem) {
  // file -> a line the validator must print for it.
  std::vector<std::pair<std::string, std::string>> broken = {
      {SourcePath("tests/k8s/broken/deployment-misspelled.yaml"),
       "Deployment/misspelled: /spec/template/spec/containers/0/resources: unknown field \"limit\""},
      {SourcePath("tests/k8s/broken/mpijob-misspelled.yaml"),
       "MPIJob/misspelled: /spec: unknown field \"slotPerWorker\""},
      {SourcePath("tests/k8s/broken/mpijob-template-misspelled.yaml"),
       "MPIJob/misspelled: /spec/mpiReplicaSpecs/Worker/template/spec/containers/0: unknown field \"volumeMount\""},
  };
  // The project's own rendered manifests with one field misspelled, in the
  // coordinator's pod spec and in the MPIJob.
  for (const auto& [kustomization, field, misspelled, where] :
       std::vector<std::tuple<std::string, std::string, std::string, std::string>>{
           {"base", "terminationGracePeriodSeconds:", "terminationGracePeriodSecond:",
            "Deployment/reptile-coordinator: /spec/template/spec"},
           {"overlays/mpi", "runLauncherAsWorker:", "runLauncherAsWorkers:", "MPIJob/reptile: /spec"}}) {
    const std::string file = dir_ + "/mangled_" + absl::StrReplaceAll(kustomization, {{"/", "_"}}) + ".yaml";
    ASSERT_TRUE(Render(kustomization, file).ok());
    std::string rendered = ReadWholeFile(file);
    const size_t at = rendered.find(field);  // the first: the coordinator's
    ASSERT_NE(at, std::string::npos) << kustomization;
    std::ofstream(file) << rendered.replace(at, field.size(), misspelled);
    broken.push_back(
        {file, absl::StrCat(where, ": unknown field \"", absl::StripSuffix(misspelled, ":"), "\"")});
  }
  // A wrong type is refused too.
  std::ofstream(dir_ + "/typed.yaml") << "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n"
                                      << "    - port: seventy\n";
  broken.push_back({dir_ + "/typed.yaml", "Service/s: /spec/ports/0/port: must be integer"});

  std::vector<std::string> files;
  for (const auto& [file, message] : broken) files.push_back(file);
  const Validation validation = Validate(files, dir_);
  EXPECT_EQ(validation.exit_code, 1) << validation.output;
  for (const auto& [file, message] : broken)
    EXPECT_TRUE(absl::StrContains(validation.output, file + ": " + message)) << validation.output;
  // Nothing else is wrong in them.
  EXPECT_EQ(std::count(validation.output.begin(), validation.output.end(), '\n'), broken.size())
      << validation.output;
}

TEST_F(DeployManifestTest, CoordinatorWorkersAndServiceFitTogether) {
  for (const std::string kustomization : {"base", "overlays/cluster", "overlays/local"}) {
    SCOPED_TRACE(kustomization);
    const std::vector<Value>& objects = Objects(kustomization);
    const Value* coordinator = FindObject(objects, "Deployment", "reptile-coordinator");
    const Value* workers = FindObject(objects, "Deployment", "reptile-worker");
    const Value* service = FindObject(objects, "Service", "reptile-coordinator");
    ASSERT_NE(coordinator, nullptr);
    ASSERT_NE(workers, nullptr);
    ASSERT_NE(service, nullptr);

    // One coordinator, never two at once, with time to checkpoint on SIGTERM.
    EXPECT_EQ(GetNumber(*coordinator, "spec.replicas"), 1);
    EXPECT_EQ(GetString(*coordinator, "spec.strategy.type"), "Recreate");
    EXPECT_GE(GetNumber(*coordinator, "spec.template.spec.terminationGracePeriodSeconds"), 60);
    EXPECT_GE(GetNumber(*workers, "spec.replicas"), 1);

    // The Service selects the coordinator's pods and forwards to its gRPC port.
    const Value& pod = *Get(*coordinator, "spec.template");
    for (const auto& [key, value] : Get(*service, "spec.selector")->struct_value().fields())
      EXPECT_EQ(FieldString(Get(pod, "metadata.labels"), key), value.string_value()) << key;
    const Value& container = *GetList(pod, "spec.containers").at(0);
    const Value& container_port = *GetList(container, "ports").at(0);
    const Value& service_port = *GetList(*service, "spec.ports").at(0);
    EXPECT_EQ(GetString(service_port, "targetPort"), GetString(container_port, "name"));
    const int port = static_cast<int>(GetNumber(container_port, "containerPort"));
    EXPECT_TRUE(absl::c_linear_search(GetStrings(container, "args"), absl::StrCat("--listen=0.0.0.0:", port)));

    // The bearer token reaches the coordinator through its environment: a
    // Secret file is group-readable under fsGroup, and a token file that is
    // gets refused.
    EXPECT_FALSE(absl::c_any_of(GetStrings(container, "args"),
                                [](const std::string& arg) { return absl::StartsWith(arg, "--token_file"); }));
    bool token_from_secret = false;
    for (const Value* variable : GetList(container, "env"))
      token_from_secret |= GetString(*variable, "name") == "REPTILE_TOKEN" &&
                           GetString(*variable, "valueFrom.secretKeyRef.key") == "token";
    EXPECT_TRUE(token_from_secret);

    // Workers find the coordinator by the Service's DNS name and port, and
    // check its certificate against that name.
    const Value& worker = *GetList(*workers, "spec.template.spec.containers").at(0);
    const std::vector<std::string> worker_args = GetStrings(worker, "args");
    const std::string service_name = GetString(*service, "metadata.name");
    EXPECT_TRUE(absl::c_linear_search(
        worker_args, absl::StrCat("--coordinator=", service_name, ":", GetNumber(service_port, "port"))));
    EXPECT_TRUE(absl::c_linear_search(worker_args, "--tls_server_name=" + service_name));

    // Prometheus: the coordinator's and each worker's pods carry the usual
    // scrape annotations, naming a declared container port that the process
    // serves /metrics on (docs/monitoring.md).
    for (const Value* deployment : {coordinator, workers}) {
      const Value& template_ = *Get(*deployment, "spec.template");
      const Value* annotations = Get(template_, "metadata.annotations");
      ASSERT_NE(annotations, nullptr) << GetString(*deployment, "metadata.name");
      EXPECT_EQ(FieldString(annotations, "prometheus.io/scrape"), "true");
      EXPECT_EQ(FieldString(annotations, "prometheus.io/path"), "/metrics");
      const std::string metrics_port = FieldString(annotations, "prometheus.io/port");
      const Value& c = *GetList(template_, "spec.containers").at(0);
      bool declared = false;
      for (const Value* p : GetList(c, "ports"))
        declared |= absl::StrCat(GetNumber(*p, "containerPort")) == metrics_port && GetString(*p, "name") == "metrics";
      EXPECT_TRUE(declared) << GetString(*deployment, "metadata.name") << ": no container port " << metrics_port;
      EXPECT_TRUE(absl::c_linear_search(GetStrings(c, "args"), "--metrics_listen=0.0.0.0:" + metrics_port))
          << GetString(*deployment, "metadata.name");
    }

    // Health: readiness and liveness ask the gRPC health service on the
    // coordinator's own port, over TLS, with the server name of the
    // certificate deploy/k8s/credentials.sh makes.
    for (const std::string probe : {"readinessProbe", "livenessProbe"}) {
      const std::vector<std::string> command = GetStrings(container, probe + ".exec.command");
      ASSERT_FALSE(command.empty()) << probe;
      EXPECT_EQ(command.front(), "/usr/local/bin/reptile-health");
      EXPECT_EQ(command.back(), absl::StrCat("127.0.0.1:", port));
      EXPECT_TRUE(absl::c_linear_search(command, "--tls_server_name=" + service_name));
    }
    EXPECT_TRUE(absl::StrContains(ReadWholeFile(SourcePath("deploy/k8s/credentials.sh")),
                                  "subjectAltName=DNS:" + service_name));

    // Volumes name objects that exist: rendered ConfigMaps and claims, and
    // the Secret of credentials.sh's four files.
    for (const auto& [where, template_] : PodTemplates(objects)) {
      for (const Value* volume : GetList(*template_, "spec.volumes")) {
        if (const Value* map = Get(*volume, "configMap"))
          EXPECT_NE(FindObject(objects, "ConfigMap", GetString(*map, "name")), nullptr) << where;
        if (const Value* claim = Get(*volume, "persistentVolumeClaim"))
          EXPECT_NE(FindObject(objects, "PersistentVolumeClaim", GetString(*claim, "claimName")), nullptr) << where;
        if (const Value* secret = Get(*volume, "secret")) {
          EXPECT_EQ(GetString(*secret, "secretName"), "reptile-credentials") << where;
          EXPECT_EQ(GetNumber(*secret, "defaultMode"), 0400) << where << ": Secret files for their owner only";
          for (const Value* item : GetList(*secret, "items"))
            EXPECT_TRUE(std::set<std::string>({"ca.crt", "tls.crt", "tls.key", "token"})
                            .count(GetString(*item, "key"))) << where;
        }
      }
    }
  }
}

TEST_F(DeployManifestTest, PodsRunTheImageAsItsUnprivilegedUserWithResources) {
  const std::string user = ImageUser();
  ASSERT_FALSE(user.empty()) << "deploy/docker/Dockerfile: no USER in the runtime stage";
  const std::vector<std::string> ids = absl::StrSplit(user, ':');
  ASSERT_EQ(ids.size(), 2u) << "USER should be numeric uid:gid, got " << user;
  EXPECT_NE(ids[0], "0");
  const std::map<std::string, std::string> image_files = ImageFilesOnThisMachine();
  for (const Expected& expected : Kustomizations()) {
    for (const auto& [where, pod] : PodTemplates(Objects(expected.kustomization))) {
      SCOPED_TRACE(expected.kustomization + " " + where);
      EXPECT_TRUE(GetBool(*pod, "spec.securityContext.runAsNonRoot"));
      EXPECT_EQ(absl::StrCat(GetNumber(*pod, "spec.securityContext.runAsUser")), ids[0]);
      EXPECT_EQ(absl::StrCat(GetNumber(*pod, "spec.securityContext.runAsGroup")), ids[1]);
      // fsGroup makes mounted claims and Secret files readable and writable.
      EXPECT_EQ(absl::StrCat(GetNumber(*pod, "spec.securityContext.fsGroup")), ids[1]);
      for (const Value* container : GetList(*pod, "spec.containers")) {
        for (const std::string bound : {"requests", "limits"})
          for (const std::string resource : {"cpu", "memory"})
            EXPECT_NE(Get(*container, "resources." + bound + "." + resource), nullptr) << bound << " " << resource;
        // The program a container runs is in the image: installed by a COPY
        // or by a package of runtime-base (checked in
        // DockerfileRuntimeStageHoldsWhatTheBinaryLoads).
        const std::string program = GetStrings(*container, "command").at(0);
        EXPECT_TRUE(image_files.count(program) || program == "/usr/bin/mpirun" || program == "/usr/sbin/sshd")
            << program;
      }
    }
  }
}

TEST_F(DeployManifestTest, MpiJobRunsReptileMpiUnderMpirun) {
  const std::vector<Value>& objects = Objects("overlays/mpi");
  const Value* job = FindObject(objects, "MPIJob", "reptile");
  ASSERT_NE(job, nullptr);
  EXPECT_EQ(GetString(*job, "apiVersion"), "kubeflow.org/v2beta1");
  // Rank 0 runs in the launcher, which mounts the run directory.
  EXPECT_TRUE(GetBool(*job, "spec.runLauncherAsWorker"));
  EXPECT_EQ(GetString(*job, "spec.mpiImplementation"), "OpenMPI");
  EXPECT_EQ(GetString(*job, "spec.sshAuthMountPath"), "/home/reptile/.ssh");
  EXPECT_TRUE(absl::StrContains(ReadWholeFile(SourcePath("deploy/docker/Dockerfile")), "--home-dir /home/reptile"));

  const Value& launcher = *GetList(*job, "spec.mpiReplicaSpecs.Launcher.template.spec.containers").at(0);
  std::vector<std::string> command = GetStrings(launcher, "command");
  const std::vector<std::string> args = GetStrings(launcher, "args");
  command.insert(command.end(), args.begin(), args.end());
  const std::string line = absl::StrJoin(command, " ");
  EXPECT_TRUE(absl::StartsWith(line, "/usr/bin/mpirun ")) << line;
  EXPECT_TRUE(absl::StrContains(line, " /usr/local/bin/reptile mpi --config=/etc/reptile/config/experiment.textproto "
                                      "--run_dir=/var/lib/reptile/run"))
      << line;
  // Open MPI uses the pod network only (docs/mpi.md).
  std::map<std::string, std::string> env;
  for (const Value* variable : GetList(launcher, "env")) env[GetString(*variable, "name")] = GetString(*variable, "value");
  EXPECT_EQ(env["OMPI_MCA_btl_tcp_if_include"], "eth0");
  EXPECT_EQ(env["OMPI_MCA_oob_tcp_if_include"], "eth0");
  // Workers serve sshd as the image's user, with the image's sshd_config.
  const Value& worker = *GetList(*job, "spec.mpiReplicaSpecs.Worker.template.spec.containers").at(0);
  EXPECT_EQ(GetStrings(worker, "command"), std::vector<std::string>{"/usr/sbin/sshd"});
  const std::vector<std::string> sshd_args = GetStrings(worker, "args");
  ASSERT_EQ(sshd_args.size(), 3u);
  EXPECT_EQ(sshd_args[2], "/etc/reptile/sshd_config");
  EXPECT_EQ(ImageFilesOnThisMachine().count("/etc/reptile/sshd_config"), 1u);
  const std::string sshd_config = ReadWholeFile(SourcePath("deploy/docker/sshd_config"));
  EXPECT_TRUE(absl::StrContains(sshd_config, "HostKey /home/reptile/.ssh/")) << sshd_config;
  EXPECT_TRUE(absl::StrContains(ReadWholeFile(SourcePath("deploy/docker/ssh_config")), "Port 2222"));
  EXPECT_TRUE(absl::StrContains(sshd_config, "Port 2222"));
  // The launcher's config volume follows the generated ConfigMap's name.
  for (const Value* volume : GetList(*job, "spec.mpiReplicaSpecs.Launcher.template.spec.volumes"))
    if (const Value* map = Get(*volume, "configMap"))
      EXPECT_EQ(GetString(*map, "name"), GetString(*FindKind(objects, "ConfigMap").at(0), "metadata.name"));
}

// The experiment configs in the ConfigMaps are the repository's configs with
// the data folder at the dataset volume's mount point, so they stay in step.
TEST_F(DeployManifestTest, ConfigMapsHoldTheRepositoryConfigsPointedAtTheDatasetVolume) {
  for (const auto& [kustomization, config] : std::vector<std::pair<std::string, std::string>>{
           {"base", "omniglot_5w1s"}, {"overlays/local", "demo"}, {"overlays/mpi", "omniglot_5w1s"}}) {
    const std::vector<Value>& objects = Objects(kustomization);
    const std::vector<const Value*> maps = FindKind(objects, "ConfigMap");
    ASSERT_EQ(maps.size(), 1u);
    const std::string deployed = FieldString(Get(*maps[0], "data"), "experiment.textproto");
    const std::string original = ReadWholeFile(SourcePath("configs/" + config + ".textproto"));
    const std::string expected =
        absl::StrReplaceAll(original, {{"data_dir: \"../shared/data/omniglot\"  # the official zips; see docs/data.md",
                                        "data_dir: \"/data/omniglot\"  # the dataset volume (docs/kubernetes.md)"}});
    ASSERT_NE(expected, original) << "configs/" << config << ".textproto: its data_dir line changed";
    EXPECT_EQ(deployed, expected) << kustomization << " vs configs/" << config << ".textproto";
    // Every pod that reads the config mounts the dataset where it points.
    for (const auto& [where, pod] : PodTemplates(objects)) {
      bool mounts_dataset = false;
      for (const Value* container : GetList(*pod, "spec.containers"))
        for (const Value* mount : GetList(*container, "volumeMounts"))
          mounts_dataset |= GetString(*mount, "mountPath") == "/data/omniglot";
      EXPECT_TRUE(mounts_dataset) << kustomization << " " << where;
    }
  }
}

TEST_F(DeployManifestTest, DockerfileBuildsWithTheProjectScriptsAndRunsUnprivileged) {
  const std::vector<DockerStage> stages = ProjectDockerfile();
  ASSERT_EQ(stages.size(), 3u);
  EXPECT_EQ(stages[0].image, "debian:bookworm");
  EXPECT_EQ(stages[0].name, "runtime-base");
  EXPECT_EQ(stages[1].image, "runtime-base");
  EXPECT_EQ(stages[1].name, "build");
  EXPECT_EQ(stages[2].image, "runtime-base");
  const std::string build = absl::StrJoin(stages[1].instructions, "\n");
  EXPECT_TRUE(absl::StrContains(build, "bash scripts/install_deps.sh")) << build;
  // The binary alone, not the tests and benchmarks.
  EXPECT_TRUE(absl::StrContains(build, "bash scripts/build.sh reptile")) << build;
  // scripts/build.sh builds into build/, where the runtime stage takes the
  // binary from.
  EXPECT_TRUE(absl::StrContains(ReadWholeFile(SourcePath("scripts/build.sh")), "-B build"));
  EXPECT_TRUE(absl::StrContains(build, "WORKDIR /src")) << build;
  // The build stage skips the tools only the tests use.
  EXPECT_TRUE(absl::StrContains(build, "REPTILE_DEPS=build"));
  EXPECT_TRUE(absl::StrContains(ReadWholeFile(SourcePath("scripts/install_deps.sh")), "REPTILE_DEPS"));
  // It lists runtime-base's files before it installs anything, and collects
  // for the runtime stage the libraries the binary loads beyond them.
  const size_t listed = build.find("> /runtime-base.files"), installed = build.find("install_deps.sh");
  EXPECT_TRUE(listed != std::string::npos && listed < installed) << build;
  EXPECT_TRUE(absl::StrContains(build, "deploy/docker/runtime_libraries.sh build/reptile /runtime-base.files /runtime"))
      << build;

  // Every file copied from the build context exists; from the build stage,
  // only the binary and the collected libraries.
  for (const DockerStage& stage : stages) {
    for (const DockerCopy& copy : DockerCopies(stage)) {
      for (const std::string& source : copy.sources) {
        if (copy.from.empty()) {
          EXPECT_TRUE(source == "." || std::filesystem::exists(SourcePath(source))) << source;
        } else {
          EXPECT_EQ(copy.from, "build");
          EXPECT_TRUE(source == "/src/build/reptile" || source == "/runtime/") << source;
        }
      }
    }
  }
  const std::map<std::string, std::string> files = ImageFilesOnThisMachine();
  for (const std::string installed : {"/usr/local/bin/reptile", "/usr/local/bin/reptile-health",
                                      "/etc/reptile/sshd_config", "/etc/ssh/ssh_config.d/reptile.conf"}) {
    ASSERT_EQ(files.count(installed), 1u) << installed;
    EXPECT_TRUE(std::filesystem::exists(files.at(installed))) << files.at(installed);
  }
  EXPECT_TRUE(access(SourcePath("deploy/docker/reptile-health").c_str(), X_OK) == 0);

  // No dataset, run, checkpoint or build tree goes into the image: the build
  // context leaves them out (.dockerignore at its root, which the legacy
  // builder reads as well as BuildKit), and nothing copies them.
  const std::string ignore = ReadWholeFile(SourcePath(".dockerignore"));
  for (const std::string excluded : {"build", "runs", ".git", "models"})
    EXPECT_TRUE(absl::StrContains(ignore, "\n" + excluded + "\n")) << excluded;
  const std::string dockerfile = ReadWholeFile(SourcePath("deploy/docker/Dockerfile"));
  EXPECT_FALSE(absl::StrContains(dockerfile, "shared/data"));
  EXPECT_FALSE(absl::StrContains(dockerfile, ".zip"));
  EXPECT_FALSE(absl::StrContains(dockerfile, "VOLUME"));
  EXPECT_TRUE(absl::StrContains(dockerfile, "mount them")) << "the Dockerfile should say datasets are mounted";
}

TEST_F(DeployManifestTest, DockerfileRuntimeStageHoldsWhatTheBinaryLoads) {
  const std::vector<DockerStage> stages = ProjectDockerfile();
  ASSERT_EQ(stages.size(), 3u);
  // runtime-base installs the pods' tools, each a Debian bookworm package.
  const std::vector<std::string> runtime = AptPackages(stages[0]);
  ASSERT_FALSE(runtime.empty());
  std::vector<std::string> show = {"/usr/bin/apt-cache", "show", "--no-all-versions"};
  show.insert(show.end(), runtime.begin(), runtime.end());
  const CommandResult shown = RunCommand(show, dir_ + "/apt_cache_show");
  for (const std::string& package : runtime)
    EXPECT_TRUE(absl::StrContains(shown.out, "Package: " + package + "\n"))
        << package << " is not a Debian package here (apt-cache show): " << shown.err;
  for (const std::string package : {"openmpi-bin", "openssh-server", "openssh-client", "curl", "ca-certificates"})
    EXPECT_TRUE(absl::c_linear_search(runtime, package)) << package;

  // The rest of what the binary loads comes from the build stage:
  // runtime_libraries.sh copies every library ldd resolves that the base
  // listing lacks, at the path ld.so finds it (/lib is /usr/lib), as a file.
  // Here with this machine's binary and libc alone in the listing.
  const CommandResult ldd = RunCommand({"/usr/bin/ldd", REPTILE_BINARY}, dir_ + "/ldd");
  ASSERT_EQ(ldd.exit_code, 0) << ldd.err;
  EXPECT_FALSE(absl::StrContains(ldd.out, "not found")) << ldd.out;
  std::vector<std::string> libraries;  // as ld.so finds them, /lib made /usr/lib
  for (absl::string_view line : absl::StrSplit(ldd.out, '\n', absl::SkipEmpty())) {
    const size_t arrow = line.find("=> /");
    if (arrow == std::string::npos) continue;
    std::string library(line.substr(arrow + 3, line.find(" (", arrow) - arrow - 3));
    if (absl::StartsWith(library, "/lib")) library = "/usr" + library;
    libraries.push_back(library);
  }
  EXPECT_GT(libraries.size(), 20u);
  const auto libc = absl::c_find_if(libraries, [](const std::string& l) { return absl::EndsWith(l, "/libc.so.6"); });
  ASSERT_NE(libc, libraries.end()) << ldd.out;
  std::ofstream(dir_ + "/base.files") << "/usr/lib/x86_64-linux-gnu/something-else.so\n" << *libc << "\n";
  const std::string out = dir_ + "/runtime";
  const CommandResult copied = RunCommand(
      {"/bin/sh", SourcePath("deploy/docker/runtime_libraries.sh"), REPTILE_BINARY, dir_ + "/base.files", out},
      dir_ + "/runtime_libraries", {}, 300);
  ASSERT_EQ(copied.exit_code, 0) << copied.out << copied.err;
  for (const std::string& library : libraries) {
    const std::filesystem::path path = out + library;
    if (library == *libc) {
      EXPECT_FALSE(std::filesystem::exists(path)) << library << " is in the base listing";
      continue;
    }
    ASSERT_TRUE(std::filesystem::is_regular_file(std::filesystem::symlink_status(path))) << library;
    EXPECT_EQ(std::filesystem::file_size(path), std::filesystem::file_size(library)) << library;
  }
  EXPECT_TRUE(absl::StrContains(copied.out, absl::StrCat(libraries.size() - 1, " libraries"))) << copied.out;
}

}  // namespace
}  // namespace reptile::testing
