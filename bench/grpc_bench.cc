// The gRPC runtime's throughput and overhead on this machine, beside the
// in-process thread transport and raw loopback TCP measured in the same run.
//
//   build/bench/grpc_bench [rounds_per_block] [blocks] [ingest_seconds] [ingest_filter]   (default: 100 3 4)
// (blocks 0 skips the round benchmark; ingest_filter keeps the ingest rows
// whose label, e.g. "Omniglot conv, CARRY: delta+v x1", contains it: for profiling.)
//
// Prints:
//  1. rounds/s and worker utilization of the real round engine on
//     configs/omniglot_5w1s.textproto with 1 and 2 `reptile worker` processes
//     (GrpcTransport in this process), and with 1 and 2 worker threads
//     (LocalTransport). All four run the same rounds (the sampler is
//     counter-based) and their blocks are interleaved, so the machine's
//     minute-to-minute drift hits them alike.
//  2. per round: the engine's time outside Transport::Run (sampling,
//     aggregation, outer update, metrics line), and the transport's own time:
//     Run's wall time minus the compute time of an ideal pull queue
//     (the items' compute_seconds list-scheduled in order on W workers).
//  3. coordinator ingest: synthetic workers (threads, each with its own
//     CoordinatorClient and connection) Join with the real fingerprints and
//     answer every TRAIN lease with a precomputed, well-formed result as fast
//     as they can, while Run() is fed batches of TRAIN items; deltas/s and
//     GB/s received.
//  4. raw loopback TCP bandwidth (one sender, one receiver, 1 MiB writes).
// Also: CPU per round of this process and of the worker processes, the cost
// of the pieces a result goes through (encode, decode, one unary RPC), and
// the load average, since other work on the machine skews every figure.
// With GRPC_BENCH_PROBE set, each synthetic worker also times a Heartbeat
// right after every SubmitResult (a diagnostic; it slows the ingest).
// Takes about 4 minutes. Asserts nothing.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/bench_support.h"
#include "coordinator/round_engine.h"
#include "coordinator/task_sampler.h"
#include "core/config.h"
#include "core/flat_parameters.h"
#include "core/models/models.h"
#include "core/process_setup.h"
#include "transport/grpc/coordinator_client.h"
#include "transport/grpc/grpc_transport.h"
#include "transport/grpc/security.h"
#include "transport/wire/tensor_stream.h"
#include "transport/local/local_transport.h"

namespace reptile {
namespace {

using Clock = BenchClock;

// ---- 1 and 2: the round engine on real workers -------------------------------

// `reptile worker` processes for one GrpcTransport; stderr to `log_path`.
class WorkerProcessGroup {
 public:
  WorkerProcessGroup(int count, int port, const std::string& log_path) {
    const std::string coordinator = absl::StrCat("127.0.0.1:", port);
    for (int i = 0; i < count; ++i) {
      std::vector<std::string> args = {REPTILE_BINARY, "worker", "--coordinator", coordinator};
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      const pid_t parent = getpid();
      const pid_t pid = fork();
      if (pid < 0) Die(absl::StrCat("fork: ", std::strerror(errno)));
      if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(1);
        const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (log >= 0) dup2(log, 2);
        execv(argv[0], argv.data());
        _exit(127);
      }
      pids_.push_back(pid);
    }
  }

  // User + system CPU seconds of the processes so far (all their threads).
  double CpuSeconds() const {
    double seconds = 0;
    for (pid_t pid : pids_) seconds += ProcessCpuSeconds(pid);
    return seconds;
  }

  // True while none has exited.
  bool AllAlive() {
    for (pid_t pid : pids_) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) return false;
    }
    return true;
  }

  // Waits up to 5 s for them to exit (after the transport's Finish), then
  // terminates the rest.
  ~WorkerProcessGroup() {
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    for (pid_t pid : pids_) {
      int status = 0;
      while (waitpid(pid, &status, WNOHANG) == 0) {
        if (Clock::now() > deadline) {
          kill(pid, SIGTERM);
          waitpid(pid, &status, 0);
          break;
        }
        usleep(20000);
      }
    }
  }

 private:
  std::vector<pid_t> pids_;
};

