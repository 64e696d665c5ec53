#include "transport/grpc/coordinator_client.h"

#include "absl/strings/str_cat.h"
#include "core/models/torchscript_model.h"
#include "core/status_macros.h"
#include "transport/wire/result_codec.h"
#include "transport/wire/shared_folder.h"
#include "transport/wire/tensor_stream.h"

namespace reptile {
namespace {

constexpr std::chrono::seconds kShortCall(10);
constexpr std::chrono::seconds kTensorCall(120);

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace

bool IsTransient(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kInternal:
      return true;
    default:
      return false;
  }
}

absl::StatusOr<std::unique_ptr<CoordinatorClient>> CoordinatorClient::Connect(const std::string& address,
                                                                              const SecurityOptions& security) {
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, MakeChannel(address, security));
  auto client = std::make_unique<CoordinatorClient>(std::move(channel), security.token);
  client->address_ = address;
  client->security_ = security;
  return client;
}

CoordinatorClient::CoordinatorClient(std::shared_ptr<grpc::Channel> channel, std::string token)
    : token_(std::move(token)), stub_(Coordinator::NewStub(channel)) {}

std::shared_ptr<Coordinator::Stub> CoordinatorClient::stub() const {
  absl::MutexLock lock(&mu_);
  return stub_;
}

void CoordinatorClient::Reconnect() {
  if (address_.empty()) return;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel(address_, security_);
  if (!channel.ok()) return;  // the same files made the first channel; keep it
  std::shared_ptr<Coordinator::Stub> stub = Coordinator::NewStub(*channel);
  absl::MutexLock lock(&mu_);
  stub_ = std::move(stub);
}

template <typename Call>
absl::Status CoordinatorClient::Unary(std::chrono::seconds deadline, Call call) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + deadline);
  AttachToken(token_, &context);
  return FromGrpc(call(&context));
}

absl::StatusOr<RunConfigReply> CoordinatorClient::GetRunConfig() {
  RunConfigReply reply;
  RETURN_IF_ERROR(Unary(kShortCall, [&](grpc::ClientContext* c) { return stub()->GetRunConfig(c, {}, &reply); }));
  return reply;
}

absl::StatusOr<std::string> CoordinatorClient::FetchModel(const std::string& sha256, uint64_t max_bytes) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kTensorCall);
  AttachToken(token_, &context);
  std::unique_ptr<grpc::ClientReader<ModelChunk>> reader = stub()->FetchModel(&context, {});
  std::string bytes;
  uint64_t total = 0;
  ModelChunk chunk;
  absl::Status refused;
  while (refused.ok() && reader->Read(&chunk)) {
    if (bytes.empty()) {
      total = chunk.total_bytes();
      if (total > max_bytes)
        refused = absl::DataLossError(absl::StrCat("the coordinator announces a model of ", total,
                                                   " bytes; this worker takes at most ", max_bytes));
      else
        bytes.reserve(total);
    }
    if (refused.ok() && (chunk.total_bytes() != total || chunk.data().size() > total - bytes.size()))
      refused = absl::DataLossError("the coordinator sent more model bytes than it announced");
    if (refused.ok()) bytes += chunk.data();
  }
  if (!refused.ok()) {
    context.TryCancel();
    (void)reader->Finish();
    return refused;
  }
  RETURN_IF_ERROR(FromGrpc(reader->Finish()));
  if (bytes.size() != total || TorchScriptDigest(bytes) != sha256)
    return absl::DataLossError(absl::StrCat("the model received (", bytes.size(), " bytes) is not the run's (SHA-256 ",
                                            sha256, ")"));
  return bytes;
}

absl::StatusOr<JoinReply> CoordinatorClient::Join(const JoinRequest& request) {
  JoinReply reply;
  RETURN_IF_ERROR(Unary(kShortCall, [&](grpc::ClientContext* c) { return stub()->Join(c, request, &reply); }));
  return reply;
}

absl::Status CoordinatorClient::Heartbeat(uint64_t worker) {
  HeartbeatRequest request;
  request.set_worker_id(worker);
  HeartbeatReply reply;
  return Unary(std::chrono::seconds(2), [&](grpc::ClientContext* c) { return stub()->Heartbeat(c, request, &reply); });
}

