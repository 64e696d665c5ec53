#include "transport/mpi/mpi_transport.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <mpi.h>
#include <net/if.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bitset>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iostream>
#include <limits>
#include <optional>
#include <thread>

#include <ATen/Parallel.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/aggregator.h"
#include "core/models/torchscript_model.h"
#include "core/process_setup.h"
#include "core/status_macros.h"
#include "transport/wire/result_codec.h"

namespace reptile {
namespace {

// What rank 0 broadcasts ahead of every batch.
enum Command : int64_t { kFinish = 0, kBatch = 1 };
struct BatchHeader {
  int64_t command = kFinish;
  int64_t numel = 0;
  int64_t has_moments = 0;       // Adam's v is part of the state (CARRY)
  int64_t has_first_moment = 0;  // and Adam's m (not when adam_beta1 is 0)
  int64_t adam_step = 0;
  int64_t batch_bytes = 0;       // serialized WorkBatch
  // How this batch's training tensors come together: MPI_GATHER_IN_ORDER
  // (with each result), MPI_REDUCE_SUM or MPI_ALLREDUCE_SUM.
  int64_t reduction = MPI_GATHER_IN_ORDER;
  // MPI_ALLREDUCE_SUM runs: the ranks keep their own state, and the state is
  // broadcast only when a rank's does not hash to this.
  int64_t ranks_keep_state = 0;
  uint64_t state_hash = 0;
  // MPI_ALLREDUCE_SUM training batches: the update every rank then applies.
  double step_size = 0;
  int64_t inner_iterations = 0;
  int64_t meta_batch = 0;
};

// The largest serialized ResultHeader rank 0 takes from a rank (an error
// text included); a larger one ends the job. tests/mpi_liar.c sends one.
constexpr int64_t kMaxResultHeaderBytes = 8192;
// The longest error text a rank sends, so that its header stays within that.
constexpr size_t kMaxErrorBytes = 4096;

int Rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int Size() {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

using Clock = std::chrono::steady_clock;
constexpr Clock::time_point kForever = Clock::time_point::max();

// Set once a wait has passed its deadline: requests are left pending that
// MPI cannot cancel, so the process must not call MPI_Finalize (it would
// wait for them forever) but end the job with MPI_Abort.
std::atomic<bool> gave_up{false};

// How a wait spends the time between two tests of its request. Open MPI
// advances a large message (rendezvous: over TCP, or shared memory without
// single-copy, as in containers) a fragment at a time, and only while both
// ranks are inside MPI; its own blocking calls busy-poll, which on a machine
// with as many ranks as cores takes the core a computing rank needs.
enum class Pace {
  // 50 us naps: for a message a peer sends once it has computed (a result's
  // header, the next batch), or a transfer beside computing ranks.
  kNap,
  // No pause for the first 2 ms, then naps: for a transfer that every rank
  // involved is waiting on (the state, a result's tensors once its header is
  // in, a rank's last results), where naps would add to every fragment.
  kTransfer,
};

// False if `deadline` passed first; the request is then left pending.
bool Wait(MPI_Request* request, Clock::time_point deadline = kForever, Pace pace = Pace::kNap) {
  const Clock::time_point busy_until =
      pace == Pace::kTransfer ? Clock::now() + std::chrono::milliseconds(2) : Clock::time_point::min();
  int done = 0;
  while (true) {
    MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (done) return true;
    const Clock::time_point now = Clock::now();
    if (now >= deadline) {
      gave_up = true;
      return false;
    }
    if (now >= busy_until) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

bool Broadcast(void* data, int count, MPI_Datatype type, Clock::time_point deadline = kForever,
               Pace pace = Pace::kNap) {
  MPI_Request request;
  MPI_Ibcast(data, count, type, 0, MPI_COMM_WORLD, &request);
  return Wait(&request, deadline, pace);
}

bool Receive(void* data, int count, MPI_Datatype type, int source, int tag, Clock::time_point deadline = kForever,
             Pace pace = Pace::kNap) {
  MPI_Request request;
  MPI_Irecv(data, count, type, source, tag, MPI_COMM_WORLD, &request);
  return Wait(&request, deadline, pace);
}

// Seconds from a config field, where 0 means `fallback`; at most a year, so
// that a deadline never overflows the clock.
Clock::duration Seconds(float seconds, double fallback) {
  const double s = std::min<double>(seconds > 0 ? seconds : fallback, 365 * 86400.0);
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

Clock::duration ConnectTimeout(const RuntimeConfig& runtime) {
  return Seconds(runtime.mpi_connect_timeout_seconds(), 60);
}

double ToSeconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Ranks as "rank 3" or "ranks 1, 2 and 5".
std::string RankList(const std::vector<int>& ranks) {
  if (ranks.size() == 1) return absl::StrCat("rank ", ranks[0]);
  std::vector<int> head(ranks.begin(), ranks.end() - 1);
  return absl::StrCat("ranks ", absl::StrJoin(head, ", "), " and ", ranks.back());
}

// This host's IPv4 interfaces, as Open MPI's TCP transports see them:
// "eth0 10.0.0.5/24, docker0 172.17.0.1/16 (no carrier)".
std::string LocalInterfaces() {
  struct ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "(getifaddrs failed)";
  std::vector<std::string> found;
  for (const struct ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET) continue;
    char address[INET_ADDRSTRLEN] = {0};
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr, address, sizeof(address));
    int prefix = 0;
    if (i->ifa_netmask != nullptr)
      prefix = static_cast<int>(
          std::bitset<32>(ntohl(reinterpret_cast<const sockaddr_in*>(i->ifa_netmask)->sin_addr.s_addr)).count());
    std::string entry = absl::StrCat(i->ifa_name, " ", address, "/", prefix);
    if (!(i->ifa_flags & IFF_UP)) {
      absl::StrAppend(&entry, " (down, unused)");
    } else if (i->ifa_flags & IFF_LOOPBACK) {
      absl::StrAppend(&entry, " (loopback)");
    } else if (!(i->ifa_flags & IFF_RUNNING)) {
      absl::StrAppend(&entry, " (no carrier)");
    }
    found.push_back(entry);
  }
  freeifaddrs(list);
  return found.empty() ? "none with IPv4" : absl::StrJoin(found, ", ");
}

// The Open MPI settings that choose interfaces, as mpirun passed them on
// (--mca NAME VALUE reaches the ranks as OMPI_MCA_NAME=VALUE).
std::string InterfaceSettings() {
  std::vector<std::string> set;
  for (const char* name : {"btl", "btl_tcp_if_include", "btl_tcp_if_exclude", "oob_tcp_if_include",
                           "oob_tcp_if_exclude"})
    if (const char* value = std::getenv(absl::StrCat("OMPI_MCA_", name).c_str()); value != nullptr)
      set.push_back(absl::StrCat(name, "=", value));
  if (set.empty()) return "none of btl_tcp_if_include/exclude, oob_tcp_if_include/exclude (every interface that is up "
                          "but loopback is used)";
  return absl::StrJoin(set, " ");
}

// Rank 0's error when ranks do not answer in time: what did not arrive, the
// likely cause, how to choose interfaces, and what this host has.
absl::Status NoAnswer(const std::string& what) {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return absl::DeadlineExceededError(absl::StrCat(
      what,
      ".\n  Likely cause: Open MPI's TCP transport uses every network interface that is up unless told which, and "
      "some rank cannot reach another on one of them (a bridge such as docker0 or virbr0 that is down or has the same "
      "address on every host, a VPN, a second NIC on a subnet the other hosts lack). A rank that hangs looks the "
      "same; Open MPI's \"failed to TCP connect\" warning above, if any, names the address.",
      "\n  Fix: name the interfaces (or subnets) the ranks share, for MPI traffic and for Open MPI's own: "
      "mpirun --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 ... (or 10.0.0.0/24, or --mca "
      "btl_tcp_if_exclude lo,docker0), or export OMPI_MCA_btl_tcp_if_include=eth0 "
      "OMPI_MCA_oob_tcp_if_include=eth0 where mpirun runs; mpirun --display-map shows the host of each rank. "
      "docs/mpi.md says more.",
      "\n  Rank 0 on ", host, ": interfaces ", LocalInterfaces(), "; Open MPI settings: ", InterfaceSettings(), "."));
}

// 128-bit integers added element-wise: the reduction of ExactSum
// accumulators. Integer addition is associative and commutative, so MPI may
// combine the ranks in any order and tree.
void AddInt128(void* in, void* inout, int* count, MPI_Datatype*) {
  const char* from = static_cast<const char*>(in);
  char* to = static_cast<char*>(inout);
  for (int i = 0; i < *count; ++i) {
    __int128 a, b;  // MPI buffers need not be 16-byte aligned
    std::memcpy(&a, from + 16 * i, 16);
    std::memcpy(&b, to + 16 * i, 16);
    b += a;
    std::memcpy(to + 16 * i, &b, 16);
  }
}

struct Int128Sum {
  MPI_Datatype type;
  MPI_Op op;
};

const Int128Sum& Int128SumOp() {
  static const Int128Sum sum = [] {
    Int128Sum s;
    MPI_Type_contiguous(static_cast<int>(ExactSum::kElementBytes), MPI_BYTE, &s.type);
    MPI_Type_commit(&s.type);
    MPI_Op_create(&AddInt128, /*commute=*/1, &s.op);
    return s;
  }();
  return sum;
}

// The ranks of this rank's node (MPI_COMM_TYPE_SHARED) and, on each node's
// first rank, the first ranks of all nodes (MPI_COMM_NULL elsewhere). World
// rank 0 is rank 0 of both. Made once, by every rank, when the job starts.
struct NodeComms {
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm leaders = MPI_COMM_NULL;
};

NodeComms& Nodes() {
  static NodeComms comms;
  return comms;
}

void SplitByNode() {
  NodeComms& comms = Nodes();
  const int rank = Rank();
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &comms.node);
  int node_rank = 0;
  MPI_Comm_rank(comms.node, &node_rank);
  MPI_Comm_split(MPI_COMM_WORLD, node_rank == 0 ? 0 : MPI_UNDEFINED, rank, &comms.leaders);
}

// Adds `sums` element-wise over all ranks, as encoded 128-bit integers:
// into rank 0's (reduce), or into every rank's (allreduce); the sums that
// receive the total then hold `total_tasks` vectors. In two levels, so that
// one sum per node crosses the network: each node's ranks reduce into its
// first rank, and those reduce into rank 0 (or allreduce among themselves
// and broadcast on their node). Every rank takes part, even one without
// items or after a failed item. DeadlineExceeded if rank 0's `deadline` for
// a reduction passed (each of up to three gets `at_least` of its own);
// InvalidArgument if a total is out of range.
absl::Status ReduceSums(TensorSums& sums, bool to_all, int total_tasks, Clock::time_point deadline = kForever,
                        Clock::duration at_least = {}) {
  const Int128Sum& int128 = Int128SumOp();
  const NodeComms& comms = Nodes();
  const bool leader = comms.leaders != MPI_COMM_NULL;
  const bool receives = to_all || Rank() == 0;
  auto reduce = [&](ExactSum& sum, const char* what) -> absl::Status {
    std::string bytes = sum.Encode();
    const int count = static_cast<int>(sum.numel());
    auto wait = [&](MPI_Request* request) {
      return Wait(request, deadline == kForever ? kForever : std::max(deadline, Clock::now() + at_least));
    };
    auto failed = [what] { return absl::DeadlineExceededError(absl::StrCat("the reduction of ", what, " did not complete")); };
    MPI_Request request;
    // On the node, into its first rank.
    if (leader) {
      MPI_Ireduce(MPI_IN_PLACE, bytes.data(), count, int128.type, int128.op, 0, comms.node, &request);
    } else {
      MPI_Ireduce(bytes.data(), nullptr, count, int128.type, int128.op, 0, comms.node, &request);
    }
    if (!wait(&request)) return failed();
    // Across nodes, among their first ranks.
    if (leader) {
      int leader_rank = 0;
      MPI_Comm_rank(comms.leaders, &leader_rank);
      if (to_all) {
        MPI_Iallreduce(MPI_IN_PLACE, bytes.data(), count, int128.type, int128.op, comms.leaders, &request);
      } else if (leader_rank == 0) {
        MPI_Ireduce(MPI_IN_PLACE, bytes.data(), count, int128.type, int128.op, 0, comms.leaders, &request);
      } else {
        MPI_Ireduce(bytes.data(), nullptr, count, int128.type, int128.op, 0, comms.leaders, &request);
      }
      if (!wait(&request)) return failed();
    }
    if (to_all) {
      MPI_Ibcast(bytes.data(), count, int128.type, 0, comms.node, &request);
      if (!wait(&request)) return failed();
    }
    if (!receives) return absl::OkStatus();
    absl::StatusOr<ExactSum> total = ExactSum::Decode(bytes, sum.numel(), total_tasks, sum.max_terms());
    if (!total.ok()) return absl::InvalidArgumentError(absl::StrCat("reduced ", what, ": ", total.status().message()));
    sum = *std::move(total);
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(reduce(sums.delta, "delta"));
  if (sums.adam_m) RETURN_IF_ERROR(reduce(*sums.adam_m, "adam_m"));
  if (sums.adam_v) RETURN_IF_ERROR(reduce(*sums.adam_v, "adam_v"));
  return absl::OkStatus();
}

// Adds one item's result tensors to a rank's partial sums and leaves the
// result its scalars.
absl::Status MoveIntoSum(TaskResult* result, TensorSums& sums) {
  if (result->sums) {
    RETURN_IF_ERROR(sums.Merge(*result->sums));
  } else {
    RETURN_IF_ERROR(sums.Add(result->delta, result->adam_m, result->adam_v));
  }
  result->delta = result->adam_m = result->adam_v = torch::Tensor();
  result->sums.reset();
  result->tensors_elsewhere = true;
  return absl::OkStatus();
}

// A fingerprint of the meta-state, to tell whether every rank holds rank 0's.
uint64_t StateHash(const MetaState& state) {
  uint64_t hash = 0x9e3779b97f4a7c15ULL ^ static_cast<uint64_t>(state.adam_step);
  auto mix = [&hash](const torch::Tensor& t) {
    if (!t.defined()) {
      hash = hash * 0x100000001b3ULL + 1;
      return;
    }
    const torch::Tensor c = t.contiguous();
    const char* bytes = static_cast<const char*>(c.data_ptr());
    const size_t size = static_cast<size_t>(c.numel()) * c.element_size();
    size_t i = 0;
    for (; i + 8 <= size; i += 8) {
      uint64_t word;
      std::memcpy(&word, bytes + i, 8);
      hash = (hash ^ word) * 0xff51afd7ed558ccdULL;
      hash ^= hash >> 29;
    }
    for (; i < size; ++i) hash = (hash ^ static_cast<uint8_t>(bytes[i])) * 0x100000001b3ULL;
  };
  mix(state.parameters);
  mix(state.adam_m);
  mix(state.adam_v);
  return hash;
}

// `timeout`: rank 0's bound on each tensor's broadcast (none on the others).
bool BroadcastTensor(torch::Tensor& tensor, int64_t numel, std::optional<Clock::duration> timeout) {
  if (!tensor.defined() || tensor.numel() != numel) tensor = torch::empty({numel}, torch::kFloat32);
  return Broadcast(tensor.data_ptr<float>(), static_cast<int>(numel), MPI_FLOAT,
                   timeout ? Clock::now() + *timeout : kForever, Pace::kTransfer);
}

// Broadcasts rank 0's `state` (or receives it into `state`) as `header` says.
// False if a tensor's broadcast took longer than `timeout`.
bool BroadcastState(const BatchHeader& header, MetaState* state,
                    std::optional<Clock::duration> timeout = std::nullopt) {
  if (!BroadcastTensor(state->parameters, header.numel, timeout)) return false;
  if (header.has_first_moment) {
    if (!BroadcastTensor(state->adam_m, header.numel, timeout)) return false;
  } else {
    state->adam_m = torch::Tensor();
  }
  if (header.has_moments) {
    if (!BroadcastTensor(state->adam_v, header.numel, timeout)) return false;
  } else {
    state->adam_v = torch::Tensor();
  }
  state->adam_step = header.adam_step;
  return true;
}

// Whether some rank must receive the state: always, unless the ranks keep
// their own and every one of them hashes to rank 0's. nullopt if the vote
// took longer than `timeout`.
std::optional<bool> StateNeeded(const BatchHeader& header, const MetaState& own,
                                std::optional<Clock::duration> timeout = std::nullopt) {
  if (!header.ranks_keep_state) return true;
  int stale = Rank() != 0 && (!own.parameters.defined() || StateHash(own) != header.state_hash);
  int any_stale = 0;
  MPI_Request request;
  MPI_Iallreduce(&stale, &any_stale, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD, &request);
  if (!Wait(&request, timeout ? Clock::now() + *timeout : kForever)) return std::nullopt;
  return any_stale != 0;
}

// A result's parts are tagged 0 (header), 1 (delta or error text), 2 and 3
// (Adam's m and v). A rank sends its items' results in item order and rank 0
// receives them in that order; MPI keeps messages between two ranks with the
// same tag in order, so the tag need not name the item. At setup a rank's
// greeting is tagged kHelloTag, and the word that it has loaded the dataset
// and built its learner kReadyTag.
constexpr int kHelloTag = 7;
constexpr int kReadyTag = 8;

// Ranks that compute tasks, in the order items are dealt to them.
std::vector<int> WorkingRanks(bool rank0_works) {
  std::vector<int> ranks;
  for (int r = (rank0_works || Size() == 1) ? 0 : 1; r < Size(); ++r) ranks.push_back(r);
  return ranks;
}

// One result on its way to rank 0, as the wire encodes it
// (transport/wire/result_codec.h): its serialized ResultHeader (tag 0), then
// its tensors (tags 1, 2, ...). The buffers must live until the sends
// complete, which lets the rank compute its next task meanwhile.
struct OutgoingResult {
  absl::StatusOr<TaskResult> result;
  EncodedResult encoded;  // views into `result`
  std::string header;
  std::vector<MPI_Request> requests;
};

// Starts sending `out`'s result, of a model of `numel` parameters, for an
// item of `tasks` tasks (in the summed modes its tensors are in the rank's
// sum: the header then goes alone).
void StartSend(OutgoingResult* out, int64_t numel, size_t tasks) {
  out->encoded = EncodeResult(out->result, DELTA_FP32, numel);
  ResultHeader& header = out->encoded.header;
  if (header.error().size() > kMaxErrorBytes) header.mutable_error()->resize(kMaxErrorBytes);
  if (out->result.ok()) header.set_tasks(static_cast<uint32_t>(tasks));
  out->header = header.SerializeAsString();
  auto send = [&](absl::string_view bytes, int tag) {
    out->requests.emplace_back();
    MPI_Isend(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, 0, tag, MPI_COMM_WORLD, &out->requests.back());
  };
  out->requests.reserve(1 + out->encoded.tensors.size());
  send(out->header, 0);
  int tag = 1;
  for (absl::string_view tensor : out->encoded.tensors) send(tensor, tag++);
}

// Tests every request of `sending`; true once all have completed.
bool AllSent(std::deque<OutgoingResult>& sending) {
  for (OutgoingResult& out : sending) {
    int done = 0;
    MPI_Testall(static_cast<int>(out.requests.size()), out.requests.data(), &done, MPI_STATUSES_IGNORE);
    if (!done) return false;
  }
  return true;
}

// A worker rank's learner, on a thread of its own, so that the rank's main
// thread (the only one that calls MPI) keeps the results already sent
// moving while the next item computes. A large message (rendezvous: over TCP,
// or shared memory without single-copy, as in containers) advances only
// while its sender is inside MPI; a rank that computed its next item before
// testing its sends held every result but its last until the end of the
// batch, where the transfers then lay on the round's critical path.
class ComputeThread {
 public:
  explicit ComputeThread(Learner& learner) : learner_(learner), thread_([this] { Loop(); }) {}
  ~ComputeThread() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    thread_.join();
  }
  ComputeThread(const ComputeThread&) = delete;
  ComputeThread& operator=(const ComputeThread&) = delete;

  // Runs `item` on `state` there, testing `sending` every 50 us meanwhile
  // until its sends have completed (then only waits).
  absl::StatusOr<TaskResult> Run(const MetaState& state, const WorkItem& item, std::deque<OutgoingResult>& sending) {
    absl::MutexLock lock(&mu_);
    state_ = &state;
    item_ = &item;
    auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return result_.has_value(); };
    bool sends_pending = true;
    while (sends_pending && !done()) {
      mu_.Unlock();
      sends_pending = !AllSent(sending);
      mu_.Lock();
      if (sends_pending) mu_.AwaitWithTimeout(absl::Condition(&done), absl::Microseconds(50));
    }
    mu_.Await(absl::Condition(&done));
    absl::StatusOr<TaskResult> result = *std::move(result_);
    result_.reset();
    return result;
  }

 private:
  void Loop() {
    NameThisThread("learner");
    at::set_num_threads(1);  // per thread under OpenMP; see LocalTransport
    absl::MutexLock lock(&mu_);
    auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || item_ != nullptr; };
    while (true) {
      mu_.Await(absl::Condition(&has_work));
      if (stopping_) return;
      const MetaState* state = state_;
      const WorkItem* item = item_;
      item_ = nullptr;
      mu_.Unlock();
      absl::StatusOr<TaskResult> result = learner_.Run(*state, *item);
      mu_.Lock();
      result_ = std::move(result);
    }
  }

