#include "bench/bench_support.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "core/flat_parameters.h"
#include "core/models/models.h"
#include "transport/grpc/coordinator_client.h"
#include "transport/grpc/grpc_transport.h"
#include "transport/wire/tensor_stream.h"

namespace reptile {
namespace {

// utime + stime of a /proc/.../stat line, in clock ticks.
double StatTicks(const std::string& path) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream fields(text.substr(paren + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i)
    if (i == 14 || i == 15) ticks += std::stod(field);
  return ticks;
}

}  // namespace

double ProcessCpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

double ProcessCpuSeconds(pid_t pid) {
  return StatTicks(absl::StrCat("/proc/", pid, "/stat")) / sysconf(_SC_CLK_TCK);
}

std::map<std::string, double> ThreadCpuSecondsByName() {
  std::map<std::string, double> by_name;
  const std::string self = std::to_string(gettid());
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return by_name;
  while (dirent* entry = readdir(dir)) {
    const std::string tid = entry->d_name;
    if (tid == "." || tid == "..") continue;
    std::string name;
    std::getline(std::ifstream(absl::StrCat("/proc/self/task/", tid, "/comm")), name);
    if (tid == self) name = "(this thread)";
    by_name[name] += StatTicks(absl::StrCat("/proc/self/task/", tid, "/stat")) / sysconf(_SC_CLK_TCK);
  }
  closedir(dir);
  return by_name;
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return absl::StrCat(one, " ", five, " ", fifteen);
}

std::string Now() {
  const std::time_t t = std::time(nullptr);
  char text[64];
  std::strftime(text, sizeof(text), "%Y-%m-%d %H:%M:%S %Z", std::localtime(&t));
  return text;
}

void Die(const std::string& what) {
  std::fprintf(stderr, "bench: %s\n", what.c_str());
  std::exit(1);
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

double Max(const std::vector<double>& v) { return v.empty() ? 0 : *std::max_element(v.begin(), v.end()); }

double LoopbackGbps(size_t total, size_t write_size) {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  if (bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 || listen(listener, 1) != 0)
    Die(absl::StrCat("loopback listen: ", std::strerror(errno)));
  socklen_t length = sizeof(address);
  getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length);
  std::thread sender([&] {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0)
      Die(absl::StrCat("loopback connect: ", std::strerror(errno)));
    std::vector<char> buffer(write_size, 'x');
    size_t sent = 0;
    while (sent < total) {
      const ssize_t n = write(fd, buffer.data(), std::min(write_size, total - sent));
      if (n <= 0) Die(absl::StrCat("loopback write: ", std::strerror(errno)));
      sent += n;
    }
    close(fd);
  });
  const int fd = accept(listener, nullptr, nullptr);
  const auto start = BenchClock::now();
  std::vector<char> buffer(write_size);
  size_t received = 0;
  while (received < total) {
    const ssize_t n = read(fd, buffer.data(), buffer.size());
    if (n <= 0) Die(absl::StrCat("loopback read: ", std::strerror(errno)));
    received += n;
  }
  const double seconds = Seconds(start);
  sender.join();
  close(fd);
  close(listener);
  return received / seconds / 1e9;
}

absl::Status TimedTransport::Run(const MetaState& state, const std::vector<WorkItem>& items,
                                 const ResultSink& take) {
  const auto start = BenchClock::now();
  std::vector<double> compute(items.size(), 0.0);
  absl::Status status = inner_->Run(state, items, [&](size_t item, TaskResult result) {
    const double seconds = result.compute_seconds;
    absl::Status taken = take(item, std::move(result));
    if (taken.ok()) compute[item] = seconds;
    return taken;
  });
  RoundTiming timing;
  timing.run_seconds = Seconds(start);
  timing.items = static_cast<int>(items.size());
  if (status.ok()) {
    std::vector<double> free_at(workers_, 0.0);
    for (double seconds : compute) {
      timing.compute_sum += seconds;
      auto first = std::min_element(free_at.begin(), free_at.end());
      *first += seconds;
    }
    timing.compute_makespan = Max(free_at);
    timings_.push_back(timing);
  }
  return status;
}

