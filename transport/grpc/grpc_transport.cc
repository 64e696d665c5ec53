#include "transport/grpc/grpc_transport.h"

#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include <grpcpp/health_check_service_interface.h>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "coordinator.grpc.pb.h"
#include "core/config.h"
#include "core/flat_parameters.h"
#include "core/models/models.h"
#include "core/process_setup.h"
#include "core/models/torchscript_model.h"
#include "core/status_macros.h"
#include "transport/lease_scheduler.h"
#include "transport/wire/result_codec.h"
#include "transport/wire/shared_folder.h"
#include "transport/wire/tensor_stream.h"

namespace reptile {
namespace {

constexpr absl::Duration kLongPoll = absl::Seconds(1);
constexpr absl::Duration kReapEvery = absl::Milliseconds(100);
constexpr absl::Duration kRecheck = absl::Milliseconds(50);
constexpr int kTrimEveryTicks = 20;  // of kReapEvery: every 2 s
// A chunk and its framing; nothing a worker sends needs more.
constexpr size_t kMaxMessageBytes = kChunkBytes + (64 << 10);
constexpr int kMaxStreamsPerConnection = 16;
// As `reptile worker --learners` allows.
constexpr uint32_t kMaxLearnersPerWorker = 1024;
// Result streams one host may hold open before their header has come (each
// pins a server thread until then); more are refused at once.
constexpr int kMaxStreamsAwaitingHeaderPerHost = 16;

bool IsLoopbackHost(const std::string& host) {
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.") || host == "ip6-localhost";
}

// The host part of "host:port", "[v6]:port" or "ipv4:/ipv6:" URIs.
std::string HostOf(std::string address) {
  for (const char* scheme : {"ipv4:", "ipv6:", "dns:"})
    if (absl::StartsWith(address, scheme)) address = address.substr(strlen(scheme));
  if (!address.empty() && address[0] == '[') return address.substr(1, address.find(']') - 1);
  const size_t colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

// Secure by default: only loopback may be served without TLS and a token,
// unless the operator opts out by name (and is warned at every start).
absl::Status CheckListenAddress(const GrpcTransport::Options& options) {
  const std::string host = HostOf(options.listen_address);
  if (IsLoopbackHost(host)) return absl::OkStatus();
  const bool secured = options.tls.enabled() && !options.token.empty();
  if (secured) return absl::OkStatus();
  if (!options.insecure) {
    return absl::FailedPreconditionError(absl::StrCat(
        "refusing to serve ", options.listen_address, " without ",
        options.tls.enabled() ? "a token" : (options.token.empty() ? "TLS and a token" : "TLS"),
        ": anyone who reaches it could read the run's config and feed it results. Give --tls_cert/--tls_key and "
        "--token_file, listen on 127.0.0.1, or pass --insecure_listen on a network you trust"));
  }
  if (options.log)
    options.log(absl::StrCat("WARNING: serving ", options.listen_address, " without ",
                             options.tls.enabled() ? "" : "TLS", !options.tls.enabled() && options.token.empty() ? " and " : "",
                             options.token.empty() ? "a token" : "",
                             " (--insecure_listen): anyone who reaches this port can join the run"));
  return absl::OkStatus();
}

grpc::Status Refusal(grpc::StatusCode code, const std::string& message) { return grpc::Status(code, message); }

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

// The meta-state of one batch, frozen as the messages workers fetch:
// serialized once, their bytes shared by every FetchState stream.
struct Snapshot {
  uint64_t version = 0;
  int64_t numel = 0;
  CarriedMoments moments;  // from the run's config
  std::vector<grpc::ByteBuffer> messages;  // the StateHeader, then the chunks of theta, m (if carried), v (if carried)
  std::vector<size_t> payload;             // tensor bytes in each message
  size_t bytes = 0;                        // their sum
  // For workers on the shared folder: the StateHeader alone, saying the
  // tensors are in the folder's state file (empty without a folder), as
  // FetchState's one message and as a lease's folder_state.
  std::vector<grpc::ByteBuffer> folder_messages;
  StateHeader folder_header;
};

// Whether a call came over the coordinator's Unix socket, the one way to
// the shared folder.
bool OverUnixSocket(const grpc::ServerContextBase& context) { return absl::StartsWith(context.peer(), "unix:"); }

// The host a call comes from: its peer address without the port
// ("ipv4:10.0.0.2", "ipv6:[::1]"), or the Unix socket it came in on.
std::string PeerHost(const grpc::ServerContextBase& context) {
  const std::string peer = context.peer();
  const size_t port = peer.rfind(':');
  return absl::StartsWith(peer, "unix:") || port == std::string::npos ? peer : peer.substr(0, port);
}

grpc::ByteBuffer Serialized(const StateChunk& message) {
  grpc::ByteBuffer buffer;
  bool own = false;
  grpc::SerializationTraits<StateChunk>::Serialize(message, &buffer, &own);
  return buffer;
}

// A stream the reaper cuts off when it falls behind: an upload or a state
// fetch must move at least kMinStreamRate after kStreamGrace, and never
// stall for kStreamIdle.
struct OpenStream {
  grpc::ServerContextBase* context = nullptr;
  absl::Time deadline, last_progress;
  bool cut_off = false;  // the reaper cancelled it
};

constexpr absl::Duration kStreamGrace = absl::Seconds(10);
constexpr absl::Duration kStreamIdle = absl::Seconds(5);
constexpr double kMinStreamRate = 1 << 20;  // bytes per second

absl::Time StreamDeadline(absl::Time now, size_t bytes) {
  return now + kStreamGrace + absl::Seconds(static_cast<double>(bytes) / kMinStreamRate);
}

// What a peer may put in our log: printable ASCII, at most `limit` bytes.
std::string Printable(const std::string& text, size_t limit) {
  std::string out;
  for (char c : text.substr(0, limit)) out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  if (text.size() > limit) out += "...";
  return out;
}

}  // namespace

// Everything the RPC handlers, the reaper and Run() share, under one mutex.
// Log lines are gathered under it and written after it is released.
struct GrpcTransport::Board {
  std::string config_fingerprint, layout_fingerprint;
  ExperimentConfig config;
  std::shared_ptr<const std::string> model;  // a TORCHSCRIPT run's model file
  std::string token;
  std::string shared_folder;  // Options::shared_folder
  std::function<void(const std::string&)> log;
  absl::Duration heartbeat;
  int max_workers = 256;
  int start_with_learners = 0;  // runtime.start_with_learners
  int meta_batch = 1;
  uint64_t incarnation = 0;

