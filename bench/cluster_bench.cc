// A coordinator feeding a cluster, by simulation: the real coordinator
// (GrpcTransport and RoundEngine, as `reptile coordinator` runs them) in this
// process, against many simulated workers in a child process. Each simulated
// worker is a real gRPC client on a connection of its own, speaking the
// protocol through CoordinatorClient (bench_support.h SimulatedWorker): it
// joins, leases a task, fetches the round's state, waits the compute time of
// one task in place of the learner, and submits a result of the real size
// (the Omniglot model's delta and Adam v, as configs/omniglot_5w1s carries).
//
//   build/bench/cluster_bench [--workers=16,64,256] [--learners=1] [--meta_batch=0] [--seconds=8]
//                             [--warmup_rounds=5] [--compute_ms=-1]
//
// --learners=L simulates the workers as nodes of L learners each (W/L nodes,
// as `reptile worker --learners L` runs): a node is leased up to L items per
// reply and sends one upload for them, the exact sum of their results. (A
// real node sums over all of a round's replies; with meta-batch = workers,
// the default, a round is one reply per node, so the two are the same.)
//
// --compute_ms < 0 measures it: the median wall time of Learner::Run on one
// Omniglot 5-way 1-shot training task, on this machine, in this run. Each case
// runs meta-batch = workers (or each --meta_batch on every worker count) and
// prints rounds/s against the ideal (⌈B/W⌉ compute times plus one unary round
// trip), efficiency, per-core efficiency beside B / (W·⌈B/W⌉), the coordinator's CPU per
// round (by thread) and per MB of results, ingest and egress in GB/s beside raw loopback TCP
// measured in the same run, and where the round's time goes: the engine
// outside Transport::Run, and the simulated workers' client-side time in
// FetchState and SubmitResult. Asserts nothing.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/bench_support.h"
#include "coordinator/round_engine.h"
#include "coordinator/task_sampler.h"
#include "core/flat_parameters.h"
#include "core/models/models.h"
#include "core/process_setup.h"
#include "transport/grpc/coordinator_client.h"
#include "transport/grpc/grpc_transport.h"
#include "worker/learner.h"

ABSL_FLAG(std::string, workers, "16,64,256", "simulated worker counts, one case each");
ABSL_FLAG(std::string, model, "omniglot",
          "omniglot: configs/omniglot_5w1s; 10m: the sine MLP widened to 10M parameters (1-3160-3160-1)");
ABSL_FLAG(int, learners, 1, "learners per simulated node; --workers counts learners");
ABSL_FLAG(std::string, meta_batch, "0", "meta-batch sizes, a case each per worker count; 0: as many tasks as workers");
ABSL_FLAG(double, seconds, 8, "measured seconds per case, after the warm-up rounds");
ABSL_FLAG(int, warmup_rounds, 5, "rounds per case before measuring");
ABSL_FLAG(double, compute_ms, -1, "simulated compute time per task; < 0: measure one Omniglot task here");
// Internal: the child process that runs the simulated workers.
ABSL_FLAG(std::string, simulate, "", "internal: coordinator address to run simulated workers against");
ABSL_FLAG(int, count, 0, "internal: simulated workers");
ABSL_FLAG(int, count_from_version, 0, "internal: time calls on state versions above this");