// One way of running the rounds: a transport, its timing wrapper, its engine.
struct Setup {
  std::string name;
  int workers = 0;
  std::unique_ptr<Transport> transport;  // LocalTransport or GrpcTransport
  std::unique_ptr<WorkerProcessGroup> processes;
  std::unique_ptr<TimedTransport> timed;
  std::unique_ptr<RoundEngine> engine;

  struct Block {
    double rounds_per_s, utilization, outside_ms, transport_ms, compute_ms_per_task, run_ms;
    double compute_ms_per_round, self_cpu_ms, worker_cpu_ms;  // CPU per round: this process, worker processes
  };
  std::vector<Block> blocks;

  void RunBlock(int rounds) {
    const size_t first = timed->timings().size();
    const double self_cpu = ProcessCpuSeconds();
    const double worker_cpu = processes ? processes->CpuSeconds() : 0;
    const auto start = Clock::now();
    absl::Status status = engine->Run(engine->round() + rounds);
    const double wall = Seconds(start);
    const double self_cpu_used = ProcessCpuSeconds() - self_cpu;
    const double worker_cpu_used = processes ? processes->CpuSeconds() - worker_cpu : 0;
    if (!status.ok()) Die(absl::StrCat(name, ": ", status.ToString()));
    double run = 0, compute = 0, makespan = 0;
    int tasks = 0;
    const auto& t = timed->timings();
    for (size_t i = first; i < t.size(); ++i) {
      run += t[i].run_seconds;
      compute += t[i].compute_sum;
      makespan += t[i].compute_makespan;
      tasks += t[i].items;
    }
    const int n = static_cast<int>(t.size() - first);
    Block b;
    b.rounds_per_s = n / wall;
    b.utilization = compute / (workers * wall);
    b.outside_ms = 1e3 * (wall - run) / n;
    b.transport_ms = 1e3 * (run - makespan) / n;
    b.compute_ms_per_task = 1e3 * compute / tasks;
    b.run_ms = 1e3 * run / n;
    b.compute_ms_per_round = 1e3 * compute / n;
    b.self_cpu_ms = 1e3 * self_cpu_used / n;
    b.worker_cpu_ms = 1e3 * worker_cpu_used / n;
    blocks.push_back(b);
  }
};

std::unique_ptr<Setup> MakeLocalSetup(const ExperimentConfig& config, std::shared_ptr<const TaskSource> tasks,
                                      int workers) {
  auto setup = std::make_unique<Setup>();
  setup->name = absl::StrCat("threads, ", workers);
  setup->workers = workers;
  setup->transport = OrDie(LocalTransport::Create(config, tasks, workers), "local transport");
  return setup;
}

std::unique_ptr<Setup> MakeGrpcSetup(const ExperimentConfig& config, int workers, const std::string& token,
                                     const std::string& log_path) {
  auto setup = std::make_unique<Setup>();
  setup->name = absl::StrCat("gRPC processes, ", workers);
  setup->workers = workers;
  GrpcTransport::Options options;
  options.token = token;
  auto transport = OrDie(GrpcTransport::Create(config, options), "gRPC transport");
  setup->processes = std::make_unique<WorkerProcessGroup>(workers, transport->port(), log_path);
  setup->transport = std::move(transport);
  return setup;
}

void WaitForWorkers(Setup& setup) {
  const auto start = Clock::now();
  while (setup.transport->num_workers() < setup.workers) {
    if (setup.processes != nullptr && !setup.processes->AllAlive())
      Die(absl::StrCat(setup.name, ": a worker process exited; see its log"));
    if (Seconds(start) > 120) Die(absl::StrCat(setup.name, ": workers did not join within 120 s"));
    usleep(20000);
  }
}

// ---- 3. ingest ------------------------------------------------------------

struct IngestFigures {
  double deltas_per_s = 0, gb_per_s = 0, mb_per_result = 0, ms_per_result = 0;
  int64_t results = 0;
  PhaseClock::Snapshot phases;  // client-side ms per call
  double self_cpu_ms_per_result = 0;  // this process (server and clients) CPU per result
};