Precomputed Precompute(const ExperimentConfig& config, int learners) {
  Precomputed p;
  std::shared_ptr<MetaModel> model = OrDie(MakeModel(config, 0), "model");
  FlatParameters flat(*model);
  p.numel = flat.numel();
  p.carry = CarriedMomentsOf(config);
  p.dtype = config.outer().delta_dtype();
  p.config_fingerprint = ConfigFingerprint(config);
  p.layout_fingerprint = LayoutFingerprint(flat.layout());
  torch::manual_seed(7);
  TaskResult result;
  result.delta = torch::randn({p.numel}) * 1e-3;
  result.loss = 1.0;
  p.tensors.push_back(EncodeTensor(result.delta, p.dtype));
  if (p.carry.first) {
    result.adam_m = torch::randn({p.numel}) * 1e-3;
    p.tensors.push_back(EncodeTensor(result.adam_m, DELTA_FP32));
  }
  if (p.carry.second) {
    result.adam_v = torch::randn({p.numel}).abs_() * 1e-6;
    p.tensors.push_back(EncodeTensor(result.adam_v, DELTA_FP32));
  }
  p.upload = CoordinatorClient::ResultMessages(0, WorkReply(), result, p.dtype, p.numel);
  p.node_uploads.push_back(p.upload);
  TaskResult sum;
  sum.loss = result.loss;
  sum.sums.emplace(p.numel, config.outer().meta_batch_size(), p.carry);
  for (int k = 1; k <= learners; ++k) {
    if (!sum.sums->Add(result.delta, result.adam_m, result.adam_v).ok()) Die("a node sum out of range");
    if (k == 1) continue;
    std::vector<ResultChunk> upload = CoordinatorClient::ResultMessages(0, WorkReply(), sum, p.dtype, p.numel);
    for (int item = 1; item < k; ++item) upload[0].mutable_header()->add_node_items()->set_loss(result.loss);
    p.node_uploads.push_back(std::move(upload));
  }
  return p;
}

void PhaseClock::Add(std::atomic<int64_t>& ns, std::atomic<int64_t>& calls, BenchClock::time_point since,
                     std::atomic<int64_t>* max_ns) {
  const int64_t took = std::chrono::duration_cast<std::chrono::nanoseconds>(BenchClock::now() - since).count();
  ns.fetch_add(took);
  calls.fetch_add(1);
  if (max_ns == nullptr) return;
  int64_t seen = max_ns->load();
  while (took > seen && !max_ns->compare_exchange_weak(seen, took)) {
  }
}

PhaseClock::Snapshot PhaseClock::Take() const {
  Snapshot s;
  s.get_work = get_work_calls.load(), s.fetch = fetch_calls.load(), s.submit = submit_calls.load();
  s.get_work_ns = get_work_ns.load(), s.fetch_ns = fetch_ns.load(), s.submit_ns = submit_ns.load();
  return s;
}

PhaseClock::Snapshot PhaseClock::Between(const Snapshot& a, const Snapshot& b) {
  Snapshot d;
  auto mean = [](int64_t ns, int64_t calls) { return calls > 0 ? 1e-6 * ns / calls : 0.0; };
  d.get_work_ms = mean(b.get_work_ns - a.get_work_ns, b.get_work - a.get_work);
  d.fetch_ms = mean(b.fetch_ns - a.fetch_ns, b.fetch - a.fetch);
  d.submit_ms = mean(b.submit_ns - a.submit_ns, b.submit - a.submit);
  return d;
}