namespace reptile {
namespace {

struct Options {
  std::vector<int> workers;  // learners, in nodes of `learners`
  int learners = 1;
  std::vector<int> meta_batches;  // 0: the case's worker count
  double seconds = 8;
  int warmup_rounds = 5;
  double compute_ms = -1;
};

// ---- the child: simulated workers ---------------------------------------------

// Runs `count` simulated workers against `address` until the coordinator
// finishes, then prints one line of their client-side timings to stdout.
int SimulateWorkers(const std::string& address, int count, uint64_t count_from_version) {
  ConfigureProcessForTraining();  // as `reptile worker` runs
  const char* token_env = std::getenv("REPTILE_TOKEN");
  const std::string token = token_env != nullptr ? token_env : "";
  SecurityOptions security;
  security.token = token;
  std::unique_ptr<CoordinatorClient> client =
      OrDie(CoordinatorClient::Connect(address, security), "simulated workers: channel");
  // Like a worker started without --config: the run's config comes from the coordinator.
  const ExperimentConfig config = OrDie(client->GetRunConfig(), "simulated workers: GetRunConfig").config();
  const int learners = absl::GetFlag(FLAGS_learners);
  const Precomputed result = Precompute(config, learners);
  SimulatedWorkerOptions options;
  options.address = address;
  options.token = token;
  options.learners = learners;
  options.compute_seconds = absl::GetFlag(FLAGS_compute_ms) / 1e3;
  options.count_from_version = count_from_version;
  PhaseClock clock;
  std::vector<std::thread> threads;
  for (int i = 0; i < count; ++i)
    threads.emplace_back(SimulatedWorker, std::cref(options), std::cref(result), &clock);
  for (std::thread& t : threads) t.join();
  std::printf("%lld %lld %lld %lld %lld %lld %lld %lld\n", static_cast<long long>(clock.fetch_ns.load()),
              static_cast<long long>(clock.fetch_calls.load()), static_cast<long long>(clock.fetch_max_ns.load()),
              static_cast<long long>(clock.submit_ns.load()), static_cast<long long>(clock.submit_calls.load()),
              static_cast<long long>(clock.submit_max_ns.load()), static_cast<long long>(clock.stale.load()),
              static_cast<long long>(result.upload.size()));
  return 0;
}

// The child process, this binary again; its stdout is a pipe to us.
class SimulatedCluster {
 public:
  SimulatedCluster(int port, int count, int learners, double compute_ms, int count_from_version,
                   const std::string& token) {
    int fds[2];
    if (pipe(fds) != 0) Die(absl::StrCat("pipe: ", std::strerror(errno)));
    std::vector<std::string> args = {"/proc/self/exe",
                                     absl::StrCat("--simulate=127.0.0.1:", port),
                                     absl::StrCat("--count=", count),
                                     absl::StrCat("--learners=", learners),
                                     absl::StrCat("--compute_ms=", compute_ms),
                                     absl::StrCat("--count_from_version=", count_from_version)};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string token_env = "REPTILE_TOKEN=" + token;
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) Die(absl::StrCat("fork: ", std::strerror(errno)));
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(1);
      dup2(fds[1], 1);
      close(fds[0]);
      close(fds[1]);
      putenv(const_cast<char*>(token_env.c_str()));
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(fds[1]);
    out_ = fds[0];
  }
  ~SimulatedCluster() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) close(out_);
  }

  pid_t pid() const { return pid_; }
  bool Alive() const { return waitpid(pid_, nullptr, WNOHANG) == 0; }

  // Waits for the child to exit (after the coordinator's Finish) and
  // returns the line it printed.
  std::string Wait() {
    std::string text;
    char buffer[256];
    ssize_t n;
    while ((n = read(out_, buffer, sizeof(buffer))) > 0) text.append(buffer, n);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) Die("the simulated workers' process failed");
    return text;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
};

// ---- the coordinator side ------------------------------------------------------

struct CaseFigures {
  int workers = 0, meta_batch = 0;
  int64_t rounds = 0;
  double wall = 0, rounds_per_s = 0;
  double coordinator_cpu = 0;             // s per round, this process
  double engine_cpu = 0;                  // s per round, the engine's thread
  std::map<std::string, double> by_thread;  // s per round, other threads by name
  double workers_cpu = 0;                 // s per round, the simulated workers' process
  double in_gbps = 0, out_gbps = 0, mb_in_per_round = 0, mb_out_per_round = 0;
  double run_ms = 0, outside_ms = 0;      // per round: Transport::Run, the engine outside it
  double fetch_ms = 0, fetch_max_ms = 0, submit_ms = 0, submit_max_ms = 0;
  int64_t stale = 0, redone = 0, refused = 0, evicted = 0;
  int max_in_flight = 0;
  std::vector<std::string> news;  // what the coordinator logged besides joins
};

double ThreadCpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