absl::StatusOr<WorkReply> CoordinatorClient::GetWork(uint64_t worker, bool shared_folder,
                                                     uint64_t held_state_version, int finished_leases) {
  WorkRequest request;
  request.set_worker_id(worker);
  request.set_finished_leases(static_cast<uint32_t>(std::max(0, finished_leases)));
  request.set_shared_folder(shared_folder);
  request.set_held_state_version(held_state_version);
  WorkReply reply;
  RETURN_IF_ERROR(Unary(kShortCall, [&](grpc::ClientContext* c) { return stub()->GetWork(c, request, &reply); }));
  return reply;
}

absl::Status CoordinatorClient::Leave(uint64_t worker) {
  LeaveRequest request;
  request.set_worker_id(worker);
  LeaveReply reply;
  return Unary(kShortCall, [&](grpc::ClientContext* c) { return stub()->Leave(c, request, &reply); });
}

namespace {

// The byte sizes of a state's tensors: parameters, then m and v if carried.
std::vector<size_t> StateSizes(int64_t numel, CarriedMoments moments) {
  return std::vector<size_t>(1 + (moments.first ? 1 : 0) + (moments.second ? 1 : 0), static_cast<size_t>(numel) * 4);
}

absl::Status CheckStateHeader(const StateHeader& header, uint64_t version, int64_t numel, CarriedMoments moments) {
  if (header.state_version() == version && header.num_parameters() == numel &&
      header.has_moments() == moments.second && header.has_first_moment() == moments.first)
    return absl::OkStatus();
  return absl::DataLossError(absl::StrCat("state header does not fit this model: version ", header.state_version(),
                                          ", ", header.num_parameters(), " parameters",
                                          header.has_moments() ? " with moments" : "",
                                          header.has_first_moment() ? " with a first moment" : ""));
}

// The state from its tensors' bytes, in StateSizes() order.
absl::StatusOr<MetaState> DecodeState(std::vector<std::string> payload, const StateHeader& header, int64_t numel,
                                      CarriedMoments moments) {
  MetaState state;
  ASSIGN_OR_RETURN(state.parameters, DecodeTensor(std::move(payload[0]), DELTA_FP32, numel));
  if (moments.first) {
    ASSIGN_OR_RETURN(state.adam_m, DecodeTensor(std::move(payload[1]), DELTA_FP32, numel));
  }
  if (moments.second) {
    ASSIGN_OR_RETURN(state.adam_v, DecodeTensor(std::move(payload[moments.first ? 2 : 1]), DELTA_FP32, numel));
  }
  state.adam_step = header.adam_step();
  return state;
}

}  // namespace

absl::StatusOr<MetaState> ReadFolderState(const StateHeader& header, uint64_t version, int64_t numel,
                                          CarriedMoments moments, const std::string& shared_folder) {
  absl::Status problem = CheckStateHeader(header, version, numel, moments);
  if (problem.ok() && (!header.in_shared_folder() || shared_folder.empty()))
    problem = absl::DataLossError("state header does not point to a shared folder this worker reads");
  if (problem.ok()) {
    absl::StatusOr<std::vector<std::string>> read =
        ReadTensorFile(SharedStatePath(shared_folder, version), StateSizes(numel, moments));
    if (absl::IsNotFound(read.status()))
      return absl::FailedPreconditionError(absl::StrCat("state ", version, " is gone: its batch ended"));
    absl::StatusOr<MetaState> state =
        read.ok() ? DecodeState(*std::move(read), header, numel, moments) : read.status();
    if (state.ok()) return state;
    problem = state.status();
  }
  return absl::DataLossError(absl::StrCat("bad state from the coordinator: ", problem.message()));
}