  // Held shared while results are handed to Run()'s sink (several at once,
  // each on its RPC's thread, so that they are added on several cores), and
  // exclusively by Run() to end a batch; taken before mu, never while
  // holding it.
  absl::Mutex take_mu ABSL_ACQUIRED_BEFORE(mu);
  mutable absl::Mutex mu;
  LeaseScheduler scheduler ABSL_GUARDED_BY(mu);
  std::mt19937_64 id_generator ABSL_GUARDED_BY(mu){std::random_device{}()};
  uint64_t last_version ABSL_GUARDED_BY(mu) = 0;
  // The batch in progress; snapshot is null between batches.
  std::shared_ptr<const Snapshot> snapshot ABSL_GUARDED_BY(mu);
  const std::vector<WorkItem>* items ABSL_GUARDED_BY(mu) = nullptr;
  const ResultSink* take ABSL_GUARDED_BY(mu) = nullptr;
  // Items whose result is being handed to `take`: another upload of one of
  // them waits to see how that ends.
  std::set<size_t> being_taken ABSL_GUARDED_BY(mu);
  std::map<uint64_t, OpenStream> streams ABSL_GUARDED_BY(mu);
  // Result streams still waiting for their header, by PeerHost.
  std::map<std::string, int> awaiting_header ABSL_GUARDED_BY(mu);
  // Result streams refused before their header named a lease, by reason.
  std::map<std::string, int64_t> streams_refused ABSL_GUARDED_BY(mu);
  uint64_t next_stream ABSL_GUARDED_BY(mu) = 1;
  std::string interrupted ABSL_GUARDED_BY(mu);  // why Interrupt() was called
  bool finished ABSL_GUARDED_BY(mu) = false;       // the run is over: workers leave
  bool shutting_down ABSL_GUARDED_BY(mu) = false;  // this process stops: workers wait for the next
  TransportStats stats ABSL_GUARDED_BY(mu);
  bool warned_idle ABSL_GUARDED_BY(mu) = false;  // more workers than a round has tasks
  bool started ABSL_GUARDED_BY(mu) = false;      // a batch has begun: none waits for workers again

  explicit Board(LeasePolicy policy) : scheduler(policy) {}

  // Writes the scheduler's news to the log; call without holding mu.
  void FlushLog() ABSL_LOCKS_EXCLUDED(mu) {
    std::vector<std::string> lines;
    {
      absl::MutexLock lock(&mu);
      lines = scheduler.TakeEvents();
    }
    if (log)
      for (const std::string& line : lines) log(line);
  }

  uint64_t OpenStreamFor(grpc::ServerContextBase* context, size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const absl::Time now = absl::Now();
    const uint64_t id = next_stream++;
    streams[id] = OpenStream{context, StreamDeadline(now, bytes), now};
    return id;
  }
  void Progress(uint64_t stream) ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    streams[stream].last_progress = absl::Now();
  }
  // True if the reaper cut the stream off.
  bool CloseStream(uint64_t stream) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = streams.find(stream);
    const bool cut_off = it != streams.end() && it->second.cut_off;
    if (it != streams.end()) streams.erase(it);
    return cut_off;
  }

  bool WorkOrNews() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return finished || shutting_down || scheduler.has_pending();
  }
  bool Stopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return finished || shutting_down; }
};

// One FetchState stream: the current snapshot's serialized messages, written
// one after another without a thread of its own, under the same cut-offs as
// an upload (OpenStream). Deletes itself when the call is done.
class GrpcTransport::StateSender final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  StateSender(Board* board, grpc::CallbackServerContext* context, const grpc::ByteBuffer* request)
      : board_(board) {
    if (grpc::Status refused = Open(context, request); !refused.ok()) {
      Finish(refused);
      return;
    }
    WriteNext();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {  // the worker went away, or the reaper cut the stream off
      Close(false);
      return;
    }
    if (messages_ == &snapshot_->messages) sent_ += snapshot_->payload[next_];
    ++next_;
    board_->Progress(stream_);
    WriteNext();
  }

  void OnDone() override { delete this; }

 private:
  grpc::Status Open(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    FetchStateRequest parsed;
    grpc::ByteBuffer copy(*request);
    if (!grpc::SerializationTraits<FetchStateRequest>::Deserialize(&copy, &parsed).ok())
      return Refusal(grpc::StatusCode::INVALID_ARGUMENT, "malformed FetchStateRequest");
    absl::MutexLock lock(&board_->mu);
    if (absl::Status s = board_->scheduler.Touch(parsed.worker_id(), absl::Now()); !s.ok()) return ToGrpc(s);
    snapshot_ = board_->snapshot;
    if (snapshot_ == nullptr || snapshot_->version != parsed.state_version())
      return Refusal(grpc::StatusCode::FAILED_PRECONDITION,
                     absl::StrCat("state version ", parsed.state_version(), " is not current (",
                                  snapshot_ ? snapshot_->version : 0, ")"));
    stream_ = board_->OpenStreamFor(context, snapshot_->bytes);
    messages_ = &snapshot_->messages;
    if (parsed.shared_folder() && !snapshot_->folder_messages.empty() && OverUnixSocket(*context)) {
      messages_ = &snapshot_->folder_messages;
      sent_ = static_cast<int64_t>(snapshot_->bytes);  // what the worker reads from the folder
    }
    return grpc::Status::OK;
  }

  void WriteNext() {
    if (next_ == messages_->size()) {
      Close(true);
      return;
    }
    StartWrite(&(*messages_)[next_]);
  }

  void Close(bool complete) {
    bool cut_off = false;
    {
      absl::MutexLock lock(&board_->mu);
      board_->stats.bytes_out += sent_;
      cut_off = board_->CloseStream(stream_);
    }
    if (cut_off) {
      Finish(Refusal(grpc::StatusCode::DEADLINE_EXCEEDED, "state fetch too slow; cut off"));
    } else {
      Finish(complete ? grpc::Status::OK : Refusal(grpc::StatusCode::CANCELLED, "worker went away"));
    }
  }

  Board* board_;
  std::shared_ptr<const Snapshot> snapshot_;
  const std::vector<grpc::ByteBuffer>* messages_ = nullptr;  // the snapshot's, for this worker
  uint64_t stream_ = 0;
  size_t next_ = 0;  // the message being written
  int64_t sent_ = 0;
};

