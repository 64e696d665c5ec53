#include "cli/commands.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "analysis/adaptation_analysis.h"
#include "analysis/run_metrics.h"
#include "analysis/training_curves.h"
#include "coordinator/atomic_file.h"
#include "coordinator/checkpoint.h"
#include "coordinator/round_engine.h"
#include "coordinator/run_directory.h"
#include "core/config.h"
#include "core/data/image_files.h"
#include "core/data/loaders.h"
#include "core/models/export.h"
#include "core/models/models.h"
#include "core/status_macros.h"
#include "core/tasks/task_source.h"
#include "cli/signals.h"
#include "cli/worker_processes.h"
#include "core/process_setup.h"
#include "monitoring/coordinator_metrics.h"
#include "monitoring/metrics_server.h"
#include "monitoring/worker_metrics.h"
#include "transport/grpc/grpc_transport.h"
#include "transport/grpc/grpc_worker.h"
#include "transport/local/local_transport.h"
#include "transport/mpi/mpi_transport.h"
#include "transport/shared_memory/shared_memory_transport.h"
#include "transport/shared_memory/shared_memory_worker.h"

namespace reptile {
namespace {

void Log(const std::string& line) { std::cerr << line << std::endl; }

// The config of a `train` or `coordinator` run: the run directory's own when
// resuming without --config, else the --config file with its overrides.
absl::StatusOr<ExperimentConfig> TrainConfig(const CliOptions& options, const RunDirectory& dir) {
  if (options.config_path.empty()) {
    if (!dir.has_checkpoint()) return absl::InvalidArgumentError("needs --config (or a run directory to resume)");
    ASSIGN_OR_RETURN(TrainingState state, ReadCheckpoint(dir.checkpoint_path()));
    ExperimentConfig config = state.config;
    if (config.model().arch() == TORCHSCRIPT) config.mutable_model()->set_torchscript_file(dir.model_path());
    for (const std::string& o : options.overrides) RETURN_IF_ERROR(ApplyOverride(o, &config));
    RETURN_IF_ERROR(ValidateConfig(config));
    return config;
  }
  return LoadConfig(options.config_path, options.overrides);
}

// The checkpoint --checkpoint or --run_dir names. A TORCHSCRIPT run's model
// is the model.pt beside it, wherever the run directory has moved since.
absl::StatusOr<TrainingState> CheckpointFromOptions(const CliOptions& options) {
  std::string path = options.checkpoint;
  if (path.empty() && !options.run_dir.empty()) path = options.run_dir + "/checkpoint.bin";
  if (path.empty()) return absl::InvalidArgumentError("give --checkpoint FILE or --run_dir DIR");
  ASSIGN_OR_RETURN(TrainingState state, ReadCheckpoint(path));
  const std::filesystem::path beside = std::filesystem::path(path).parent_path() / "model.pt";
  if (state.config.model().arch() == TORCHSCRIPT && std::filesystem::exists(beside))
    state.config.mutable_model()->set_torchscript_file(std::filesystem::absolute(beside).lexically_normal().string());
  return state;
}

// --format, or by default the run's TorchScript module for a TORCHSCRIPT
// model and a state dict for a built-in one.
absl::StatusOr<ExportFormat> ExportFormatOf(const CliOptions& options, const ExperimentConfig& config) {
  if (!options.format.empty()) return ParseExportFormat(options.format);
  return config.model().arch() == TORCHSCRIPT ? ExportFormat::kTorchScript : ExportFormat::kStateDict;
}

// What a training run is made of before its transport exists.
struct RunSetup {
  std::unique_ptr<RunDirectory> dir;
  ExperimentConfig config;
  std::shared_ptr<const TaskSource> tasks;
};

absl::StatusOr<RunSetup> SetUpRun(const CliOptions& options) {
  if (options.run_dir.empty()) return absl::InvalidArgumentError("needs --run_dir");
  RunSetup setup;
  ASSIGN_OR_RETURN(setup.dir, RunDirectory::Open(options.run_dir));
  ASSIGN_OR_RETURN(setup.config, TrainConfig(options, *setup.dir));
  if (options.workers > 0) setup.config.mutable_runtime()->set_workers(options.workers);
  Log(absl::StrCat("config ", ConfigSummary(setup.config)));
  ASSIGN_OR_RETURN(setup.tasks, TaskSource::Create(setup.config.task()));
  RecordImageChannels(*setup.tasks, &setup.config);
  RETURN_IF_ERROR(setup.dir->KeepModel(&setup.config));
  if (setup.tasks->memory_bytes() > 0)
    Log(absl::StrFormat("dataset: %d meta-training%s and %d meta-test classes, %.1f MB %s",
                        setup.tasks->num_classes(false),
                        setup.tasks->num_validation_classes() > 0
                            ? absl::StrCat(", ", setup.tasks->num_validation_classes(), " validation")
                            : "",
                        setup.tasks->num_classes(true), setup.tasks->memory_bytes() / 1e6,
                        setup.tasks->images_shared() ? "in a cache file this machine's processes share"
                                                     : "in memory"));
  return setup;
}

// Trains (or resumes) the run on `transport` until it is done, stopped by
// SIGINT/SIGTERM (checkpoint, then OK) or --stop_at_round. True if the run
// is complete, final evaluation included.
// `live_stats`: the transport's Stats() is thread-safe, so /metrics may read
// it at each scrape.
absl::StatusOr<bool> TrainOn(const CliOptions& options, const RunSetup& setup, Transport* transport,
                             bool live_stats = false) {
  RoundEngine::Options engine_options;
  engine_options.run_dir = setup.dir.get();
  engine_options.log = Log;
  // Prometheus /metrics, if asked for: the flag, else the config's runtime section.
  const std::string metrics_listen =
      !options.metrics_listen.empty() ? options.metrics_listen : setup.config.runtime().metrics_listen();
  std::shared_ptr<CoordinatorMetrics> metrics;
  std::unique_ptr<MetricsServer> metrics_server;
  if (!metrics_listen.empty()) {
    metrics = std::make_shared<CoordinatorMetrics>();
    if (live_stats) metrics->SetLiveTransportStats([transport] { return transport->Stats(); });
    ASSIGN_OR_RETURN(metrics_server, MetricsServer::Start(metrics_listen));
    metrics_server->Register(metrics);
    engine_options.observer = metrics.get();
    Log(absl::StrCat("metrics on http://", metrics_server->address(), "/metrics"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<RoundEngine> engine,
                   RoundEngine::Create(setup.config, *setup.tasks, transport, engine_options));
  if (engine->round() > 0) Log(absl::StrCat("resuming ", options.run_dir, " at round ", engine->round()));
  if (metrics != nullptr) metrics->SetRound(engine->round(), setup.config.outer().rounds());
  SetStopHandler([&engine] {
    Log("stopping: checkpointing the last finished round");
    engine->RequestStop();
  });
  absl::Status status = engine->Run(options.stop_at_round);
  SetStopHandler(nullptr);  // waits for a handler in progress: the engine outlives it
  RETURN_IF_ERROR(status);
  std::cout << absl::StrFormat("round %d  parameters sha256 %s  checkpoint %s\n", engine->round(),
                               engine->Fingerprint(), setup.dir->checkpoint_path());
  return engine->training_state().finished;
}

std::string RandomToken() {
  std::random_device device;
  std::string token;
  for (int i = 0; i < 4; ++i) absl::StrAppendFormat(&token, "%08x", device());
  return token;
}

// A fresh folder that only this user may enter, removed with what it holds
// when the object goes: in /dev/shm where it can be written (it holds the
// shared folder's files, which then never touch a disk), else under $TMPDIR
// (or /tmp). Named reptile-<pid>-XXXXXX and holding a file `owner` that
// this process keeps locked (flock), so that the folders of processes that
// were killed before they could remove theirs are found and removed by the
// next one: this user's only, and only once no process holds the lock, which
// holds across pid namespaces that share the folder, where pids do not.
class PrivateFolder {
 public:
  static absl::StatusOr<PrivateFolder> Create() {
    const char* tmp = std::getenv("TMPDIR");
    const std::string base = access("/dev/shm", W_OK | X_OK) == 0 ? "/dev/shm"
                             : tmp != nullptr && *tmp != '\0'     ? tmp
                                                                   : "/tmp";
    RemoveOrphans(base);
    std::string pattern = absl::StrCat(base, "/reptile-", getpid(), "-XXXXXX");
    if (mkdtemp(pattern.data()) == nullptr)  // mode 0700
      return absl::InternalError(absl::StrCat("cannot make a folder ", pattern, ": ", std::strerror(errno)));
    PrivateFolder folder(pattern);
    const std::string owner = pattern + "/owner";
    folder.owner_ = open(owner.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (folder.owner_ < 0 || flock(folder.owner_, LOCK_EX | LOCK_NB) != 0)
      return absl::InternalError(absl::StrCat("cannot lock ", owner, ": ", std::strerror(errno)));
    return folder;
  }
  PrivateFolder(PrivateFolder&& other) noexcept
      : path_(std::exchange(other.path_, "")), owner_(std::exchange(other.owner_, -1)) {}
  PrivateFolder& operator=(PrivateFolder&&) = delete;
  ~PrivateFolder() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
    if (owner_ >= 0) close(owner_);
  }
  const std::string& path() const { return path_; }

 private:
  explicit PrivateFolder(std::string path) : path_(std::move(path)) {}

  // Whether the folder `path`, named for process `pid`, is left over: its
  // owner lock is free; a folder without one (being made, or by an older
  // version) is left over once `pid` is gone.
  static bool LeftOver(const std::string& path, int pid) {
    const int owner = open((path + "/owner").c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (owner < 0) return errno == ENOENT && kill(pid, 0) != 0 && errno == ESRCH;
    const bool free = flock(owner, LOCK_EX | LOCK_NB) == 0;
    close(owner);
    return free;
  }

  static void RemoveOrphans(const std::string& base) {
    std::error_code error;
    for (const auto& entry : std::filesystem::directory_iterator(base, error)) {
      const std::string name = entry.path().filename().string();
      std::vector<std::string> parts = absl::StrSplit(name, '-');
      int pid = 0;
      struct stat info;
      if (parts.size() != 3 || parts[0] != "reptile" || parts[2].size() != 6 || !absl::SimpleAtoi(parts[1], &pid) ||
          pid <= 0 || lstat(entry.path().c_str(), &info) != 0 || !S_ISDIR(info.st_mode) || info.st_uid != geteuid())
        continue;
      if (LeftOver(entry.path().string(), pid)) std::filesystem::remove_all(entry.path(), error);
    }
  }

  std::string path_;
  int owner_ = -1;  // the locked `owner` file, while this object lives
};

absl::StatusOr<SecurityOptions> SecurityFromOptions(const CliOptions& options) {
  SecurityOptions security;
  security.tls = TlsFiles{options.tls_cert, options.tls_key, options.tls_ca};
  security.server_name = options.tls_server_name;
  ASSIGN_OR_RETURN(security.token, LoadToken(options.token_file));
  return security;
}

// A figure as an SVG file, readable by all.
absl::Status WriteSvg(const std::string& path, const plot::Figure& figure) {
  const std::string svg = plot::RenderSvg(figure);
  return WriteFileAtomically(path, {svg}, 0666);
}

}  // namespace

absl::Status TrainCommand(const CliOptions& options) {
  SetStopHandler([] {});  // a stop while starting is held for TrainOn's handler
  ASSIGN_OR_RETURN(RunSetup setup, SetUpRun(options));
  const int workers = setup.config.runtime().workers();
  if (workers > TrainingItemsPerRound(setup.config))
    Log(absl::StrCat("WARNING: ", IdleWorkersWarning(workers, setup.config)));
  if (setup.config.runtime().local_workers() == THREADS) {
    ASSIGN_OR_RETURN(std::unique_ptr<LocalTransport> transport,
                     LocalTransport::Create(setup.config, setup.tasks, workers));
    return TrainOn(options, setup, transport.get()).status();
  }
  if (setup.config.runtime().local_workers() == PROCESSES) {
    // Worker processes coordinated through shared memory linked from a
    // folder only this user can enter; only this process's children count.
    ASSIGN_OR_RETURN(PrivateFolder folder, PrivateFolder::Create());
    ASSIGN_OR_RETURN(std::unique_ptr<SharedMemoryTransport> transport,
                     SharedMemoryTransport::Create(setup.config, folder.path(), Log));
    Log(absl::StrFormat("starting %d worker processes (shared memory in %s)", workers, folder.path()));
    SharedMemoryTransport* raw_transport = transport.get();
    ASSIGN_OR_RETURN(std::unique_ptr<WorkerProcesses> processes,
                     WorkerProcesses::Start(workers, {"--shared_memory", transport->board_path()}, {}, Log,
                                            [raw_transport](const std::string& why) { raw_transport->Interrupt(why); }));
    transport->TrustOnlyChildren([raw_processes = processes.get()](pid_t pid) { return raw_processes->OpenPidfd(pid); });
    absl::StatusOr<bool> finished = TrainOn(options, setup, transport.get(), /*live_stats=*/true);
    processes->Finish();
    transport->Finish();
    return finished.status();
  }
  // Worker processes on a Unix domain socket in a folder only this user
  // can enter (cheaper than TCP on loopback), admitted by a token only they
  // are given. The coordinator also serves 127.0.0.1, as `reptile
  // coordinator` does, for a worker started by hand.
  ConfigureProcessForServing();
  ASSIGN_OR_RETURN(PrivateFolder folder, PrivateFolder::Create());
  GrpcTransport::Options transport_options;
  transport_options.token = RandomToken();
  transport_options.unix_socket = folder.path() + "/coordinator.sock";
  transport_options.shared_folder = folder.path();
  transport_options.log = Log;
  ASSIGN_OR_RETURN(std::unique_ptr<GrpcTransport> transport,
                   GrpcTransport::Create(setup.config, transport_options));
  Log(absl::StrFormat("starting %d worker processes (coordinator on unix:%s and 127.0.0.1:%d)", workers,
                      transport_options.unix_socket, transport->port()));
  GrpcTransport* raw_transport = transport.get();
  ASSIGN_OR_RETURN(std::unique_ptr<WorkerProcesses> processes,
                   WorkerProcesses::Start(workers, {"--coordinator", absl::StrCat("unix:", transport_options.unix_socket)},
                                          {absl::StrCat("REPTILE_TOKEN=", transport_options.token)}, Log,
                                          [raw_transport](const std::string& why) { raw_transport->Interrupt(why); }));
  absl::StatusOr<bool> finished = TrainOn(options, setup, transport.get(), /*live_stats=*/true);
  processes->Finish();
  transport->Finish(absl::Seconds(3));  // the worker processes go either way
  return finished.status();
}

absl::Status CoordinatorCommand(const CliOptions& options) {
  SetStopHandler([] {});  // a stop while starting is held for TrainOn's handler
  ConfigureProcessForServing();
  ASSIGN_OR_RETURN(SecurityOptions security, SecurityFromOptions(options));  // before loading a dataset
  ASSIGN_OR_RETURN(RunSetup setup, SetUpRun(options));
  GrpcTransport::Options transport_options;
  transport_options.listen_address = options.listen;
  transport_options.tls = security.tls;
  transport_options.token = security.token;
  transport_options.insecure = options.insecure_listen;
  transport_options.log = Log;
  ASSIGN_OR_RETURN(std::unique_ptr<GrpcTransport> transport,
                   GrpcTransport::Create(setup.config, transport_options));
  Log(absl::StrFormat("coordinator listening on port %d (%s%s)", transport->port(),
                      security.tls.enabled() ? (security.tls.ca.empty() ? "TLS" : "mutual TLS") : "plain text",
                      security.token.empty() ? ", no token" : ", bearer token"));
  if (!options.port_file.empty()) {
    const std::string tmp = options.port_file + ".tmp";
    std::ofstream(tmp) << transport->port() << "\n";
    std::filesystem::rename(tmp, options.port_file);
  }
  ASSIGN_OR_RETURN(bool finished, TrainOn(options, setup, transport.get(), /*live_stats=*/true));
  // Workers of a run that was only stopped keep waiting for the coordinator
  // to come back; those of a finished run are told to leave.
  if (finished) transport->Finish(absl::Seconds(3));
  return absl::OkStatus();
}

absl::Status MpiCommand(const CliOptions& options) {
  MpiJob job;
  if (job.rank() == 0) {
    const absl::Status status = [&]() -> absl::Status {
      absl::StatusOr<RunSetup> setup = SetUpRun(options);
      absl::StatusOr<ExperimentConfig> shared =
          ShareConfigOverMpi(setup.ok() ? std::optional<ExperimentConfig>(setup->config) : std::nullopt);
      RETURN_IF_ERROR(setup.status());
      RETURN_IF_ERROR(shared.status());
      Log(absl::StrFormat("MPI: %d ranks; rank 0 runs the round engine%s", job.size(),
                          setup->config.runtime().mpi_rank0_works() || job.size() == 1 ? " and works" : ""));
      ASSIGN_OR_RETURN(std::unique_ptr<MpiTransport> transport, MpiTransport::Create(setup->config, setup->tasks));
      return TrainOn(options, *setup, transport.get()).status();
    }();
    if (job.stalled()) {
      // A rank did not answer in time (the message says which and why). The
      // other ranks may wait for rank 0 forever: mpirun kills them all.
      if (!status.ok()) std::cerr << "reptile mpi: error: " << status.message() << std::endl;
      job.Abort(1);
    }
    return status;
  }
  // mpirun passes SIGTERM to every rank. A worker rank finishes its share of
  // the batch, so that rank 0 can complete the round, checkpoint and end the job.
  SetStopHandler([] {});
  absl::StatusOr<ExperimentConfig> config = ShareConfigOverMpi(std::nullopt);
  if (absl::IsCancelled(config.status())) return absl::OkStatus();  // rank 0 says why
  absl::StatusOr<std::shared_ptr<const TaskSource>> tasks =
      config.ok() ? TaskSource::Create(config->task()) : config.status();
  absl::Status status = tasks.ok() ? RunMpiWorker(*config, *tasks) : tasks.status();
  if (!status.ok()) {
    // Rank 0 would wait for this rank's results forever: end the job.
    std::cerr << "reptile mpi: rank " << job.rank() << ": error: " << status.message() << std::endl;
    job.Abort(1);
  }
  return absl::OkStatus();
}

absl::Status WorkerCommand(const CliOptions& options) {
  if (!options.shared_memory.empty()) {
    if (!options.coordinator.empty()) return absl::InvalidArgumentError("give --coordinator or --shared_memory, not both");
    absl::Notification stop;
    SetStopHandler([&stop] {
      if (!stop.HasBeenNotified()) stop.Notify();
    });
    absl::Status status = RunSharedMemoryWorker(options.shared_memory, &stop);
    SetStopHandler([] {});
    return status;
  }
  if (options.coordinator.empty()) return absl::InvalidArgumentError("worker needs --coordinator HOST:PORT");
  GrpcWorker::Options worker_options;
  worker_options.coordinator = options.coordinator;
  ASSIGN_OR_RETURN(worker_options.security, SecurityFromOptions(options));
  if (!options.config_path.empty()) {
    ASSIGN_OR_RETURN(worker_options.config, LoadConfig(options.config_path, options.overrides));
  }
  worker_options.data_dir = options.data_dir;
  if (options.learners < 1 || options.learners > 1024)
    return absl::InvalidArgumentError(absl::StrCat("--learners must be 1 to 1024, not ", options.learners));
  worker_options.learners = options.learners;
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  worker_options.name = absl::StrCat(host, ":", getpid());
  worker_options.log = [name = worker_options.name](const std::string& line) { Log(absl::StrCat("worker ", name, ": ", line)); };
  GrpcWorker worker(worker_options);
  std::unique_ptr<MetricsServer> metrics_server;  // goes before `worker`
  std::shared_ptr<WorkerMetrics> metrics = std::make_shared<WorkerMetrics>([&worker] { return worker.stats(); });
  if (!options.metrics_listen.empty()) {
    ASSIGN_OR_RETURN(metrics_server, MetricsServer::Start(options.metrics_listen));
    metrics_server->Register(metrics);
    worker_options.log(absl::StrCat("metrics on http://", metrics_server->address(), "/metrics"));
  }
  SetStopHandler([&worker] { worker.Stop(); });
  absl::Status status = worker.Run();
  // A late SIGTERM while exiting changes nothing; a Stop() in progress
  // returns before `worker` goes.
  SetStopHandler([] {});
  return status;
}

absl::Status EvalCommand(const CliOptions& options) {
  ASSIGN_OR_RETURN(TrainingState state, CheckpointFromOptions(options));
  ExperimentConfig config = state.config;
  for (const std::string& o : options.overrides) RETURN_IF_ERROR(ApplyOverride(o, &config));
  RETURN_IF_ERROR(ValidateConfig(config));
  state.config = config;
  const int episodes = options.episodes > 0 ? options.episodes : config.eval().final_episodes();
  if (episodes <= 0) return absl::InvalidArgumentError("give --episodes N (eval.final_episodes is 0)");
  ASSIGN_OR_RETURN(std::shared_ptr<const TaskSource> tasks, TaskSource::Create(config.task()));
  const int workers = options.workers > 0 ? options.workers : config.runtime().workers();
  ASSIGN_OR_RETURN(std::unique_ptr<LocalTransport> transport, LocalTransport::Create(config, tasks, workers));
  ASSIGN_OR_RETURN(std::unique_ptr<RoundEngine> engine,
                   RoundEngine::Restore(std::move(state), *tasks, transport.get(), {}));
  ASSIGN_OR_RETURN(EvaluationSummary summary, engine->Evaluate(episodes));
  std::cout << absl::StrFormat("round %d: %s\n", engine->round(),
                               FormatEvaluation(summary, config.task().family() != SINE));
  return absl::OkStatus();
}

absl::Status AdaptCommand(const CliOptions& options) {
  ASSIGN_OR_RETURN(TrainingState state, CheckpointFromOptions(options));
  const ExperimentConfig& config = state.config;
  const TaskConfig& task_config = config.task();
  if (task_config.family() == SINE) return absl::InvalidArgumentError("adapt works on image classifiers, not sine");
  if (options.support_dir.empty() || options.query_dir.empty())
    return absl::InvalidArgumentError("adapt needs --support_dir (one folder of images per label) and --query_dir");
  const int channels = InputChannels(task_config);
  const int size = task_config.image_size();
  ASSIGN_OR_RETURN(ImageDataset support, LoadImageFolder(options.support_dir, channels, size));
  if (support.num_classes() < 1 || support.num_classes() > task_config.ways())
    return absl::InvalidArgumentError(absl::StrCat(options.support_dir, " has ", support.num_classes(),
                                                   " label folders; this model tells apart up to ",
                                                   task_config.ways()));
  TaskExamples task;
  std::vector<torch::Tensor> xs, ys;
  for (int c = 0; c < support.num_classes(); ++c) {
    for (int i = 0; i < support.num_examples(c); ++i) {
      torch::Tensor x = torch::empty({channels, size, size});
      support.CopyExample(c, i, 0, x.data_ptr<float>());
      xs.push_back(x);
      ys.push_back(torch::tensor(int64_t{c}));
    }
  }
  task.support_x = torch::stack(xs);
  task.support_y = torch::stack(ys);
  std::vector<std::string> query_files;
  for (const auto& entry : std::filesystem::directory_iterator(options.query_dir)) {
    std::string extension = entry.path().extension().string();
    for (char& c : extension) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (extension == ".png" || extension == ".jpg" || extension == ".jpeg") query_files.push_back(entry.path().string());
  }
  std::sort(query_files.begin(), query_files.end());
  if (query_files.empty())
    return absl::InvalidArgumentError(absl::StrCat("no .png or .jpg files in ", options.query_dir));
  std::vector<torch::Tensor> queries;
  for (const std::string& file : query_files) {
    ASSIGN_OR_RETURN(DecodedImage image, ReadImageFile(file, channels));
    DecodedImage resized = ResizeArea(image, size, size);
    torch::Tensor x = torch::from_blob(resized.pixels.data(), {channels, size, size}, torch::kUInt8)
                          .to(torch::kFloat32)
                          .div_(255.0);
    queries.push_back(x);
  }
  task.query_x = torch::stack(queries);
  NormalizeImages(task_config, &task.support_x);
  NormalizeImages(task_config, &task.query_x);
  ASSIGN_OR_RETURN(std::unique_ptr<Learner> learner, Learner::Create(config, /*tasks=*/nullptr));
  ASSIGN_OR_RETURN(std::vector<int64_t> labels, learner->AdaptAndPredict(state.meta, task));
  for (size_t q = 0; q < query_files.size(); ++q)
    std::cout << std::filesystem::path(query_files[q]).filename().string() << '\t'
              << support.class_name(static_cast<int>(labels[q])) << '\n';
  if (!options.out.empty()) {
    ASSIGN_OR_RETURN(ExportFormat format, ExportFormatOf(options, config));
    RETURN_IF_ERROR(ExportModel(config, learner->layout(), learner->parameters(), format, options.out));
    Log(absl::StrCat("wrote the adapted model to ", options.out));
  }
  return absl::OkStatus();
}

absl::Status InspectCommand(const CliOptions& options) {
  ASSIGN_OR_RETURN(TrainingState state, CheckpointFromOptions(options));
  std::cout << absl::StrFormat("round %d of %d\nconfig %s\nparameters %d in %d tensors\nsha256 %s\n", state.round,
                               state.config.outer().rounds(), ConfigSummary(state.config),
                               state.meta.parameters.numel(), state.layout.size(),
                               ParameterFingerprint(state.meta.parameters));
  if (state.meta.adam_v.defined())
    std::cout << absl::StrFormat("adam state carried, step %d%s\n", state.meta.adam_step,
                                 state.meta.adam_m.defined() ? "" : " (v only: adam_beta1 is 0)");
  return absl::OkStatus();
}

absl::Status ExportCommand(const CliOptions& options) {
  if (options.out.empty()) return absl::InvalidArgumentError("export needs --out FILE");
  ASSIGN_OR_RETURN(TrainingState state, CheckpointFromOptions(options));
  ASSIGN_OR_RETURN(ExportFormat format, ExportFormatOf(options, state.config));
  RETURN_IF_ERROR(ExportModel(state.config, state.layout, state.meta.parameters, format, options.out));
  std::cout << absl::StrFormat("wrote %s (%s, round %d, parameters sha256 %s)\n", options.out,
                               format == ExportFormat::kTorchScript ? "TorchScript" : "state dict", state.round,
                               ParameterFingerprint(state.meta.parameters));
  return absl::OkStatus();
}

absl::Status PlotCommand(const CliOptions& options) {
  if (options.run_dirs.empty()) return absl::InvalidArgumentError("plot needs --run_dir DIR (one or more)");
  if (options.out.empty()) return absl::InvalidArgumentError("plot needs --out FILE.svg");
  if (!options.overrides.empty())
    return absl::InvalidArgumentError(absl::StrCat("plot takes no config overrides, got ", options.overrides[0]));
  std::vector<RunMetrics> runs;
  for (const std::string& dir : options.run_dirs) {
    ASSIGN_OR_RETURN(RunMetrics run, ReadRunMetrics(dir));
    runs.push_back(std::move(run));
  }
  RETURN_IF_ERROR(WriteSvg(options.out, TrainingCurvesFigure(runs)));
  for (const RunMetrics& run : runs)
    Log(absl::StrFormat("%s: %d round lines, %d evaluations%s", run.name, run.rounds.size(), run.evals.size(),
                        run.final_eval ? " and the final one" : ""));
  std::cout << "wrote " << options.out << "\n";
  return absl::OkStatus();
}

absl::Status AnalyzeCommand(const CliOptions& options) {
  if (options.run_dir.empty() && options.checkpoint.empty())
    return absl::InvalidArgumentError("analyze needs --run_dir DIR (or --checkpoint FILE)");
  ASSIGN_OR_RETURN(TrainingState state, CheckpointFromOptions(options));
  for (const std::string& o : options.overrides) RETURN_IF_ERROR(ApplyOverride(o, &state.config));
  RETURN_IF_ERROR(ValidateConfig(state.config));
  const ExperimentConfig& config = state.config;
  const int episodes = options.episodes > 0 ? options.episodes : config.eval().episodes();
  if (episodes <= 0) return absl::InvalidArgumentError("give --episodes N (eval.episodes is 0)");
  ASSIGN_OR_RETURN(std::shared_ptr<const TaskSource> tasks, TaskSource::Create(config.task()));
  const int threads = options.workers > 0 ? options.workers : config.runtime().workers();
  ASSIGN_OR_RETURN(AdaptationReport report, AnalyzeAdaptation(state, tasks, episodes, threads));
  std::cout << FormatAdaptationReport(report);
  const std::string source = options.run_dir.empty() ? options.checkpoint : options.run_dir;
  const std::string name = std::filesystem::path(source).lexically_normal().filename().string();
  const std::string out = options.out.empty() ? absl::StrCat("analysis_", name.empty() ? "run" : name, ".svg")
                                              : options.out;
  RETURN_IF_ERROR(WriteSvg(out, AdaptationFigure(report, name)));
  std::cout << "wrote " << out << "\n";
  return absl::OkStatus();
}

}  // namespace reptile