IngestFigures Ingest(const ExperimentConfig& config, const Precomputed& p, int clients, int batch, double seconds,
                     const std::string& token) {
  GrpcTransport::Options options;
  options.token = token;
  auto transport = OrDie(GrpcTransport::Create(config, options), "gRPC transport (ingest)");
  const std::string address = absl::StrCat("127.0.0.1:", transport->port());
  PhaseClock clock;
  std::vector<std::thread> threads;
  SimulatedWorkerOptions worker;
  worker.address = address;
  worker.token = token;
  worker.probe = std::getenv("GRPC_BENCH_PROBE") != nullptr;
  for (int i = 0; i < clients; ++i) threads.emplace_back(SimulatedWorker, std::cref(worker), std::cref(p), &clock);
  while (transport->num_workers() < clients) usleep(10000);

  MetaState state;
  state.parameters = torch::zeros({p.numel});
  if (p.carry.first) state.adam_m = torch::zeros({p.numel});
  if (p.carry.second) state.adam_v = torch::zeros({p.numel});
  TaskSampler sampler(config, 1000, 1000);
  std::vector<WorkItem> items;
  for (int round = 0; static_cast<int>(items.size()) < batch; ++round)
    for (WorkItem& item : sampler.TrainingItems(round))
      if (static_cast<int>(items.size()) < batch) items.push_back(std::move(item));

  // Ingest alone: results are decoded and checked, then dropped.
  const ResultSink drop = [](size_t, TaskResult) { return absl::OkStatus(); };
  if (absl::Status s = transport->Run(state, items, drop); !s.ok()) Die(absl::StrCat("ingest warm-up: ", s.ToString()));
  const int64_t bytes_before = transport->Stats().bytes_in;
  int64_t results = 0;
  const PhaseClock::Snapshot phases_before = clock.Take();
  const double cpu_before = ProcessCpuSeconds();
  const auto start = Clock::now();
  while (Seconds(start) < seconds) {
    if (absl::Status s = transport->Run(state, items, drop); !s.ok()) Die(absl::StrCat("ingest: ", s.ToString()));
    results += static_cast<int64_t>(items.size());
  }
  const double wall = Seconds(start);
  const double cpu = ProcessCpuSeconds() - cpu_before;
  const PhaseClock::Snapshot phases_after = clock.Take();
  const int64_t bytes = transport->Stats().bytes_in - bytes_before;
  transport->Finish(absl::Seconds(5));
  for (std::thread& t : threads) t.join();
  if (clock.probe_calls.load() > 0)
    std::printf("probe: Heartbeat right after SubmitResult %.3f ms mean over %lld calls\n",
                1e-6 * clock.probe_ns.load() / clock.probe_calls.load(), static_cast<long long>(clock.probe_calls.load()));
  IngestFigures f;
  f.results = results;
  f.deltas_per_s = results / wall;
  f.gb_per_s = bytes / wall / 1e9;
  f.mb_per_result = static_cast<double>(bytes) / results / 1e6;
  f.ms_per_result = 1e3 * wall / results;
  f.phases = PhaseClock::Between(phases_before, phases_after);
  f.self_cpu_ms_per_result = 1e3 * cpu / results;
  return f;
}

// ms per call of `f`, best of 5 runs of `reps` calls.
template <typename F>
double BestMs(int reps, F f) {
  double best = 1e30;
  for (int run = 0; run < 5; ++run) {
    const auto start = Clock::now();
    for (int i = 0; i < reps; ++i) f();
    best = std::min(best, 1e3 * Seconds(start) / reps);
  }
  return best;
}