// FetchState is served by callbacks (StateSender), the other calls by
// gRPC's sync server threads.
class GrpcTransport::Service final : public Coordinator::WithRawCallbackMethod_FetchState<Coordinator::Service> {
 public:
  explicit Service(Board* board) : board_(board) {}

  grpc::Status GetRunConfig(grpc::ServerContext* context, const RunConfigRequest*, RunConfigReply* reply) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    *reply->mutable_config() = board_->config;
    reply->set_protocol_version(kProtocolVersion);
    return grpc::Status::OK;
  }

  grpc::Status FetchModel(grpc::ServerContext* context, const FetchModelRequest*,
                          grpc::ServerWriter<ModelChunk>* writer) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    if (board_->model == nullptr)
      return Refusal(grpc::StatusCode::FAILED_PRECONDITION, "this run's model is built in: there is no file to fetch");
    const std::string& bytes = *board_->model;
    constexpr size_t kChunk = size_t{1} << 20;
    ModelChunk chunk;
    chunk.set_total_bytes(bytes.size());
    for (size_t at = 0; at < bytes.size(); at += kChunk) {
      chunk.set_data(bytes.substr(at, kChunk));
      if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "the worker went away");
    }
    return grpc::Status::OK;
  }

  grpc::Status Join(grpc::ServerContext* context, const JoinRequest* request, JoinReply* reply) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    if (request->protocol_version() != kProtocolVersion)
      return Refusal(grpc::StatusCode::FAILED_PRECONDITION,
                     absl::StrCat("worker speaks protocol ", request->protocol_version(), "; this coordinator ",
                                  kProtocolVersion, ": run the same reptile version on both"));
    if (request->model_sha256() != board_->config.model().torchscript_sha256())
      return Refusal(grpc::StatusCode::FAILED_PRECONDITION,
                     absl::StrCat("worker's model file has SHA-256 ", Printable(request->model_sha256(), 64),
                                  "; the run's model has ", board_->config.model().torchscript_sha256(),
                                  ": start the worker without --config to receive the coordinator's"));
    if (request->config_fingerprint() != board_->config_fingerprint)
      return Refusal(grpc::StatusCode::FAILED_PRECONDITION,
                     absl::StrCat("worker's config fingerprint ", Printable(request->config_fingerprint(), 16),
                                  " differs from the coordinator's ", board_->config_fingerprint.substr(0, 16),
                                  ": start the worker without --config to use the coordinator's"));
    if (request->layout_fingerprint() != board_->layout_fingerprint)
      return Refusal(grpc::StatusCode::FAILED_PRECONDITION,
                     absl::StrCat("worker's model layout fingerprint ", Printable(request->layout_fingerprint(), 16),
                                  " differs from the coordinator's ", board_->layout_fingerprint.substr(0, 16),
                                  ": run the same reptile version on both"));
    if (request->learners() > kMaxLearnersPerWorker)
      return Refusal(grpc::StatusCode::INVALID_ARGUMENT, absl::StrCat("a worker of ", request->learners(),
                                                                      " learners; at most ", kMaxLearnersPerWorker));
    const int learners = std::max<int>(1, static_cast<int>(request->learners()));
    const std::string name = Printable(request->worker_name(), 64);
    std::string line;
    {
      absl::MutexLock lock(&board_->mu);
      LeaseScheduler& scheduler = board_->scheduler;
      if (scheduler.num_workers() >= board_->max_workers)
        return Refusal(grpc::StatusCode::RESOURCE_EXHAUSTED,
                       absl::StrCat("the coordinator admits ", board_->max_workers,
                                    " workers at once (runtime.max_workers); try again later"));
      // Random ids: a worker of a previous coordinator must never pass for a
      // worker of this one.
      uint64_t id = 0;
      while (id == 0 || scheduler.has_worker(id)) id = board_->id_generator();
      scheduler.AddWorker(id, name, absl::Now(), learners);
      line = absl::StrCat("worker ", id, " (", name, " at ", Printable(context->peer(), 64),
                          learners > 1 ? absl::StrCat(", ", learners, " learners") : "", ") joined; ",
                          scheduler.num_workers(), " alive");
      if (scheduler.num_learners() > TrainingItemsPerRound(board_->config) && !board_->warned_idle) {
        board_->warned_idle = true;
        absl::StrAppend(&line, "\nWARNING: ", IdleWorkersWarning(scheduler.num_learners(), board_->config));
      }
      reply->set_worker_id(id);
    }
    if (board_->log) board_->log(line);
    reply->set_incarnation(board_->incarnation);
    reply->set_heartbeat_seconds(absl::ToDoubleSeconds(board_->heartbeat));
    if (OverUnixSocket(*context)) reply->set_shared_folder(board_->shared_folder);
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext* context, const HeartbeatRequest* request, HeartbeatReply*) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    absl::MutexLock lock(&board_->mu);
    return ToGrpc(board_->scheduler.Touch(request->worker_id(), absl::Now()));
  }

  grpc::Status Leave(grpc::ServerContext* context, const LeaveRequest* request, LeaveReply*) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    {
      absl::MutexLock lock(&board_->mu);
      board_->scheduler.RemoveWorker(request->worker_id(), "left");
    }
    board_->FlushLog();
    return grpc::Status::OK;
  }

  grpc::Status GetWork(grpc::ServerContext* context, const WorkRequest* request, WorkReply* reply) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    grpc::Status status = LeaseWork(request->worker_id(), static_cast<int>(std::min<uint32_t>(
                                                                    request->finished_leases(), kMaxLearnersPerWorker)),
                                    reply);
    if (status.ok() && request->shared_folder() && OverUnixSocket(*context))
      OfferFolderState(request->held_state_version(), reply);
    board_->FlushLog();
    return status;
  }

  grpc::ServerWriteReactor<grpc::ByteBuffer>* FetchState(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* request) override {
    return new StateSender(board_, context, request);
  }

  grpc::Status SubmitResult(grpc::ServerContext* context, grpc::ServerReader<ResultChunk>* reader,
                            SubmitReply* reply) override {
    if (grpc::Status s = CheckToken(board_->token, *context); !s.ok()) return s;
    grpc::Status status = ReceiveResult(context, reader, reply);
    board_->FlushLog();
    return status;
  }

 private:
  // A lease on a state the worker does not hold names that state's file in
  // the shared folder, so that the worker reads it there without a
  // FetchState call; counted in bytes_out as a fetch from the folder is.
  void OfferFolderState(uint64_t held_version, WorkReply* reply) {
    if (reply->kind() != WorkReply::TRAIN && reply->kind() != WorkReply::EVALUATE) return;
    if (reply->state_version() == held_version) return;
    absl::MutexLock lock(&board_->mu);
    const std::shared_ptr<const Snapshot>& snapshot = board_->snapshot;
    if (snapshot == nullptr || snapshot->version != reply->state_version() || snapshot->folder_messages.empty()) return;
    *reply->mutable_folder_state() = snapshot->folder_header;
    board_->stats.bytes_out += static_cast<int64_t>(snapshot->bytes);
  }

  // `finished`: leases the worker says it holds finished results of; it
  // is answered at once when it can be leased nothing.
  grpc::Status LeaseWork(uint64_t worker, int finished, WorkReply* reply) {
    Board& b = *board_;
    absl::MutexLock lock(&b.mu);
    if (absl::Status s = b.scheduler.Touch(worker, absl::Now()); !s.ok()) return ToGrpc(s);
    // Long-polls until there is work this worker may take, unless it holds
    // finished results to upload. Pending work it may not take (its share
    // of leases is out, or it was refused on it) is looked at again every
    // kRecheck, not in a spin.
    const absl::Time until = absl::Now() + kLongPoll;
    std::vector<LeaseScheduler::Grant> grants;
    while (true) {
      if (finished == 0) b.mu.AwaitWithDeadline(absl::Condition(&b, &Board::WorkOrNews), until);
      if (b.finished) {
        reply->set_kind(WorkReply::FINISHED);
        return grpc::Status::OK;
      }
      // A stopping coordinator never tells workers the run is over: they
      // keep retrying and join the next one.
      if (b.shutting_down) return Refusal(grpc::StatusCode::UNAVAILABLE, "the coordinator is stopping");
      if (absl::Status s = b.scheduler.Touch(worker, absl::Now()); !s.ok()) return ToGrpc(s);
      if (b.snapshot != nullptr) grants = b.scheduler.LeaseForLearners(worker, absl::Now(), finished);
      if (!grants.empty() || finished > 0 || absl::Now() >= until) break;
      b.mu.AwaitWithTimeout(absl::Condition(&b, &Board::Stopping), kRecheck);
    }
    if (grants.empty()) {
      reply->set_kind(WorkReply::WAIT);
      return grpc::Status::OK;
    }
    b.stats.tasks_in_flight = std::max(b.stats.tasks_in_flight, b.scheduler.active_leases());
    const WorkItem& work = (*b.items)[grants[0].item];
    reply->set_kind(work.kind == WorkKind::kTrain ? WorkReply::TRAIN : WorkReply::EVALUATE);
    reply->set_lease_id(grants[0].lease);
    reply->set_state_version(b.snapshot->version);
    for (const TaskSpec& task : work.tasks) *reply->add_tasks() = task;
    for (size_t k = 1; k < grants.size(); ++k) {
      LeasedItem* more = reply->add_more_items();
      more->set_lease_id(grants[k].lease);
      for (const TaskSpec& task : (*b.items)[grants[k].item].tasks) *more->add_tasks() = task;
    }
    return grpc::Status::OK;
  }

  grpc::Status ReceiveResult(grpc::ServerContext* context, grpc::ServerReader<ResultChunk>* reader,
                             SubmitReply* reply) {
    ResultHeader header;
    if (grpc::Status read = ReadResultHeader(context, reader, &header); !read.ok()) return read;
    Upload upload;
    if (std::optional<grpc::Status> ended = OpenUpload(context, header, reply, &upload)) return *ended;
    const bool folder_allowed = !board_->shared_folder.empty() && OverUnixSocket(*context);
    absl::StatusOr<TaskResult> result = ReadResult(header, reader, folder_allowed, &upload);
    return Deliver(context, header, std::move(result), upload, reply);
  }

  // The stream's first message, which must be its header. The stream counts
  // against its host from its first byte: a header that does not come
  // within kStreamIdle is cut off by the reaper, as a stalled upload is, and
  // a host already holding kMaxStreamsAwaitingHeaderPerHost streams so is
  // refused another.
  grpc::Status ReadResultHeader(grpc::ServerContext* context, grpc::ServerReader<ResultChunk>* reader,
                                ResultHeader* header) {
    Board& b = *board_;
    const std::string host = PeerHost(*context);
    uint64_t waiting = 0;
    {
      absl::MutexLock lock(&b.mu);
      if (b.awaiting_header[host] >= kMaxStreamsAwaitingHeaderPerHost) {
        ++b.streams_refused["too_many_streams"];
        return Refusal(grpc::StatusCode::RESOURCE_EXHAUSTED,
                       absl::StrCat(kMaxStreamsAwaitingHeaderPerHost,
                                    " result streams from this host are waiting for their header already"));
      }
      ++b.awaiting_header[host];
      waiting = b.OpenStreamFor(context, 0);
    }
    ResultChunk message;
    const bool read = reader->Read(&message);
    absl::MutexLock lock(&b.mu);
    if (--b.awaiting_header[host] == 0) b.awaiting_header.erase(host);
    if (b.CloseStream(waiting)) {
      ++b.streams_refused["no_header"];
      return Refusal(grpc::StatusCode::DEADLINE_EXCEEDED, "no result header in time; cut off");
    }
    if (!read || !message.has_header()) {
      ++b.streams_refused["invalid_result"];
      return Refusal(grpc::StatusCode::INVALID_ARGUMENT, "a result stream must start with its ResultHeader");
    }
    *header = message.header();
    return grpc::Status::OK;
  }

  // What an upload that may go on reads against.
  struct Upload {
    std::shared_ptr<const Snapshot> snapshot;
    std::vector<uint64_t> leases;  // the header's, then its node_items'
    std::vector<size_t> items;     // theirs
    // What the upload's tensors must cover: the kind of its items and all
    // of their tasks.
    WorkItem expected;
    uint64_t stream = 0;   // its registration with the reaper, until its bytes are in
    bool cut_off = false;  // the reaper cut it off first
  };

  // Checks `header` against the scheduler: the call's answer if it ends
  // here (stale, not this worker's lease, a duplicate, an error the worker
  // reports), or none with `upload` filled in to read the tensors.
  std::optional<grpc::Status> OpenUpload(grpc::ServerContext* context, const ResultHeader& header,
                                         SubmitReply* reply, Upload* upload) {
    Board& b = *board_;
    absl::MutexLock lock(&b.mu);
    LeaseScheduler& scheduler = b.scheduler;
    // A worker given up on (dropped, not evicted) may still deliver.
    absl::Status alive = scheduler.Touch(header.worker_id(), absl::Now());
    if (absl::IsPermissionDenied(alive)) return ToGrpc(alive);
    if (b.snapshot == nullptr || header.state_version() != b.snapshot->version)
      return Refusal(grpc::StatusCode::FAILED_PRECONDITION,
                     absl::StrCat("stale result: lease ", header.lease_id(), " ran on state version ",
                                  header.state_version(), "; the current one is ",
                                  b.snapshot ? b.snapshot->version : 0));
    std::vector<uint64_t> leases = {header.lease_id()};
    for (const NodeItem& item : header.node_items()) leases.push_back(item.lease_id());
    absl::StatusOr<std::vector<size_t>> items = scheduler.BeginUpload(header.worker_id(), leases);
    if (absl::IsAlreadyExists(items.status())) {
      scheduler.Duplicate(header.worker_id(), leases);
      reply->set_duplicate(true);
      return grpc::Status::OK;
    }
    if (!items.ok()) return ToGrpc(items.status());
    if (!header.error().empty()) {
      scheduler.Refuse(leases, absl::StrCat("the worker failed: ", Printable(header.error(), 300)),
                       RefusalReason::kWorkerError);
      return grpc::Status::OK;
    }
    upload->expected.kind = (*b.items)[(*items)[0]].kind;
    for (size_t item : *items) {
      const WorkItem& work = (*b.items)[item];
      if (work.kind != upload->expected.kind) {
        scheduler.Refuse(leases, "one upload for training and evaluation items");
        return Refusal(grpc::StatusCode::INVALID_ARGUMENT, "one upload for training and evaluation items");
      }
      upload->expected.tasks.insert(upload->expected.tasks.end(), work.tasks.begin(), work.tasks.end());
    }
    upload->snapshot = b.snapshot;
    upload->leases = std::move(leases);
    upload->items = *std::move(items);
    upload->stream = b.OpenStreamFor(context, ExpectedBytes(header, upload->expected, *upload->snapshot));
    return std::nullopt;
  }

  // Hands a result that was read to the round engine, one item at a time,
  // and tells the scheduler how it went. A node's upload goes as its first
  // item's result, holding the sums over all of them, and the others'
  // scalars. A result counts as accepted once the engine has taken it, and
  // only while its batch is on and its items still open. Uploads of other
  // items are handed over side by side; one of an item being handed over
  // waits for the first to be taken or refused.
  grpc::Status Deliver(grpc::ServerContext* context, const ResultHeader& header, absl::StatusOr<TaskResult> result,
                       const Upload& upload, SubmitReply* reply) {
    Board& b = *board_;
    absl::ReaderMutexLock take_lock(&b.take_mu);
    const ResultSink* take = nullptr;
    {
      absl::MutexLock lock(&b.mu);
      auto free = [&b, &upload]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(b.mu) {
        return std::none_of(upload.items.begin(), upload.items.end(),
                            [&b](size_t item) { return b.being_taken.count(item) > 0; });
      };
      b.mu.Await(absl::Condition(&free));
      if (!result.ok()) {
        if (upload.cut_off) {
          b.scheduler.Refuse(upload.leases, "upload too slow; cut off", RefusalReason::kUploadTooSlow);
          return Refusal(grpc::StatusCode::DEADLINE_EXCEEDED, "upload too slow; cut off");
        }
        if (context->IsCancelled()) {
          b.scheduler.Lost(upload.leases);
          return Refusal(grpc::StatusCode::CANCELLED, "upload cut off in transit");
        }
        b.scheduler.Refuse(upload.leases, std::string(result.status().message()));
        return ToGrpc(result.status());
      }
      if (b.snapshot != upload.snapshot)
        return Refusal(grpc::StatusCode::FAILED_PRECONDITION, "stale result: the batch ended while it arrived");
      if (!b.scheduler.OpenItems(upload.leases).ok()) {
        b.scheduler.Accept(upload.leases, absl::Now());  // closes the upload of a duplicate
        reply->set_duplicate(true);
        return grpc::Status::OK;
      }
      take = b.take;
      b.being_taken.insert(upload.items.begin(), upload.items.end());
    }
    std::vector<TaskResult> per_item = SplitNodeResult(header, *std::move(result), upload);
    absl::Status taken = absl::OkStatus();
    for (size_t k = 0; k < per_item.size() && taken.ok(); ++k)
      taken = (*take)(upload.items[k], std::move(per_item[k]));
    absl::MutexLock lock(&b.mu);
    for (size_t item : upload.items) b.being_taken.erase(item);
    if (!taken.ok()) {
      const std::string why = absl::StrCat("lease ", header.lease_id(), ": ", taken.message());
      b.scheduler.Refuse(upload.leases, why);
      return Refusal(grpc::StatusCode::INVALID_ARGUMENT, why);
    }
    b.scheduler.Accept(upload.leases, absl::Now());
    return grpc::Status::OK;
  }

  // One result per item of `upload`: the first holds the decoded tensors,
  // summed over the items of its training work, the others their own
  // scalars from the header's node_items.
  static std::vector<TaskResult> SplitNodeResult(const ResultHeader& header, TaskResult result, const Upload& upload) {
    std::vector<TaskResult> per_item;
    const bool train = upload.expected.kind == WorkKind::kTrain;
    for (int k = 1; k < static_cast<int>(upload.items.size()); ++k) {
      const NodeItem& node_item = header.node_items(k - 1);
      TaskResult& scalars = per_item.emplace_back();
      scalars.loss = node_item.loss();
      scalars.correct = node_item.correct();
      scalars.correct_inductive = node_item.correct_inductive();
      scalars.predictions = node_item.predictions();
      scalars.compute_seconds = node_item.compute_seconds();
      scalars.tensors_elsewhere = train;
      if (train) result.summed_with.push_back(static_cast<int>(upload.items[k]));
    }
    per_item.insert(per_item.begin(), std::move(result));
    return per_item;
  }

  // Bytes a result for `work` must carry, decided by the coordinator.
  static size_t ExpectedBytes(const ResultHeader& header, const WorkItem& work, const Snapshot& snapshot) {
    if (work.kind != WorkKind::kTrain) return 0;
    const size_t n = static_cast<size_t>(snapshot.numel);
    const size_t moments = (snapshot.moments.first ? 1 : 0) + (snapshot.moments.second ? 1 : 0);
    if (work.tasks.size() > 1) return (1 + moments) * ExactSum::MaxCompactBytes(snapshot.numel);
    return n * std::max<size_t>(DeltaDtypeBytes(header.delta_dtype()), 4) + moments * n * 4;
  }

  // Reads the rest of a result stream, or the result file it names, and
  // checks it against what the task must return. Every failure is
  // InvalidArgument saying what is wrong.
  // The reaper watches the stream until its bytes are in, not while they
  // are decoded: many large results decoded at once on a busy coordinator
  // must not look like stalled uploads.
  absl::StatusOr<TaskResult> ReadResult(const ResultHeader& header, grpc::ServerReader<ResultChunk>* reader,
                                        bool folder_allowed, Upload* upload) {
    auto invalid = [&](absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat("lease ", header.lease_id(), ": ", what));
    };
    const ResultShape shape{upload->snapshot->numel, upload->snapshot->moments, board_->meta_batch};
    absl::StatusOr<std::vector<size_t>> sizes = ResultPayloadSizes(header, upload->expected, shape);
    absl::StatusOr<std::vector<std::string>> payload =
        !sizes.ok() ? invalid(sizes.status().message())
        : header.in_shared_folder() ? ReadFolderPayload(header, *sizes, reader, folder_allowed, invalid)
                                    : ReadStreamPayload(*sizes, reader, upload->stream, invalid);
    {
      absl::MutexLock lock(&board_->mu);
      upload->cut_off = board_->CloseStream(upload->stream);
    }
    if (!payload.ok()) return payload.status();
    absl::StatusOr<TaskResult> result = DecodeResult(header, upload->expected, shape, *std::move(payload));
    if (!result.ok()) return invalid(result.status().message());
    return result;
  }

  // The tensors of `sizes` from the chunks that follow the header.
  template <typename Invalid>
  absl::StatusOr<std::vector<std::string>> ReadStreamPayload(const std::vector<size_t>& sizes,
                                                             grpc::ServerReader<ResultChunk>* reader, uint64_t stream,
                                                             const Invalid& invalid) {
    TensorAssembler assembler(sizes);
    ResultChunk message;
    absl::Status problem;
    while (problem.ok() && reader->Read(&message)) {
      if (!message.has_chunk()) {
        problem = invalid("a result stream has one header, at its start");
      } else if (absl::Status added = assembler.Add(std::move(*message.mutable_chunk())); !added.ok()) {
        problem = invalid(std::string(added.message()));
      }
      board_->Progress(stream);
    }
    {
      absl::MutexLock lock(&board_->mu);
      board_->stats.bytes_in += assembler.bytes_received();
    }
    RETURN_IF_ERROR(problem);
    if (absl::Status done = assembler.Finish(); !done.ok()) return invalid(std::string(done.message()));
    std::vector<std::string> payload;
    for (size_t i = 0; i < sizes.size(); ++i) payload.push_back(std::move(assembler.bytes(i)));
    return payload;
  }

  // The tensors of `sizes` from the result file the header names; the
  // stream must end with the header.
  template <typename Invalid>
  absl::StatusOr<std::vector<std::string>> ReadFolderPayload(const ResultHeader& header,
                                                             const std::vector<size_t>& sizes,
                                                             grpc::ServerReader<ResultChunk>* reader,
                                                             bool folder_allowed, const Invalid& invalid) {
    if (!folder_allowed) return invalid("results come through the shared folder only over the coordinator's Unix socket");
    ResultChunk message;
    if (reader->Read(&message)) return invalid("a result in the shared folder has no chunks on the stream");
    absl::StatusOr<std::vector<std::string>> payload =
        ReadTensorFile(SharedResultPath(board_->shared_folder, header.worker_id()), sizes);
    if (!payload.ok()) return invalid(std::string(payload.status().message()));
    size_t bytes = 0;
    for (size_t size : sizes) bytes += size;
    absl::MutexLock lock(&board_->mu);
    board_->stats.bytes_in += static_cast<int64_t>(bytes);
    return payload;
  }

  Board* board_;
};