absl::StatusOr<MetaState> CoordinatorClient::FetchState(uint64_t worker, uint64_t version, int64_t numel,
                                                        CarriedMoments moments, const std::string& shared_folder) {
  FetchStateRequest request;
  request.set_worker_id(worker);
  request.set_state_version(version);
  request.set_shared_folder(!shared_folder.empty());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kTensorCall);
  AttachToken(token_, &context);
  const std::shared_ptr<Coordinator::Stub> stub = this->stub();  // outlives the reader
  std::unique_ptr<grpc::ClientReader<StateChunk>> reader = stub->FetchState(&context, request);
  StateChunk message;
  absl::Status problem;
  StateHeader header;
  if (!reader->Read(&message) || !message.has_header()) {
    problem = absl::DataLossError("state stream did not start with its header");
  } else {
    header = message.header();
    problem = CheckStateHeader(header, version, numel, moments);
  }
  if (problem.ok() && header.in_shared_folder() && shared_folder.empty())
    problem = absl::DataLossError("state said to be in a shared folder this worker was not offered");
  TensorAssembler assembler(StateSizes(numel, moments));
  while (reader->Read(&message)) {
    if (!problem.ok()) continue;  // drain, so that Finish() reports the call's own status
    if (header.in_shared_folder()) {
      problem = absl::DataLossError("chunks after a header that points to the shared folder");
    } else {
      problem = message.has_chunk() ? assembler.Add(std::move(*message.mutable_chunk()))
                                    : absl::DataLossError("second state header");
    }
  }
  RETURN_IF_ERROR(FromGrpc(reader->Finish()));
  if (problem.ok() && header.in_shared_folder()) return ReadFolderState(header, version, numel, moments, shared_folder);
  if (problem.ok()) problem = assembler.Finish();
  if (problem.ok()) {
    std::vector<std::string> payload;
    for (size_t i = 0; i < StateSizes(numel, moments).size(); ++i) payload.push_back(std::move(assembler.bytes(i)));
    absl::StatusOr<MetaState> state = DecodeState(std::move(payload), header, numel, moments);
    if (state.ok()) return state;
    problem = state.status();
  }
  return absl::DataLossError(absl::StrCat("bad state from the coordinator: ", problem.message()));
}

std::vector<ResultChunk> CoordinatorClient::ResultMessages(uint64_t worker, const WorkReply& work,
                                                           const absl::StatusOr<TaskResult>& result,
                                                           DeltaDtype dtype, int64_t numel,
                                                           const std::string& shared_folder) {
  EncodedResult encoded = EncodeResult(result, dtype, numel);
  std::vector<ResultChunk> messages(1);
  ResultHeader* header = messages[0].mutable_header();
  *header = std::move(encoded.header);
  header->set_worker_id(worker);
  header->set_lease_id(work.lease_id());
  header->set_state_version(work.state_version());
  const std::vector<absl::string_view>& tensors = encoded.tensors;
  if (!shared_folder.empty() && !tensors.empty() &&
      OverwriteTensorFile(SharedResultPath(shared_folder, worker), tensors).ok()) {
    header->set_in_shared_folder(true);
    return messages;
  }
  WriteChunks(tensors, [&](TensorChunk* chunk) {
    messages.emplace_back().mutable_chunk()->Swap(chunk);
    return true;
  });
  return messages;
}

std::unique_ptr<CoordinatorClient::Upload> CoordinatorClient::StartUpload(std::chrono::seconds deadline) {
  auto upload = std::unique_ptr<Upload>(new Upload());
  upload->context_.set_deadline(std::chrono::system_clock::now() + deadline);
  AttachToken(token_, &upload->context_);
  upload->stub_ = stub();
  upload->writer_ = upload->stub_->SubmitResult(&upload->context_, &upload->reply_);
  return upload;
}

absl::StatusOr<SubmitReply> CoordinatorClient::Upload::Finish() {
  writer_->WritesDone();
  RETURN_IF_ERROR(FromGrpc(writer_->Finish()));
  return reply_;
}

absl::StatusOr<SubmitReply> CoordinatorClient::Submit(const std::vector<ResultChunk>& messages) {
  std::unique_ptr<Upload> upload = StartUpload(kTensorCall);
  for (const ResultChunk& message : messages)
    if (!upload->Write(message)) break;  // the server ended the call; Finish() says why
  return upload->Finish();
}

}  // namespace reptile