int Main(int argc, char** argv) {
  ConfigureProcessForTraining();
  const int rounds_per_block = argc > 1 ? std::atoi(argv[1]) : 100;
  const int blocks = argc > 2 ? std::atoi(argv[2]) : 3;
  const double ingest_seconds = argc > 3 ? std::atof(argv[3]) : 4;
  const std::string token = OrDie(LoadToken(""), "REPTILE_TOKEN");
  const auto bench_start = Clock::now();

  const std::string source = REPTILE_SOURCE_DIR;
  ExperimentConfig omniglot = OrDie(LoadConfig(source + "/configs/omniglot_5w1s.textproto",
                                               {"eval.every_rounds=0", "eval.final_episodes=0",
                                                "task.data_dir=" + source + "/../shared/data/omniglot"}),
                                    "omniglot config");
  ExperimentConfig large = OrDie(LoadConfig(source + "/configs/sine.textproto", {"model.hidden_units=2048"}),
                                 "sine config");
  ExperimentConfig large_carry = OrDie(LoadConfig(source + "/configs/sine.textproto",
                                                  {"model.hidden_units=2048", "inner.optimizer=ADAM", "inner.adam_beta1=0.9",
                                                   "inner.adam_beta2=0.999", "inner.adam_epsilon=1e-8",
                                                   "inner.state_mode=CARRY"}),
                                       "sine config (ADAM with beta1 0.9, CARRY)");

  std::printf("grpc_bench  %s  (%ld cores online)\n", Now().c_str(), sysconf(_SC_NPROCESSORS_ONLN));
  std::printf("config      %s\n", ConfigSummary(omniglot).c_str());
  std::printf("token       %s\n", token.empty() ? "none" : "from $REPTILE_TOKEN");
  std::printf("load avg   %s at start (1, 5, 15 min; other work on this machine shows here)\n", LoadAverage().c_str());

  // ---- 4 first: it takes a second and anchors the ingest figures.
  std::vector<double> tcp;
  for (int i = 0; i < 3; ++i) tcp.push_back(LoopbackGbps(size_t{2} << 30, size_t{1} << 20));

  const Precomputed small = Precompute(omniglot);
  const Precomputed big = Precompute(large);
  const Precomputed big_carry = Precompute(large_carry);

  // Microbenchmarks of the pieces a round's bytes go through.
  MetaState omniglot_state;
  omniglot_state.parameters = torch::randn({small.numel});
  omniglot_state.adam_v = torch::randn({small.numel}).abs_();  // adam_beta1 0: no m
  const double encode_ms = BestMs(200, [&] {
    EncodeTensor(omniglot_state.parameters, DELTA_FP32);
    EncodeTensor(omniglot_state.adam_v, DELTA_FP32);
  });
  const double decode_small_ms = BestMs(200, [&] {
    for (const std::string& t : small.tensors) OrDie(DecodeTensor(t, DELTA_FP32, small.numel), "decode");
  });
  const double decode_big_ms = BestMs(5, [&] { OrDie(DecodeTensor(big.tensors[0], big.dtype, big.numel), "decode"); });
  const double heartbeat_us = HeartbeatMicros(omniglot, small, 2000, token);

  // ---- 1 and 2: the round engine, four ways, blocks interleaved.
  auto start = Clock::now();
  std::shared_ptr<const TaskSource> tasks = OrDie(TaskSource::Create(omniglot.task()), "dataset");
  const double load_seconds = Seconds(start);
  // What Learner::Run spends outside its compute_seconds (state checks and
  // task materialisation), on this process's own learner.
  double materialise_ms = 0, learner_compute_ms = 0;
  {
    std::unique_ptr<Learner> learner = OrDie(Learner::Create(omniglot, tasks), "learner");
    std::shared_ptr<MetaModel> model = OrDie(MakeModel(omniglot, omniglot.seed()), "model");
    FlatParameters flat(*model);
    MetaState state;
    state.parameters = flat.values().clone();
    state.adam_v = torch::zeros_like(state.parameters);  // adam_beta1 0: no m
    TaskSampler sampler(omniglot, tasks->num_classes(false), tasks->num_classes(true));
    int n = 0;
    for (int round = 0; round < 6; ++round)
      for (const WorkItem& item : sampler.TrainingItems(round)) {
        const auto t0 = Clock::now();
        TaskResult r = OrDie(learner->Run(state, item), "learner run");
        if (round == 0) continue;  // warm-up
        materialise_ms += 1e3 * (Seconds(t0) - r.compute_seconds);
        learner_compute_ms += 1e3 * r.compute_seconds;
        ++n;
      }
    materialise_ms /= n;
    learner_compute_ms /= n;
  }
  char log_path[64];
  std::snprintf(log_path, sizeof(log_path), "/tmp/grpc_bench_workers.%d.log", static_cast<int>(getpid()));

  std::vector<std::unique_ptr<Setup>> setups;  // none with blocks = 0 (e.g. to profile the ingest part alone)
  if (blocks > 0) {
    setups.push_back(MakeLocalSetup(omniglot, tasks, 1));
    setups.push_back(MakeLocalSetup(omniglot, tasks, 2));
    setups.push_back(MakeGrpcSetup(omniglot, 1, token, log_path));
    setups.push_back(MakeGrpcSetup(omniglot, 2, token, log_path));
  }
  start = Clock::now();
  for (auto& s : setups) WaitForWorkers(*s);
  const double join_seconds = Seconds(start);
  for (auto& s : setups) {
    s->timed = std::make_unique<TimedTransport>(s->transport.get(), s->workers);
    s->engine = OrDie(RoundEngine::Create(omniglot, *tasks, s->timed.get(), {}), "round engine");
    absl::Status warm = s->engine->Run(10);  // first FetchState, allocator and oneDNN warm-up
    if (!warm.ok()) Die(absl::StrCat(s->name, " warm-up: ", warm.ToString()));
  }
  for (int block = 0; block < blocks; ++block)
    for (auto& s : setups) s->RunBlock(rounds_per_block);
  int64_t grpc_bytes_in = 0, grpc_bytes_out = 0, grpc_redone = 0;
  for (auto& s : setups) {
    if (s->processes == nullptr) continue;
    const TransportStats stats = s->transport->Stats();
    grpc_bytes_in += stats.bytes_in;
    grpc_bytes_out += stats.bytes_out;
    grpc_redone += stats.tasks_redone;
  }
  // Parameters must agree bitwise across the four (same rounds, same seed).
  bool identical = true;
  for (auto& s : setups)
    identical = identical && s->engine->round() == setups[0]->engine->round() &&
                s->engine->Fingerprint() == setups[0]->engine->Fingerprint();
  struct SetupRow {
    std::string name;
    int workers;
    std::vector<Setup::Block> blocks;
  };
  std::vector<SetupRow> rows;
  for (auto& s : setups) rows.push_back({s->name, s->workers, s->blocks});
  for (auto& s : setups)
    if (auto* grpc = dynamic_cast<GrpcTransport*>(s->transport.get())) grpc->Finish(absl::Seconds(3));
  setups.clear();  // stops threads, waits for the worker processes

  // ---- 3: ingest.
  struct IngestRow {
    std::string what;
    int clients;
    IngestFigures f;
  };
  std::vector<IngestRow> ingest;
  // Optional 4th argument: run only the ingest rows whose label contains it.
  const std::string only = argc > 4 ? argv[4] : "";
  auto add = [&](const std::string& what, int clients, const ExperimentConfig& config, const Precomputed& p,
                 int batch) {
    const std::string label = absl::StrCat(what, " x", clients);
    if (only.empty() || label.find(only) != std::string::npos)
      ingest.push_back({what, clients, Ingest(config, p, clients, batch, ingest_seconds, token)});
  };
  for (int clients : {1, 2}) {
    add("Omniglot conv, CARRY: delta+v", clients, omniglot, small, 64);
    add("MLP 1-2048-2048-1, SGD: delta", clients, large, big, 16);
    add("MLP 1-2048-2048-1, CARRY: d+m+v", clients, large_carry, big_carry, 8);
  }

  // ---- print.
  std::printf("\n== 1+2. round engine on %s: %d blocks of %d rounds per setup, interleaved, after 10 warm-up rounds\n",
              omniglot.name().c_str(), blocks, rounds_per_block);
  std::printf("dataset load %.2f s here; gRPC worker processes all joined %.2f s after start (each loads it too)\n",
              load_seconds, join_seconds);
  std::printf("%-19s %8s %8s %7s %7s %9s %9s %9s %9s\n", "setup (workers)", "rounds/s", "rounds/s", "util", "util",
              "compute", "Run()", "outside", "transport");
  std::printf("%-19s %8s %8s %7s %7s %9s %9s %9s %9s\n", "", "best", "median", "best", "median", "ms/task",
              "ms/round", "ms/round", "ms/round");
  for (const SetupRow& row : rows) {
    std::vector<double> rate, util, compute, run, outside, transport;
    for (const Setup::Block& b : row.blocks) {
      rate.push_back(b.rounds_per_s);
      util.push_back(b.utilization);
      compute.push_back(b.compute_ms_per_task);
      run.push_back(b.run_ms);
      outside.push_back(b.outside_ms);
      transport.push_back(b.transport_ms);
    }
    const size_t best = std::max_element(rate.begin(), rate.end()) - rate.begin();
    std::printf("%-19s %8.2f %8.2f %6.1f%% %6.1f%% %9.2f %9.2f %9.2f %9.2f\n", row.name.c_str(), rate[best],
                Median(rate), 100 * util[best], 100 * Median(util), Median(compute), Median(run), Median(outside),
                Median(transport));
  }
  std::printf("per block (rounds/s):");
  for (const SetupRow& row : rows) {
    std::printf("  %s:", row.name.c_str());
    for (const Setup::Block& b : row.blocks) std::printf(" %.1f", b.rounds_per_s);
  }
  std::printf("\n");
  std::printf(
      "util = sum of the tasks' compute_seconds (Learner::Run, set by the worker: inner loop only, not task\n"
      "  materialisation) / (workers x block wall time). compute ms/task: median over blocks of the mean.\n"
      "  compute_seconds is wall-clock time, so on a busy machine it includes time the worker was preempted.\n"
      "Run(): wall time of Transport::Run per round. outside: block wall time minus Run() time, per round\n"
      "  (sampling, Aggregator checks and float64 sums, outer update, metrics line).\n"
      "transport: Run() minus the compute time an ideal pull queue would take (the round's compute_seconds\n"
      "  list-scheduled in item order on the workers), per round: for gRPC this is snapshot encoding, RPCs,\n"
      "  FetchState, task materialisation, result encode/stream/decode/checks and wake-ups.\n");
  std::printf("\nCPU per round (medians over blocks): compute = sum of compute_seconds; this process = coordinator\n"
              "(engine + gRPC server) for gRPC, engine + worker threads for threads; worker processes = all their threads\n");
  std::printf("%-19s %12s %14s %14s %16s\n", "setup (workers)", "compute ms", "this proc ms", "worker proc ms",
              "workers-compute");
  for (const SetupRow& row : rows) {
    std::vector<double> compute, self, worker;
    for (const Setup::Block& b : row.blocks) {
      compute.push_back(b.compute_ms_per_round);
      self.push_back(b.self_cpu_ms);
      worker.push_back(b.worker_cpu_ms);
    }
    const bool grpc = row.name.rfind("gRPC", 0) == 0;
    std::printf("%-19s %12.2f %14.2f %14s %16s\n", row.name.c_str(), Median(compute), Median(self),
                grpc ? absl::StrFormat("%.2f", Median(worker)).c_str() : "-",
                grpc ? absl::StrFormat("%.2f", Median(worker) - Median(compute)).c_str() : "-");
  }
  std::printf("(CPU from clock_gettime and /proc/PID/stat, 10 ms ticks; worker CPU below compute means the\n"
              " workers were preempted during compute_seconds by other load)\n");
  std::printf("parameters after all rounds bitwise identical across the 4 setups: %s\n", identical ? "yes" : "NO");
  std::printf("gRPC rounds moved %.1f MB in (results), %.1f MB out (state); %lld tasks redone\n", grpc_bytes_in / 1e6,
              grpc_bytes_out / 1e6, static_cast<long long>(grpc_redone));

  std::printf("\n== pieces of a gRPC round (Omniglot conv, %lld parameters, %.2f MB per fp32 tensor)\n",
              static_cast<long long>(small.numel), small.numel * 4 / 1e6);
  std::printf("snapshot encoding (2 x EncodeTensor: theta, v, in Run)     %8.3f ms per round\n", encode_ms);
  std::printf("result decode+checks (3 x DecodeTensor)          %8.3f ms per result\n", decode_small_ms);
  std::printf("DecodeTensor of a 17 MB fp32 delta               %8.3f ms (%.2f GB/s)\n", decode_big_ms,
              big.numel * 4 / decode_big_ms / 1e6);
  std::printf("unary RPC round trip (Heartbeat), median         %8.1f us\n", heartbeat_us);
  std::printf("Learner::Run outside compute_seconds (checks +   %8.3f ms per task (compute %.2f ms/task here)\n"
              "  task materialisation), this process\n", materialise_ms, learner_compute_ms);

  std::printf("\n== 3. coordinator ingest: synthetic workers (threads, own connections) answer TRAIN leases with\n"
              "precomputed results (GetWork -> FetchState once per batch -> SubmitResult), %.0f s each\n",
              ingest_seconds);
  std::printf("%-32s %3s %7s %9s %7s %9s %8s %8s %8s %8s\n", "result", "cli", "MB/res", "results/s", "GB/s",
              "wall ms", "GetWork", "Fetch", "Submit", "CPU ms");
  std::printf("%-32s %3s %7s %9s %7s %9s %8s %8s %8s %8s\n", "", "", "", "", "", "/result", "ms/call", "ms/call",
              "ms/call", "/result");
  for (const IngestRow& r : ingest)
    std::printf("%-32s %3d %7.2f %9.1f %7.3f %9.2f %8.3f %8.2f %8.2f %8.2f\n", r.what.c_str(), r.clients,
                r.f.mb_per_result, r.f.deltas_per_s, r.f.gb_per_s, r.f.ms_per_result, r.f.phases.get_work_ms,
                r.f.phases.fetch_ms, r.f.phases.submit_ms, r.f.self_cpu_ms_per_result);
  std::printf("GetWork/Fetch/Submit: client-side wall time per call (Submit: stream open to Finish); CPU ms/result:\n"
              "  this whole process (server and synthetic clients) per result. Fetch is once per batch per client.\n");

  // The round's transport time predicted from the synthetic client's calls:
  // per task GetWork + SubmitResult, per round and worker one FetchState.
  for (const IngestRow& r : ingest) {
    if (r.clients != 1 || r.what.rfind("Omniglot", 0) != 0) continue;
    const int tasks_per_round = omniglot.outer().meta_batch_size();
    const double predicted = tasks_per_round * (r.f.phases.get_work_ms + r.f.phases.submit_ms) + r.f.phases.fetch_ms;
    std::printf("=> one worker, %d tasks per round: %d x (GetWork %.2f + Submit %.2f) + FetchState %.2f = %.1f ms per "
                "round of gRPC time, predicted from the 1-client row\n",
                tasks_per_round, tasks_per_round, r.f.phases.get_work_ms, r.f.phases.submit_ms, r.f.phases.fetch_ms,
                predicted);
    for (const SetupRow& row : rows) {
      if (row.name != "gRPC processes, 1") continue;
      std::vector<double> transport;
      for (const Setup::Block& b : row.blocks) transport.push_back(b.transport_ms);
      std::printf("   measured transport time with 1 worker process: %.1f ms per round (table 1+2)\n",
                  Median(transport));
    }
  }

  std::printf("\n== 4. raw loopback TCP, 127.0.0.1, one sender and one receiver thread, 2 GiB in 1 MiB writes\n");
  std::sort(tcp.begin(), tcp.end());
  std::printf("best %.2f GB/s, median %.2f GB/s (3 runs)\n", tcp.back(), Median(tcp));
  std::printf("\nload avg %s at end; total bench time %.0f s; worker process logs in %s\n", LoadAverage().c_str(),
              Seconds(bench_start), log_path);
  return 0;
}

}  // namespace
}  // namespace reptile

int main(int argc, char** argv) { return reptile::Main(argc, argv); }