std::string IdleWorkersWarning(int workers, const ExperimentConfig& config) {
  const int items = TrainingItemsPerRound(config);
  return absl::StrCat(workers, " workers for a training round of ", items, " work items (outer.meta_batch_size ",
                      config.outer().meta_batch_size(), ", runtime.tasks_per_item ",
                      std::max(1, config.runtime().tasks_per_item()), "): ", workers - items,
                      " sit idle in every training round (evaluations use them all). Raise outer.meta_batch_size, "
                      "lower runtime.tasks_per_item or run fewer workers; docs/distributed.md \"Scaling\" explains the choice");
}

namespace {

// Bounds on what any peer can make the server hold (docs/security.md): one
// chunk per message, a few streams per connection, and a thread and memory
// quota sized by runtime.max_workers.
void BoundWhatPeersCanHold(grpc::ServerBuilder& builder, int max_workers) {
  builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxMessageBytes));
  builder.SetMaxSendMessageSize(static_cast<int>(kMaxMessageBytes));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kMaxStreamsPerConnection);
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 16 << 10);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8 << 20);
  const GrpcTransport::ServerBounds bounds = GrpcTransport::Bounds(max_workers);
  grpc::ResourceQuota quota("reptile-coordinator");
  quota.SetMaxThreads(bounds.threads);
  quota.Resize(bounds.grpc_memory_bytes);
  builder.SetResourceQuota(quota);
  // A sync server thread that has served a call polls for the next one
  // instead of exiting (gRPC's default keeps 2 pollers and ends the rest):
  // otherwise every call of every worker, every round, costs a thread
  // created and destroyed, most of the coordinator's CPU at 64 workers
  // (bench/cluster_bench). The quota above still bounds the threads.
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, bounds.threads);
}

}  // namespace