void SimulatedWorker(const SimulatedWorkerOptions& options, const Precomputed& p, PhaseClock* clock) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own
  CoordinatorClient client(grpc::CreateCustomChannel(options.address, grpc::InsecureChannelCredentials(), args),
                           options.token);
  JoinRequest join;
  join.set_worker_name(absl::StrCat("simulated-", std::hash<std::thread::id>()(std::this_thread::get_id()) % 1000));
  join.set_protocol_version(kProtocolVersion);
  join.set_config_fingerprint(p.config_fingerprint);
  join.set_layout_fingerprint(p.layout_fingerprint);
  join.set_learners(options.learners);
  const uint64_t worker = OrDie(client.Join(join), "simulated worker: Join refused").worker_id();
  // Each node's own headers; the chunks after them are shared by all.
  std::vector<ResultChunk> headers;
  for (const std::vector<ResultChunk>& upload : p.node_uploads) {
    headers.push_back(upload[0]);
    headers.back().mutable_header()->set_worker_id(worker);
  }
  const auto compute = std::chrono::duration<double>(options.compute_seconds);
  uint64_t fetched_version = 0;
  while (true) {
    auto started = BenchClock::now();
    const WorkReply work = OrDie(client.GetWork(worker), "simulated worker: GetWork");
    if (work.kind() == WorkReply::FINISHED) break;
    if (work.kind() == WorkReply::EVALUATE) Die("simulated worker: given an evaluation episode; it only trains");
    if (work.kind() != WorkReply::TRAIN) continue;
    const bool counted = work.state_version() > options.count_from_version;
    if (counted) clock->Add(clock->get_work_ns, clock->get_work_calls, started);
    if (work.state_version() != fetched_version) {
      started = BenchClock::now();
      absl::StatusOr<MetaState> state = client.FetchState(worker, work.state_version(), p.numel, p.carry);
      if (absl::IsFailedPrecondition(state.status())) {  // the batch ended: the lease went with it
        clock->stale.fetch_add(1);
        continue;
      }
      if (!state.ok()) Die(absl::StrCat("simulated worker: FetchState: ", state.status().ToString()));
      fetched_version = work.state_version();
      if (counted) clock->Add(clock->fetch_ns, clock->fetch_calls, started, &clock->fetch_max_ns);
    }
    if (options.compute_seconds > 0) std::this_thread::sleep_for(compute);
    const size_t leases = 1 + static_cast<size_t>(work.more_items_size());
    if (leases > headers.size()) Die("simulated worker: leased more items than it has learners");
    ResultHeader* header = headers[leases - 1].mutable_header();
    header->set_lease_id(work.lease_id());
    header->set_state_version(work.state_version());
    for (int k = 0; k < work.more_items_size(); ++k)
      header->mutable_node_items(k)->set_lease_id(work.more_items(k).lease_id());
    started = BenchClock::now();
    std::unique_ptr<CoordinatorClient::Upload> upload = client.StartUpload(std::chrono::seconds(120));
    const std::vector<ResultChunk>& chunks = p.node_uploads[leases - 1];
    bool written = upload->Write(headers[leases - 1]);
    for (size_t c = 1; c < chunks.size() && written; ++c) written = upload->Write(chunks[c]);
    absl::StatusOr<SubmitReply> submitted = upload->Finish();
    if (absl::IsFailedPrecondition(submitted.status())) {
      clock->stale.fetch_add(1);
    } else if (!submitted.ok()) {
      Die(absl::StrCat("simulated worker: SubmitResult: ", submitted.status().ToString()));
    }
    if (counted) clock->Add(clock->submit_ns, clock->submit_calls, started, &clock->submit_max_ns);
    if (options.probe) {
      started = BenchClock::now();
      client.Heartbeat(worker).IgnoreError();
      clock->Add(clock->probe_ns, clock->probe_calls, started);
    }
  }
  client.Leave(worker).IgnoreError();
}

double HeartbeatMicros(const ExperimentConfig& config, const Precomputed& p, int calls, const std::string& token) {
  GrpcTransport::Options options;
  options.token = token;
  auto transport = OrDie(GrpcTransport::Create(config, options), "gRPC transport (latency)");
  SecurityOptions security;
  security.token = token;
  std::unique_ptr<CoordinatorClient> client = OrDie(
      CoordinatorClient::Connect(absl::StrCat("127.0.0.1:", transport->port()), security), "latency probe: channel");
  JoinRequest join;
  join.set_worker_name("latency-probe");
  join.set_protocol_version(kProtocolVersion);
  join.set_config_fingerprint(p.config_fingerprint);
  join.set_layout_fingerprint(p.layout_fingerprint);
  const uint64_t worker = OrDie(client->Join(join), "latency probe: Join refused").worker_id();
  std::vector<double> times;
  for (int i = 0; i < calls + 50; ++i) {
    const auto start = BenchClock::now();
    if (absl::Status beat = client->Heartbeat(worker); !beat.ok())
      Die(absl::StrCat("latency probe: Heartbeat failed: ", beat.ToString()));
    if (i >= 50) times.push_back(1e6 * Seconds(start));
  }
  client->Leave(worker).IgnoreError();
  return Median(times);
}

}  // namespace reptile