  Learner& learner_;
  absl::Mutex mu_;
  const MetaState* state_ ABSL_GUARDED_BY(mu_) = nullptr;
  const WorkItem* item_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::optional<absl::StatusOr<TaskResult>> result_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts once the members above exist
};

// The size in bytes of the next message from `source` with `tag`, once one
// has come (not received yet); -1 if none came by `deadline`.
int64_t ProbeBytes(int source, int tag, Clock::time_point deadline) {
  while (true) {
    int arrived = 0;
    MPI_Status status;
    MPI_Iprobe(source, tag, MPI_COMM_WORLD, &arrived, &status);
    if (arrived) {
      MPI_Count bytes = 0;
      MPI_Get_elements_x(&status, MPI_BYTE, &bytes);
      return bytes == MPI_UNDEFINED ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(bytes);
    }
    if (Clock::now() >= deadline) {
      gave_up = true;
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

// Rank 0 receives `work`'s result (item `item`) from `source`: its
// ResultHeader, checked by the wire's code (transport/wire/result_codec.h)
// against rank 0's own item and config, then the tensors it announces. An
// error if the item failed there; DeadlineExceeded (the job must end) if the
// header did not arrive by `due` (then *overdue is set) or one of its
// tensors took longer than `timeout` after. A header that breaks the
// protocol (over kMaxResultHeaderBytes, malformed, or with claims the item
// and config rule out) leaves the rank's next messages unknown: the job must
// end (gave_up). In the summed modes the tensors come in the reduction, not
// here. `pace`: of the waits for the tensors.
absl::StatusOr<TaskResult> ReceiveResult(int source, size_t item, const WorkItem& work, const BatchHeader& batch,
                                         Clock::time_point due, Clock::duration timeout, Pace pace, int64_t* bytes,
                                         bool* overdue) {
  auto broken = [&](const std::string& what) {
    gave_up = true;
    return absl::InvalidArgumentError(
        absl::StrFormat("MPI: rank %d broke the protocol with work item %d's result: %s", source, item, what));
  };
  const int64_t header_bytes = ProbeBytes(source, 0, std::max(due, Clock::now() + timeout));
  if (header_bytes < 0) {
    *overdue = true;
    return absl::DeadlineExceededError(absl::StrCat("no result of work item ", item, " from rank ", source));
  }
  if (header_bytes > kMaxResultHeaderBytes)
    return broken(absl::StrCat("its header is ", header_bytes, " bytes (at most ", kMaxResultHeaderBytes, ")"));
  std::string serialized(static_cast<size_t>(header_bytes), '\0');
  Receive(serialized.data(), static_cast<int>(header_bytes), MPI_BYTE, source, 0);  // it has come
  ResultHeader header;
  if (!header.ParseFromString(serialized)) return broken("its header does not parse");
  if (!header.error().empty())
    return absl::InternalError(absl::StrCat("work item ", item, " failed on rank ", source, ": ", header.error()));
  const ResultShape shape{batch.numel, CarriedMoments{batch.has_first_moment != 0, batch.has_moments != 0},
                          static_cast<int>(batch.meta_batch)};
  // In the summed modes a training item's tensors are in its rank's sum,
  // reduced at the end: here its header comes alone, checked as an episode's.
  const bool summed = batch.reduction != MPI_GATHER_IN_ORDER;
  const WorkItem expected = summed ? WorkItem{WorkKind::kEvaluate, work.tasks} : work;
  absl::StatusOr<std::vector<size_t>> sizes = ResultPayloadSizes(header, expected, shape);
  if (!sizes.ok()) return broken(std::string(sizes.status().message()));
  std::vector<std::string> payload;
  for (size_t k = 0; k < sizes->size(); ++k) {
    std::string& received = payload.emplace_back((*sizes)[k], '\0');
    if (!Receive(received.data(), static_cast<int>(received.size()), MPI_BYTE, source, static_cast<int>(k + 1),
                 Clock::now() + timeout, pace))
      return absl::DeadlineExceededError(absl::StrFormat(
          "MPI: no tensor %d of work item %d from rank %d within %g s of the result's header "
          "(runtime.mpi_connect_timeout_seconds)",
          k + 1, item, source, ToSeconds(timeout)));
    *bytes += static_cast<int64_t>(received.size());
  }
  ASSIGN_OR_RETURN(TaskResult result, DecodeResult(header, expected, shape, std::move(payload)));
  if (summed) result.tensors_elsewhere = true;
  return result;
}

std::vector<WorkItem> ParseItems(const std::string& bytes) {
  WorkBatch batch;
  batch.ParseFromString(bytes);
  std::vector<WorkItem> items;
  for (const WorkUnit& unit : batch.items())
    items.push_back(WorkItem{unit.evaluate() ? WorkKind::kEvaluate : WorkKind::kTrain,
                             std::vector<TaskSpec>(unit.tasks().begin(), unit.tasks().end())});
  return items;
}

// A TORCHSCRIPT run's model, from rank 0 (which holds it) to every rank,
// which checks it against the config's digest and keeps it for its learners.
absl::Status ShareModelOverMpi(const ExperimentConfig& config) {
  std::shared_ptr<const std::string> held;
  int64_t size = -1;
  if (Rank() == 0) {
    absl::StatusOr<std::shared_ptr<const std::string>> read = TorchScriptBytes(config);
    if (read.ok() && (*read)->size() <= kMaxTorchScriptBytes) {
      held = *read;
      size = static_cast<int64_t>(held->size());
    }
    Broadcast(&size, 1, MPI_INT64_T);
    if (size < 0) return read.ok() ? absl::InvalidArgumentError("the model is larger than 4 GiB") : read.status();
  } else {
    Broadcast(&size, 1, MPI_INT64_T);
    if (size < 0) return absl::CancelledError("rank 0 could not read the model");
    if (static_cast<uint64_t>(size) > kMaxTorchScriptBytes)
      return absl::InvalidArgumentError(absl::StrCat("rank 0 announced a model of ", size, " bytes, over 4 GiB"));
  }
  std::string bytes = held != nullptr ? *held : std::string(static_cast<size_t>(size), '\0');
  for (int64_t at = 0; at < size;) {
    const int piece = static_cast<int>(std::min<int64_t>(size - at, 1 << 30));
    Broadcast(bytes.data() + at, piece, MPI_BYTE);
    at += piece;
  }
  if (Rank() == 0) return absl::OkStatus();
  if (TorchScriptDigest(bytes) != config.model().torchscript_sha256())
    return absl::DataLossError("the model broadcast by rank 0 does not match the run's SHA-256");
  ProvideTorchScriptBytes(std::make_shared<const std::string>(std::move(bytes)));
  return absl::OkStatus();
}

}  // namespace

MpiJob::MpiJob() {
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  rank_ = Rank();
  size_ = Size();
}

MpiJob::~MpiJob() {
  // MPI_Finalize would wait for the requests left pending.
  if (gave_up) MPI_Abort(MPI_COMM_WORLD, 1);
  MPI_Finalize();
}

bool MpiJob::stalled() const { return gave_up; }

void MpiJob::Abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

absl::StatusOr<ExperimentConfig> ShareConfigOverMpi(const std::optional<ExperimentConfig>& config) {
  const int rank = Rank(), ranks = Size();
  std::string bytes = config.has_value() ? config->SerializeAsString() : std::string();
  int64_t size = config.has_value() ? static_cast<int64_t>(bytes.size()) : -1;
  if (rank != 0) {
    // The greeting lets rank 0 name the ranks it does not hear from.
    int64_t hello = rank;
    MPI_Request greeting;
    MPI_Isend(&hello, 1, MPI_INT64_T, 0, kHelloTag, MPI_COMM_WORLD, &greeting);
    Broadcast(&size, 1, MPI_INT64_T);
    Wait(&greeting);
    if (size < 0) return absl::CancelledError("rank 0 could not set the run up");
    bytes.resize(static_cast<size_t>(size));
    Broadcast(bytes.data(), static_cast<int>(size), MPI_BYTE);
  } else {
    const Clock::duration timeout = ConnectTimeout(config.has_value() ? config->runtime() : RuntimeConfig());
    const Clock::time_point deadline = Clock::now() + timeout;
    std::vector<int64_t> hellos(ranks);
    std::vector<MPI_Request> greetings(ranks, MPI_REQUEST_NULL);
    for (int r = 1; r < ranks; ++r) MPI_Irecv(&hellos[r], 1, MPI_INT64_T, r, kHelloTag, MPI_COMM_WORLD, &greetings[r]);
    std::vector<int> silent;
    for (int r = 1; r < ranks; ++r)
      if (!Wait(&greetings[r], deadline)) silent.push_back(r);
    if (!silent.empty())
      return NoAnswer(absl::StrFormat(
          "MPI setup: rank 0 heard nothing from %s (of %d ranks) within %g s (runtime.mpi_connect_timeout_seconds)",
          RankList(silent), ranks, ToSeconds(timeout)));
    auto relay_failed = [&] {
      return NoAnswer(absl::StrFormat(
          "MPI setup: the config broadcast did not complete within %g s (runtime.mpi_connect_timeout_seconds), "
          "though every rank greeted rank 0: ranks relay broadcasts, and some rank cannot reach another",
          ToSeconds(timeout)));
    };
    if (!Broadcast(&size, 1, MPI_INT64_T, Clock::now() + timeout)) return relay_failed();
    if (size < 0) return absl::CancelledError("rank 0 could not set the run up");
    if (!Broadcast(bytes.data(), static_cast<int>(size), MPI_BYTE, Clock::now() + timeout)) return relay_failed();
  }
  // Every rank has heard from every other by now (the broadcasts relay):
  // the node split's collectives cannot wait on a link nobody can use.
  SplitByNode();
  ExperimentConfig shared;
  if (!shared.ParseFromString(bytes)) return absl::DataLossError("the config broadcast by rank 0 does not parse");
  if (shared.model().arch() == TORCHSCRIPT) RETURN_IF_ERROR(ShareModelOverMpi(shared));
  return shared;
}

absl::StatusOr<std::unique_ptr<MpiTransport>> MpiTransport::Create(const ExperimentConfig& config,
                                                                   std::shared_ptr<const TaskSource> tasks) {
  if (Rank() != 0) return absl::FailedPreconditionError("the MPI transport runs on rank 0");
  std::unique_ptr<MpiTransport> transport(new MpiTransport());
  transport->working_ranks_ = WorkingRanks(config.runtime().mpi_rank0_works());
  transport->reduction_ = config.runtime().mpi_reduction();
  transport->meta_batch_ = config.outer().meta_batch_size();
  transport->connect_timeout_ = ConnectTimeout(config.runtime());
  transport->item_timeout_ = Seconds(config.runtime().task_timeout_seconds(), 600);
  const Clock::time_point start = Clock::now();
  if (transport->working_ranks_.front() == 0) {
    ASSIGN_OR_RETURN(transport->learner_, Learner::Create(config, tasks));
  }
  // The other ranks load the dataset once they have the config; until all
  // have, the first batch's broadcasts would wait for them. Their setup
  // counts as one work item.
  const int ranks = Size();
  std::vector<int64_t> ready(ranks);
  std::vector<MPI_Request> requests(ranks, MPI_REQUEST_NULL);
  for (int r = 1; r < ranks; ++r) MPI_Irecv(&ready[r], 1, MPI_INT64_T, r, kReadyTag, MPI_COMM_WORLD, &requests[r]);
  const Clock::duration allowed = transport->item_timeout_ + transport->connect_timeout_;
  std::vector<int> late;
  for (int r = 1; r < ranks; ++r)
    if (!Wait(&requests[r], start + allowed)) late.push_back(r);
  if (!late.empty())
    return absl::DeadlineExceededError(absl::StrFormat(
        "MPI setup: %s did not load the dataset and build the learner within %g s of the config broadcast "
        "(one work item: runtime.task_timeout_seconds %g s + runtime.mpi_connect_timeout_seconds %g s); they greeted "
        "rank 0 at setup, so the network carried that much. A slow or stuck dataset read (a shared filesystem?) is "
        "the likely cause; raise runtime.task_timeout_seconds if setup takes longer.",
        RankList(late), ToSeconds(allowed), ToSeconds(transport->item_timeout_),
        ToSeconds(transport->connect_timeout_)));
  return transport;
}

MpiTransport::~MpiTransport() {
  if (gave_up) return;  // some rank does not answer: the job is to be aborted
  BatchHeader header;
  header.command = kFinish;
  if (!Broadcast(&header, sizeof(header), MPI_BYTE, Clock::now() + connect_timeout_))
    std::cerr << "reptile mpi: error: "
              << NoAnswer(absl::StrFormat("MPI: the broadcast that ends the run did not complete within %g s "
                                          "(runtime.mpi_connect_timeout_seconds): some rank does not answer",
                                          ToSeconds(connect_timeout_)))
                     .message()
              << std::endl;
}

void MpiTransport::Interrupt(const std::string& why) {
  absl::MutexLock lock(&mu_);
  interrupted_ = why.empty() ? "interrupted" : why;
}

void MpiTransport::AnnounceUpdate(double step_size, int inner_iterations) {
  step_size_ = step_size;
  inner_iterations_ = inner_iterations;
}

namespace {

// The header of a batch of `items` on `state`, and the items serialized
// into `items_bytes`; `tasks` is the number of tasks they hold.
BatchHeader HeaderFor(const MetaState& state, const std::vector<WorkItem>& items, MpiReduction reduction,
                      int meta_batch, double step_size, int inner_iterations, std::string* items_bytes,
                      int* tasks) {
  BatchHeader header;
  header.command = kBatch;
  header.numel = state.parameters.numel();
  const CarriedMoments moments = CarriedMomentsOf(state);
  header.has_moments = moments.second;
  header.has_first_moment = moments.first;
  header.adam_step = state.adam_step;
  header.meta_batch = meta_batch;
  WorkBatch batch;
  bool training = !items.empty();
  *tasks = 0;
  for (const WorkItem& item : items) {
    WorkUnit* unit = batch.add_items();
    unit->set_evaluate(item.kind == WorkKind::kEvaluate);
    for (const TaskSpec& task : item.tasks) *unit->add_tasks() = task;
    training &= item.kind == WorkKind::kTrain;
    *tasks += static_cast<int>(item.tasks.size());
  }
  header.reduction = training ? reduction : MPI_GATHER_IN_ORDER;
  header.ranks_keep_state = reduction == MPI_ALLREDUCE_SUM;
  if (header.ranks_keep_state) header.state_hash = StateHash(state);
  header.step_size = step_size;
  header.inner_iterations = inner_iterations;
  *items_bytes = batch.SerializeAsString();
  header.batch_bytes = static_cast<int64_t>(items_bytes->size());
  return header;
}

// Rank 0's side of a batch's broadcasts: the header, the vote on whether
// the ranks need the state, the state if so (counted in `bytes_out`), the
// items. Every rank waits for them, so each step has `timeout`
// (runtime.mpi_connect_timeout_seconds); past it, a stall to abort the job.
absl::Status BroadcastBatch(BatchHeader header, const MetaState& state, const std::string& items_bytes,
                            size_t items, Clock::duration timeout, int64_t* bytes_out) {
  auto broadcast_stalled = [&](const char* step) {
    return NoAnswer(absl::StrFormat(
        "MPI: the broadcast of %s for a batch of %d work items did not complete within %g s "
        "(runtime.mpi_connect_timeout_seconds): some rank does not answer",
        step, items, ToSeconds(timeout)));
  };
  if (!Broadcast(&header, sizeof(header), MPI_BYTE, Clock::now() + timeout)) return broadcast_stalled("the header");
  const std::optional<bool> state_needed = StateNeeded(header, state, timeout);
  if (!state_needed.has_value()) return broadcast_stalled("the state hash vote");
  if (*state_needed) {
    // The state is only read: broadcasting from its buffers does not change it.
    const CarriedMoments moments = CarriedMomentsOf(state);
    MetaState shared{state.parameters.contiguous(), moments.first ? state.adam_m.contiguous() : torch::Tensor(),
                     moments.second ? state.adam_v.contiguous() : torch::Tensor(), state.adam_step};
    if (!BroadcastState(header, &shared, timeout)) return broadcast_stalled("the meta-state");
    *bytes_out += header.numel * 4 * (1 + header.has_first_moment + header.has_moments) * (Size() - 1);
  }
  // The root's buffer is only read.
  if (!Broadcast(const_cast<char*>(items_bytes.data()), static_cast<int>(items_bytes.size()), MPI_BYTE,
                 Clock::now() + timeout, Pace::kTransfer))
    return broadcast_stalled("the work items");
  return absl::OkStatus();
}

// When a batch's results are due: a rank's k-th item k times
// runtime.task_timeout_seconds after the broadcasts, plus
// runtime.mpi_connect_timeout_seconds. Past that, the job is to be aborted
// (stalled).
struct Deadlines {
  Clock::time_point work_start;
  Clock::duration item_timeout, connect_timeout;
  Clock::time_point Due(int k) const { return work_start + k * item_timeout + connect_timeout; }
  absl::Status Stalled(const std::string& what, int k) const {
    return NoAnswer(absl::StrFormat(
        "MPI: %s within %g s of the batch's broadcasts (%d work item(s) at runtime.task_timeout_seconds %g s "
        "each, plus runtime.mpi_connect_timeout_seconds %g s)",
        what, ToSeconds(Due(k) - work_start), k, ToSeconds(item_timeout), ToSeconds(connect_timeout)));
  }
};

// In the summed modes, rank 0's end of the reduction: every rank's sum of
// its training items (of `tasks` tasks in all) into `sums`, due with a
// rank's `most`-th item, then handed over in item 0's result, which carries
// them for every item. Counts the bytes in.
absl::Status ReduceRanksSums(const BatchHeader& header, int tasks, int most, const Deadlines& deadlines,
                             TensorSums sums, std::vector<absl::StatusOr<TaskResult>>& results, int64_t* bytes_in) {
  const absl::Status reduced = ReduceSums(sums, header.reduction == MPI_ALLREDUCE_SUM, tasks, deadlines.Due(most),
                                          deadlines.connect_timeout);
  if (absl::IsDeadlineExceeded(reduced))
    return deadlines.Stalled(absl::StrCat(reduced.message(), " (some rank does not answer)"), most);
  RETURN_IF_ERROR(reduced);
  *bytes_in += header.numel * ExactSum::kElementBytes * (1 + header.has_first_moment + header.has_moments);
  if (results[0].ok()) {
    results[0]->sums = std::move(sums);
    results[0]->tensors_elsewhere = false;
    for (int item = 1; item < static_cast<int>(results.size()); ++item) results[0]->summed_with.push_back(item);
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<absl::StatusOr<TaskResult>> MpiTransport::RunOwnItems(const MetaState& state,
                                                                  const std::vector<WorkItem>& items,
                                                                  TensorSums* sums) {
  std::vector<absl::StatusOr<TaskResult>> results(items.size(), absl::UnknownError("not run"));
  if (learner_ == nullptr) return results;
  for (size_t i = 0; i < items.size(); ++i) {
    if (working_ranks_[i % working_ranks_.size()] != 0) continue;
    results[i] = learner_->Run(state, items[i]);
    if (sums != nullptr && results[i].ok())
      if (absl::Status moved = MoveIntoSum(&*results[i], *sums); !moved.ok()) results[i] = moved;
  }
  return results;
}

absl::Status MpiTransport::Run(const MetaState& state, const std::vector<WorkItem>& items,
                               const ResultSink& take) {
  {
    absl::MutexLock lock(&mu_);
    if (!interrupted_.empty()) return absl::CancelledError(interrupted_);
  }
  int tasks = 0;
  std::string items_bytes;
  const BatchHeader header = HeaderFor(state, items, reduction_, meta_batch_, step_size_, inner_iterations_,
                                       &items_bytes, &tasks);
  const Clock::duration timeout = connect_timeout_;
  RETURN_IF_ERROR(BroadcastBatch(header, state, items_bytes, items.size(), timeout, &stats_.bytes_out));
  const Deadlines deadlines{Clock::now(), item_timeout_, timeout};
  std::vector<int> items_of(Size(), 0);  // each rank's items so far
  const bool summed = header.reduction != MPI_GATHER_IN_ORDER;
  std::optional<TensorSums> sums;
  if (summed) sums.emplace(header.numel, meta_batch_, CarriedMomentsOf(state));
  std::vector<absl::StatusOr<TaskResult>> results = RunOwnItems(state, items, sums ? &*sums : nullptr);
  // Results are taken as they arrive (the aggregator's checks and sums then
  // overlap the items still computing), except in the summed modes, where
  // the tensors come together in the reduction at the end. After a failure
  // the rest are still received, so that no rank is left sending.
  absl::Status failure;
  auto take_result = [&](size_t i) {
    if (!failure.ok()) return;
    absl::Status taken = results[i].ok() ? take(i, *std::move(results[i])) : results[i].status();
    if (!taken.ok()) failure = absl::Status(taken.code(), absl::StrCat("work item ", i, ": ", taken.message()));
  };
  for (size_t i = 0; i < items.size(); ++i) {
    const int source = working_ranks_[i % working_ranks_.size()];
    const int k = ++items_of[source];
    if (source != 0) {
      bool overdue = false;
      // A rank's last result is sent by a rank with nothing left to compute,
      // so both ends can afford to hurry the transfer; while the sender
      // computes its next item, its sends advance only every 50 us anyway.
      const bool last_of_rank = i + working_ranks_.size() >= items.size();
      results[i] = ReceiveResult(source, i, items[i], header, deadlines.Due(k), timeout,
                                 last_of_rank ? Pace::kTransfer : Pace::kNap, &stats_.bytes_in, &overdue);
      if (absl::IsDeadlineExceeded(results[i].status())) {
        const std::string what(results[i].status().message());
        return overdue ? deadlines.Stalled(what, k) : NoAnswer(what);
      }
    }
    if (!summed) take_result(i);
  }
  if (summed)
    RETURN_IF_ERROR(ReduceRanksSums(header, tasks, *std::max_element(items_of.begin(), items_of.end()), deadlines,
                                    *std::move(sums), results, &stats_.bytes_in));
  stats_.workers_alive = num_workers();
  stats_.tasks_in_flight = std::min<int>(num_workers(), static_cast<int>(items.size()));
  if (summed)
    for (size_t i = 0; i < results.size(); ++i) take_result(i);
  return failure;
}

absl::Status RunMpiWorker(const ExperimentConfig& config, std::shared_ptr<const TaskSource> tasks) {
  const int rank = Rank();
  const std::vector<int> working = WorkingRanks(config.runtime().mpi_rank0_works());
  ASSIGN_OR_RETURN(std::unique_ptr<Learner> learner, Learner::Create(config, tasks));
  ComputeThread compute(*learner);
  int64_t ready = rank;  // rank 0 waits for this before the first batch
  MPI_Request request;
  MPI_Isend(&ready, 1, MPI_INT64_T, 0, kReadyTag, MPI_COMM_WORLD, &request);
  Wait(&request);
  MetaState state;
  while (true) {
    BatchHeader header;
    Broadcast(&header, sizeof(header), MPI_BYTE);
    if (header.command == kFinish) break;
    if (StateNeeded(header, state).value()) BroadcastState(header, &state);
    std::string bytes(static_cast<size_t>(header.batch_bytes), '\0');
    Broadcast(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, kForever, Pace::kTransfer);
    const std::vector<WorkItem> items = ParseItems(bytes);

    const bool summed = header.reduction != MPI_GATHER_IN_ORDER;
    std::optional<TensorSums> sums;
    if (summed) sums.emplace(header.numel, static_cast<int>(header.meta_batch), CarriedMomentsOf(state));
    bool all_ok = true;
    std::deque<OutgoingResult> outgoing;  // stable addresses for MPI
    for (size_t i = 0; i < items.size(); ++i) {
      if (working[i % working.size()] != rank) continue;
      absl::StatusOr<TaskResult> result = compute.Run(state, items[i], outgoing);
      outgoing.push_back(OutgoingResult{std::move(result), {}, {}, {}});
      absl::StatusOr<TaskResult>& sent = outgoing.back().result;
      if (summed && sent.ok())
        if (absl::Status moved = MoveIntoSum(&*sent, *sums); !moved.ok()) sent = moved;
      all_ok &= sent.ok();
      StartSend(&outgoing.back(), header.numel, items[i].tasks.size());
    }
    for (OutgoingResult& out : outgoing)
      for (MPI_Request& request : out.requests) Wait(&request, kForever, Pace::kTransfer);
    if (!summed) continue;
    int total_tasks = 0;
    for (const WorkItem& item : items) total_tasks += static_cast<int>(item.tasks.size());
    const absl::Status reduced = ReduceSums(*sums, header.reduction == MPI_ALLREDUCE_SUM, total_tasks);
    // Rank 0 applies the same update with the same code; should any rank
    // have failed, the next batch's state hash says so and rank 0 sends
    // its state.
    if (header.reduction != MPI_ALLREDUCE_SUM || !all_ok || !reduced.ok()) continue;
    TaskResult total;
    total.sums = std::move(sums);
    Aggregator aggregator(header.numel, {total_tasks}, CarriedMomentsOf(state));
    if (!aggregator.Add(0, std::move(total)).ok() ||
        !aggregator.Apply(header.step_size, static_cast<int>(header.inner_iterations), &state).ok())
      state = MetaState();  // stale: rank 0 sends its state next time
  }
  return absl::OkStatus();
}

}  // namespace reptile