GrpcTransport::GrpcTransport() = default;

absl::StatusOr<std::unique_ptr<GrpcTransport>> GrpcTransport::Create(const ExperimentConfig& config,
                                                                     Options options) {
  RETURN_IF_ERROR(CheckListenAddress(options));
  if (options.unix_socket.size() >= sizeof(sockaddr_un::sun_path))
    return absl::InvalidArgumentError(absl::StrCat("Unix socket path ", options.unix_socket, " is longer than ",
                                                   sizeof(sockaddr_un::sun_path) - 1, " characters"));
  std::unique_ptr<GrpcTransport> transport(new GrpcTransport());
  const RuntimeConfig& r = config.runtime();
  auto seconds_or = [](float value, double fallback) { return absl::Seconds(value > 0 ? value : fallback); };
  LeasePolicy policy;
  policy.worker_timeout = seconds_or(r.worker_timeout_seconds(), 6);
  policy.task_timeout = seconds_or(r.task_timeout_seconds(), 600);
  policy.heartbeat = seconds_or(r.heartbeat_seconds(), 1);
  policy.max_task_attempts = r.max_task_attempts() > 0 ? r.max_task_attempts() : 2;
  transport->board_ = std::make_unique<Board>(policy);
  Board& b = *transport->board_;
  ASSIGN_OR_RETURN(std::shared_ptr<MetaModel> model, MakeModel(config, std::nullopt));
  b.layout_fingerprint = LayoutFingerprint(FlatParameters(*model).layout());
  if (config.model().arch() == TORCHSCRIPT) {
    ASSIGN_OR_RETURN(b.model, TorchScriptBytes(config));
  }
  b.config_fingerprint = ConfigFingerprint(config);
  b.config = config;
  b.token = options.token;
  b.shared_folder = options.shared_folder;
  b.log = options.log;
  b.heartbeat = seconds_or(r.heartbeat_seconds(), 1);
  b.max_workers = r.max_workers() > 0 ? r.max_workers() : 256;
  b.start_with_learners = r.start_with_learners();
  b.meta_batch = config.outer().meta_batch_size();
  b.incarnation = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);

  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials, MakeServerCredentials(options.tls));
  transport->service_ = std::make_unique<Service>(&b);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, credentials, &transport->port_);
  if (!options.unix_socket.empty())
    builder.AddListeningPort(absl::StrCat("unix:", options.unix_socket), grpc::InsecureServerCredentials());
  builder.RegisterService(transport->service_.get());
  BoundWhatPeersCanHold(builder, b.max_workers);
  transport->server_ = builder.BuildAndStart();
  if (transport->server_ == nullptr || transport->port_ == 0)
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen_address,
                                               " (address in use, or not an address of this host?)"));
  transport->server_->GetHealthCheckService()->SetServingStatus("reptile.Coordinator", true);
  transport->reaper_ = std::thread(&GrpcTransport::ReapLoop, transport.get());
  return transport;
}