CaseFigures RunCase(const ExperimentConfig& base, const TaskSource& tasks, int workers, int meta_batch,
                    const Options& options, double compute_ms, const std::string& token) {
  CaseFigures f;
  f.workers = workers;
  f.meta_batch = meta_batch;
  ExperimentConfig config = base;
  config.mutable_outer()->set_meta_batch_size(meta_batch);
  GrpcTransport::Options transport_options;
  transport_options.token = token;
  auto news = std::make_shared<std::vector<std::string>>();
  transport_options.log = [news](const std::string& line) {
    if (line.find(" joined; ") == std::string::npos && line.find(" left") == std::string::npos &&
        news->size() < 20)
      news->push_back(line);
  };
  std::unique_ptr<GrpcTransport> transport = OrDie(GrpcTransport::Create(config, transport_options), "transport");
  const int nodes = workers / options.learners;
  SimulatedCluster cluster(transport->port(), nodes, options.learners, compute_ms, options.warmup_rounds, token);
  const auto join_start = BenchClock::now();
  while (transport->num_workers() < nodes) {
    if (!cluster.Alive()) Die("the simulated workers' process exited");
    if (Seconds(join_start) > 120) Die(absl::StrCat(workers, " simulated workers did not join within 120 s"));
    usleep(20000);
  }
  TimedTransport timed(transport.get(), workers);
  std::unique_ptr<RoundEngine> engine = OrDie(RoundEngine::Create(config, tasks, &timed, {}), "round engine");
  auto start = BenchClock::now();
  if (absl::Status s = engine->Run(options.warmup_rounds); !s.ok()) Die(absl::StrCat("warm-up: ", s.ToString()));
  // Blocks of about a second (by the warm-up's pace) until options.seconds have passed.
  const int64_t block = std::max<int64_t>(1, static_cast<int64_t>(options.warmup_rounds / Seconds(start)));

  const size_t first_timing = timed.timings().size();
  const TransportStats stats_before = transport->Stats();
  const std::map<std::string, double> threads_before = ThreadCpuSecondsByName();
  const double engine_before = ThreadCpuSeconds();
  const double self_before = ProcessCpuSeconds();
  const double workers_before = ProcessCpuSeconds(cluster.pid());
  const int64_t first_round = engine->round();
  start = BenchClock::now();
  while (Seconds(start) < options.seconds)
    if (absl::Status s = engine->Run(engine->round() + block); !s.ok()) Die(absl::StrCat("rounds: ", s.ToString()));
  f.wall = Seconds(start);
  const int64_t rounds = engine->round() - first_round;
  const double n = static_cast<double>(rounds);
  f.rounds = rounds;
  f.rounds_per_s = n / f.wall;
  f.coordinator_cpu = (ProcessCpuSeconds() - self_before) / n;
  f.engine_cpu = (ThreadCpuSeconds() - engine_before) / n;
  f.workers_cpu = (ProcessCpuSeconds(cluster.pid()) - workers_before) / n;
  for (const auto& [name, seconds] : ThreadCpuSecondsByName()) {
    if (name == "(this thread)") continue;
    auto before = threads_before.find(name);
    f.by_thread[name] = (seconds - (before == threads_before.end() ? 0 : before->second)) / n;
  }
  const TransportStats stats = transport->Stats();
  f.in_gbps = (stats.bytes_in - stats_before.bytes_in) / f.wall / 1e9;
  f.out_gbps = (stats.bytes_out - stats_before.bytes_out) / f.wall / 1e9;
  f.mb_in_per_round = (stats.bytes_in - stats_before.bytes_in) / n / 1e6;
  f.mb_out_per_round = (stats.bytes_out - stats_before.bytes_out) / n / 1e6;
  f.redone = stats.tasks_redone - stats_before.tasks_redone;
  f.refused = stats.results_refused - stats_before.results_refused;
  f.evicted = stats.workers_evicted - stats_before.workers_evicted;
  f.max_in_flight = stats.tasks_in_flight;
  double run = 0;
  for (size_t i = first_timing; i < timed.timings().size(); ++i) run += timed.timings()[i].run_seconds;
  f.run_ms = 1e3 * run / n;
  f.outside_ms = 1e3 * (f.wall - run) / n;

  transport->Finish(absl::Seconds(10));
  std::vector<int64_t> v;
  for (absl::string_view field : absl::StrSplit(cluster.Wait(), ' ', absl::SkipWhitespace())) {
    int64_t value = 0;
    if (absl::SimpleAtoi(field, &value)) v.push_back(value);
  }
  if (v.size() != 8) Die("the simulated workers' process printed no timings");
  f.fetch_ms = v[1] > 0 ? 1e-6 * v[0] / v[1] : 0;
  f.fetch_max_ms = 1e-6 * v[2];
  f.submit_ms = v[4] > 0 ? 1e-6 * v[3] / v[4] : 0;
  f.submit_max_ms = 1e-6 * v[5];
  f.stale = v[6];
  f.news = *news;
  return f;
}