GrpcTransport::~GrpcTransport() {
  {
    absl::MutexLock lock(&board_->mu);
    board_->shutting_down = true;
  }
  if (reaper_.joinable()) reaper_.join();
  if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

void GrpcTransport::ReapLoop() {
  NameThisThread("reaper");
  Board& b = *board_;
  for (int tick = 1;; ++tick) {
    if (tick % kTrimEveryTicks == 0) ReturnFreeMemory();
    {
      absl::MutexLock lock(&b.mu);
      b.mu.AwaitWithTimeout(absl::Condition(&b.shutting_down), kReapEvery);
      if (b.shutting_down) return;
      const absl::Time now = absl::Now();
      b.scheduler.Tick(now);
      for (auto& [id, stream] : b.streams) {
        if (stream.cut_off || (now < stream.deadline && now - stream.last_progress < kStreamIdle)) continue;
        stream.cut_off = true;
        stream.context->TryCancel();
      }
    }
    b.FlushLog();
  }
}

namespace {

// State `version` as workers fetch it, each message serialized once; also
// in `state_file` for workers on the shared folder, if one is given and it
// can be written (else `log` says why).
std::shared_ptr<Snapshot> MakeSnapshot(const MetaState& state, CarriedMoments moments, uint64_t version,
                                       const std::string& state_file,
                                       const std::function<void(const std::string&)>& log) {
  auto snapshot = std::make_shared<Snapshot>();
  snapshot->numel = state.parameters.numel();
  snapshot->moments = moments;
  snapshot->version = version;
  // Serialized from where the tensors lie (they outlive this use of them).
  std::string encoded[3];
  std::vector<absl::string_view> tensors = {WireBytes(state.parameters, DELTA_FP32, &encoded[0])};
  if (moments.first) tensors.push_back(WireBytes(state.adam_m, DELTA_FP32, &encoded[1]));
  if (moments.second) tensors.push_back(WireBytes(state.adam_v, DELTA_FP32, &encoded[2]));
  StateChunk message;
  StateHeader* header = message.mutable_header();
  header->set_num_parameters(snapshot->numel);
  header->set_has_moments(moments.second);
  header->set_has_first_moment(moments.first);
  header->set_adam_step(state.adam_step);
  header->set_state_version(version);
  snapshot->messages.push_back(Serialized(message));
  snapshot->payload.push_back(0);
  if (!state_file.empty()) {
    if (absl::Status written = WriteTensorFile(state_file, tensors); written.ok()) {
      header->set_in_shared_folder(true);
      snapshot->folder_messages.push_back(Serialized(message));
      snapshot->folder_header = *header;
    } else if (log) {
      log(absl::StrCat("state ", version, " goes on the stream to every worker: ", written.message()));
    }
  }
  WriteChunks(tensors, [&](TensorChunk* chunk) {
    const size_t bytes = chunk->data().size();
    message.mutable_chunk()->Swap(chunk);
    snapshot->messages.push_back(Serialized(message));
    snapshot->payload.push_back(bytes);
    snapshot->bytes += bytes;
    return true;
  });
  return snapshot;
}

}  // namespace

absl::Status GrpcTransport::Run(const MetaState& state, const std::vector<WorkItem>& items,
                                const ResultSink& take) {
  Board& b = *board_;
  const CarriedMoments moments = CarriedMomentsOf(b.config);
  if (CarriedMomentsOf(state) != moments)
    return absl::InvalidArgumentError("meta-state's Adam moments are not those the run's config carries");
  uint64_t version = 0;
  {
    absl::MutexLock lock(&b.mu);
    version = b.last_version + 1;  // only Run() changes it
  }
  // Workers on the shared folder read the tensors from a file, written
  // once per state (removed when its batch ends).
  const std::string state_file = b.shared_folder.empty() ? std::string() : SharedStatePath(b.shared_folder, version);
  absl::Cleanup remove_state_file = [&state_file] {
    if (!state_file.empty()) unlink(state_file.c_str());
  };
  std::shared_ptr<Snapshot> snapshot = MakeSnapshot(state, moments, version, state_file, b.log);
  std::vector<int> kinds;
  for (const WorkItem& item : items) kinds.push_back(static_cast<int>(item.kind));
  // The first batch waits for runtime.start_with_learners.
  auto may_start = [&b]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(b.mu) {
    return b.started || b.scheduler.num_learners() >= b.start_with_learners || !b.interrupted.empty();
  };
  bool waits = false;
  {
    absl::MutexLock lock(&b.mu);
    waits = !may_start();
  }
  if (waits && b.log)
    b.log(absl::StrCat("waiting for workers with ", b.start_with_learners,
                       " learners in all to join (runtime.start_with_learners)"));
  absl::MutexLock lock(&b.mu);
  b.mu.Await(absl::Condition(&may_start));
  if (!b.interrupted.empty()) return absl::CancelledError(b.interrupted);
  b.started = true;
  b.last_version = snapshot->version;
  b.snapshot = snapshot;
  b.items = &items;
  b.take = &take;
  b.scheduler.StartBatch(std::move(kinds));
  b.stats.tasks_in_flight = 0;
  auto done = [&b]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(b.mu) {
    return b.scheduler.batch_done() || !b.scheduler.failure().empty() || !b.interrupted.empty();
  };
  b.mu.Await(absl::Condition(&done));
  // No result may be handed to `take` once Run() returns: wait for those
  // being handed over (take_mu comes before mu).
  b.mu.Unlock();
  b.take_mu.Lock();
  b.mu.Lock();
  absl::Status status;
  if (!b.scheduler.batch_done()) {
    status = !b.interrupted.empty() ? absl::CancelledError(b.interrupted) : absl::AbortedError(b.scheduler.failure());
  }
  b.snapshot = nullptr;
  b.items = nullptr;
  b.take = nullptr;
  b.scheduler.EndBatch();
  b.take_mu.Unlock();
  return status;
}

int GrpcTransport::num_workers() const {
  absl::MutexLock lock(&board_->mu);
  return board_->scheduler.num_workers();
}

TransportStats GrpcTransport::Stats() const {
  absl::MutexLock lock(&board_->mu);
  TransportStats stats = board_->stats;
  stats.workers_alive = board_->scheduler.num_workers();
  const SchedulerCounters& counters = board_->scheduler.counters();
  stats.tasks_redone = counters.tasks_redone;
  stats.results_refused = counters.results_refused;
  stats.results_refused_by_reason = counters.results_refused_by_reason;
  for (const auto& [reason, count] : board_->streams_refused) {
    stats.results_refused += count;
    stats.results_refused_by_reason[reason] += count;
  }
  stats.workers_evicted = counters.workers_evicted;
  return stats;
}

void GrpcTransport::Interrupt(const std::string& why) {
  absl::MutexLock lock(&board_->mu);
  board_->interrupted = why.empty() ? "interrupted" : why;
}

void GrpcTransport::Finish(absl::Duration grace) {
  Board& b = *board_;
  absl::MutexLock lock(&b.mu);
  b.finished = true;
  // A worker dropped for silence within the last `grace` may be in an outage
  // that is about to pass: the coordinator stays until `grace` has passed
  // since then, so that it can rejoin and be told the run is over instead of
  // retrying a coordinator that is gone.
  const absl::Time until = absl::Now() + grace;
  auto done = [&b, grace]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(b.mu) {
    return b.scheduler.num_workers() == 0 && absl::Now() >= b.scheduler.last_lost() + grace;
  };
  while (!done() && absl::Now() < until)
    b.mu.AwaitWithDeadline(absl::Condition(&done), std::min(until, absl::Now() + kRecheck));
}

}  // namespace reptile