// Median wall time of Learner::Run on the model's training tasks, ms, after a
// warm-up round: what the simulated workers wait in place of computing.
double MeasureTaskMs(const ExperimentConfig& config, std::shared_ptr<const TaskSource> tasks) {
  std::unique_ptr<Learner> learner = OrDie(Learner::Create(config, tasks), "learner");
  std::shared_ptr<MetaModel> model = OrDie(MakeModel(config, config.seed()), "model");
  FlatParameters flat(*model);
  MetaState state;
  state.parameters = flat.values().clone();
  if (CarriedMomentsOf(config).first) state.adam_m = torch::zeros_like(state.parameters);
  if (CarriedMomentsOf(config).second) state.adam_v = torch::zeros_like(state.parameters);
  TaskSampler sampler(config, tasks->num_classes(false), tasks->num_classes(true));
  std::vector<double> ms;
  for (int round = 0; round < 6; ++round)
    for (const WorkItem& item : sampler.TrainingItems(round)) {
      const auto start = BenchClock::now();
      OrDie(learner->Run(state, item), "learner run");
      if (round > 0) ms.push_back(1e3 * Seconds(start));
    }
  return Median(ms);
}

int Main(const Options& options) {
  ConfigureProcessForTraining();
  const auto bench_start = BenchClock::now();
  std::mt19937_64 random(std::random_device{}());
  const std::string token = absl::StrFormat("%016x%016x", random(), random());
  const std::string source = REPTILE_SOURCE_DIR;
  const bool ten_million = absl::GetFlag(FLAGS_model) == "10m";
  if (!ten_million && absl::GetFlag(FLAGS_model) != "omniglot")
    Die(absl::StrCat("--model must be omniglot or 10m, not ", absl::GetFlag(FLAGS_model)));
  const ExperimentConfig omniglot =
      ten_million ? OrDie(LoadConfig(source + "/configs/sine.textproto",
                                     {"eval.every_rounds=0", "eval.final_episodes=0", "model.hidden_units=3160"}),
                          "10M config")
                  : OrDie(LoadConfig(source + "/configs/omniglot_5w1s.textproto",
                                     {"eval.every_rounds=0", "eval.final_episodes=0",
                                      "task.data_dir=" + source + "/../shared/data/omniglot"}),
                          "omniglot config");
  std::printf("cluster_bench  %s  (%ld cores online)\n", Now().c_str(), sysconf(_SC_NPROCESSORS_ONLN));
  std::printf("load avg %s at start (1, 5, 15 min; other work on this machine shows here)\n", LoadAverage().c_str());

  std::vector<double> tcp;
  for (int i = 0; i < 3; ++i) tcp.push_back(LoopbackGbps(size_t{2} << 30, size_t{1} << 20));
  std::sort(tcp.begin(), tcp.end());

  std::shared_ptr<const TaskSource> tasks = OrDie(TaskSource::Create(omniglot.task()), "dataset");
  const double compute_ms = options.compute_ms >= 0 ? options.compute_ms : MeasureTaskMs(omniglot, tasks);
  const Precomputed result = Precompute(omniglot);
  ConfigureProcessForServing();  // from here on this process is the coordinator, as `reptile coordinator` runs
  const double rtt_ms = 1e-3 * HeartbeatMicros(omniglot, result, 2000, token);
  // A round of B tasks on W workers takes ⌈B/W⌉ task-times at best.
  auto ideal = [&](const CaseFigures& f) {
    return 1e3 / ((f.meta_batch + f.workers - 1) / f.workers * compute_ms + rtt_ms);
  };
  size_t result_bytes = 0;
  for (const std::string& t : result.tensors) result_bytes += t.size();

  std::printf("model    %s: %lld parameters; a result is %.2f MB (delta %s%s), the state as much\n",
              omniglot.name().c_str(), static_cast<long long>(result.numel), result_bytes / 1e6,
              DeltaDtype_Name(result.dtype).c_str(),
              result.carry.first ? " + Adam m + v" : (result.carry.second ? " + Adam v" : ""));
  std::printf("compute  %.2f ms per task (%s); unary round trip %.3f ms; ideal %.1f rounds/s at one task per "
              "worker\n", compute_ms,
              options.compute_ms >= 0 ? "--compute_ms" : "median wall time of Learner::Run here, one thread",
              rtt_ms, 1e3 / (compute_ms + rtt_ms));
  std::printf("loopback TCP (one sender, one receiver thread, 2 GiB in 1 MiB writes, 3 runs): best %.2f, median %.2f "
              "GB/s\n\n", tcp.back(), Median(tcp));

  std::vector<CaseFigures> cases;
  for (int workers : options.workers)
    for (int meta_batch : options.meta_batches) {
      cases.push_back(RunCase(omniglot, *tasks, workers, meta_batch > 0 ? meta_batch : workers, options, compute_ms,
                              token));
      const CaseFigures& f = cases.back();
      std::printf("%d workers (%d nodes of %d learners), meta-batch %d: %lld rounds in %.1f s\n", workers,
                  workers / options.learners, options.learners, f.meta_batch, static_cast<long long>(f.rounds),
                  f.wall);
      std::fflush(stdout);
    }

  std::printf("\n== rounds/s against the ideal (ideal = 1 / (⌈B/W⌉ compute times + one round trip))\n");
  std::printf("%8s %6s %9s %8s %7s %9s %9s %10s %10s %9s %9s %9s %10s\n", "workers", "meta-", "rounds/s", "ideal",
              "effic.", "per-core", "wire", "coord CPU", "coord CPU", "ingest", "egress", "ingest/", "MB in/out");
  std::printf("%8s %6s %9s %8s %7s %9s %9s %10s %10s %9s %9s %9s %10s\n", "W", "batch B", "", "", "", "(B/W⌈B/W⌉)",
              "bound", "ms/round", "ms/MB res.", "GB/s", "GB/s", "loopback", "per round");
  for (const CaseFigures& f : cases) {
    // Rounds/s if the round's bytes crossed loopback TCP at its measured
    // rate, with no other cost: a bound no coordinator on this host passes.
    const double wire_bound = Median(tcp) * 1e3 / (f.mb_in_per_round + f.mb_out_per_round);
    // The share of the workers' time spent computing tasks, and its bound.
    const double per_core = f.meta_batch * compute_ms * 1e-3 * f.rounds_per_s / f.workers;
    const int task_times = (f.meta_batch + f.workers - 1) / f.workers;
    const double per_core_bound = static_cast<double>(f.meta_batch) / (f.workers * task_times);
    // The coordinator's CPU per MB of the round's results as the tasks
    // made them (fp32, one per task), however few bytes the nodes sent.
    const double results_mb = f.meta_batch * static_cast<double>(result_bytes) / 1e6;
    std::printf("%8d %6d %9.2f %8.1f %6.1f%% %4.0f%% (%3.0f%%) %8.1f %10.1f %10.3f %9.3f %9.3f %8.1f%% %5.0f/%.0f\n",
                f.workers, f.meta_batch, f.rounds_per_s, ideal(f), 100 * f.rounds_per_s / ideal(f), 100 * per_core,
                100 * per_core_bound, wire_bound, 1e3 * f.coordinator_cpu, 1e3 * f.coordinator_cpu / results_mb,
                f.in_gbps, f.out_gbps, 100 * f.in_gbps / Median(tcp), f.mb_in_per_round, f.mb_out_per_round);
  }
  std::printf("per-core: B · compute · rounds/s / W, the share of the workers' time spent on tasks; in brackets its\n"
              "bound B / (W·⌈B/W⌉) (a round waits for its busiest worker). wire bound: median loopback GB/s / (MB in\n"
              "+ out per round), the rounds/s of a coordinator whose only cost were the bytes at raw loopback TCP\n"
              "speed. ms/MB res.: the coordinator's CPU per MB of the round's results, one fp32 result per task\n"
              "(B x the result's size), whatever the nodes sent. ingest/loopback: against the median loopback figure.\n");

  std::printf("\n== where a round's time goes, ms per round\n");
  std::printf("%8s %6s %9s %9s %9s %13s %13s %7s %7s\n", "workers", "meta-", "round", "Run()", "engine",
              "FetchState", "Submit", "stale", "redone");
  std::printf("%8s %6s %9s %9s %9s %13s %13s %7s %7s\n", "", "batch", "", "", "outside", "mean / max", "mean / max",
              "", "");
  for (const CaseFigures& f : cases)
    std::printf("%8d %6d %9.2f %9.2f %9.2f %6.1f /%6.1f %6.1f /%6.1f %7lld %7lld\n", f.workers, f.meta_batch,
                1e3 / f.rounds_per_s,
                f.run_ms, f.outside_ms, f.fetch_ms, f.fetch_max_ms, f.submit_ms, f.submit_max_ms,
                static_cast<long long>(f.stale), static_cast<long long>(f.redone));
  std::printf("Run(): Transport::Run per round (snapshot encoding, leases, state fan-out, compute, results in);\n"
              "engine outside: sampling, aggregation (checks, float64 sums) and the outer step, on the engine's thread.\n"
              "FetchState, Submit: the simulated workers' client-side time per call (stream open to last byte).\n");

  std::printf("\n== CPU seconds per round: coordinator threads (by name), and the simulated workers' process\n"
              "(the coordinator runs with `reptile coordinator`'s malloc settings, ConfigureProcessForServing)\n");
  for (const CaseFigures& f : cases) {
    std::printf("%d workers, meta-batch %d: coordinator %.4f = engine thread %.4f", f.workers, f.meta_batch,
                f.coordinator_cpu, f.engine_cpu);
    double listed = f.engine_cpu;
    for (const auto& [name, seconds] : f.by_thread)
      if (seconds >= 0.0005) {
        std::printf(" + %s %.4f", name.c_str(), seconds);
        listed += seconds;
      }
    std::printf(" + threads that ended (gRPC's sync server pool) %.4f", f.coordinator_cpu - listed);
    std::printf("; simulated workers %.4f\n", f.workers_cpu);
    if (f.refused || f.evicted) std::printf("  %lld results refused, %lld workers evicted\n",
                                            static_cast<long long>(f.refused), static_cast<long long>(f.evicted));
    for (const std::string& line : f.news) std::printf("  coordinator: %s\n", line.c_str());
  }
  std::printf("\nload avg %s at end; total bench time %.0f s\n", LoadAverage().c_str(), Seconds(bench_start));
  return 0;
}

}  // namespace
}  // namespace reptile

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (!absl::GetFlag(FLAGS_simulate).empty())
    return reptile::SimulateWorkers(absl::GetFlag(FLAGS_simulate), absl::GetFlag(FLAGS_count),
                                    static_cast<uint64_t>(absl::GetFlag(FLAGS_count_from_version)));
  reptile::Options options;
  for (absl::string_view w : absl::StrSplit(absl::GetFlag(FLAGS_workers), ',', absl::SkipEmpty())) {
    int count = 0;
    if (!absl::SimpleAtoi(w, &count) || count <= 0) reptile::Die(absl::StrCat("--workers: not a count: ", w));
    options.workers.push_back(count);
  }
  options.learners = absl::GetFlag(FLAGS_learners);
  for (int count : options.workers)
    if (options.learners < 1 || count % options.learners != 0)
      reptile::Die(absl::StrCat("--workers=", count, " is not a whole number of nodes of --learners=", options.learners));
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_meta_batch), ',', absl::SkipEmpty())) {
    int size = 0;
    if (!absl::SimpleAtoi(b, &size) || size < 0) reptile::Die(absl::StrCat("--meta_batch: not a size: ", b));
    options.meta_batches.push_back(size);
  }
  if (options.meta_batches.empty()) options.meta_batches.push_back(0);
  options.seconds = absl::GetFlag(FLAGS_seconds);
  options.warmup_rounds = absl::GetFlag(FLAGS_warmup_rounds);
  options.compute_ms = absl::GetFlag(FLAGS_compute_ms);
  return reptile::Main(options);
}
