#include "transport/mpi/mpi_transport.h"

#include <mpi.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

// What rank 0 broadcasts ahead of every batch.
enum Command : int64_t { kFinish = 0, kBatch = 1 };
struct BatchHeader {
  int64_t command = kFinish;
  int64_t numel = 0;
  int64_t has_moments = 0;       // Adam's v follows the parameters (CARRY)
  int64_t adam_step = 0;
  int64_t batch_bytes = 0;  // serialized WorkBatch
  int64_t reduce_sum = 0;   // MPI_REDUCE_SUM: results carry scalars, tensors go by MPI_Reduce
  int64_t has_first_moment = 0;  // and Adam's m, ahead of v (not when adam_beta1 is 0)
};

// A result's scalars, sent ahead of its tensors.
struct ResultHeader {
  double loss = 0;
  int64_t correct = 0, correct_inductive = 0, predictions = 0;
  double compute_seconds = 0;
  int64_t has_delta = 0, has_moments = 0, has_first_moment = 0;
  int64_t error_bytes = 0;  // > 0: the learner failed; the message follows
};

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

// Waits for `request` without spinning: Open MPI busy-polls inside blocking
// calls, which on a machine with as many ranks as cores takes the core a
// computing rank needs. A 50 us nap between tests costs little latency.
void Wait(MPI_Request* request) {
  int done = 0;
  while (true) {
    MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (done) return;
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void Broadcast(void* data, int count, MPI_Datatype type) {
  MPI_Request request;
  MPI_Ibcast(data, count, type, 0, MPI_COMM_WORLD, &request);
  Wait(&request);
}

// Sums `sum` element-wise over all ranks into rank 0's `sum`.
void ReduceToRank0(torch::Tensor& sum) {
  MPI_Request request;
  const bool root = Rank() == 0;
  MPI_Ireduce(root ? MPI_IN_PLACE : sum.data_ptr<float>(), root ? sum.data_ptr<float>() : nullptr,
              static_cast<int>(sum.numel()), MPI_FLOAT, MPI_SUM, 0, MPI_COMM_WORLD, &request);
  Wait(&request);
}

void Receive(void* data, int count, MPI_Datatype type, int source, int tag) {
  MPI_Request request;
  MPI_Irecv(data, count, type, source, tag, MPI_COMM_WORLD, &request);
  Wait(&request);
}

// A result's parts are tagged 0 (header), 1 (delta or error text), 2 and 3
// (Adam's m and v). A rank sends its items' results in item order and rank 0
// receives them in that order; MPI keeps messages between two ranks with the
// same tag in order, so the tag need not name the item.

// Ranks that compute tasks, in the order items are dealt to them.
std::vector<int> WorkingRanks(bool rank0_works) {
  std::vector<int> ranks;
  for (int r = (rank0_works || Size() == 1) ? 0 : 1; r < Size(); ++r) ranks.push_back(r);
  return ranks;
}

// A rank's share of a batch summed in MPI_REDUCE_SUM mode: rows delta, then
// the carried moments (adam_m if moments.first, adam_v if moments.second),
// each summed over the rank's items in item order. Zero for a rank without
// items.
torch::Tensor EmptySum(int64_t numel, CarriedMoments moments) {
  return torch::zeros({1 + (moments.first ? 1 : 0) + (moments.second ? 1 : 0), numel});
}

// Moves a result's tensors into `sum`; the result keeps its scalars.
void AddToSum(TaskResult* result, CarriedMoments moments, torch::Tensor& sum) {
  sum[0].add_(result->delta);
  if (moments.first) sum[1].add_(result->adam_m);
  if (moments.second) sum[moments.first ? 2 : 1].add_(result->adam_v);
  result->delta = result->adam_m = result->adam_v = torch::Tensor();
  result->tensor_items = 0;
}

void BroadcastTensor(torch::Tensor& tensor, int64_t numel) {
  if (!tensor.defined()) tensor = torch::empty({numel}, torch::kFloat32);
  Broadcast(tensor.data_ptr<float>(), static_cast<int>(numel), MPI_FLOAT);
}

// One result on its way to rank 0: the buffers must live until the sends
// complete, which lets the rank compute its next task meanwhile.
struct OutgoingResult {
  ResultHeader header;
  std::string error;
  absl::StatusOr<TaskResult> result;
  std::vector<MPI_Request> requests;
};

void StartSend(OutgoingResult* out) {
  ResultHeader& header = out->header;
  const absl::StatusOr<TaskResult>& result = out->result;
  if (!result.ok()) {
    out->error = result.status().ToString();
    header.error_bytes = static_cast<int64_t>(out->error.size());
  } else {
    header.loss = result->loss;
    header.correct = result->correct;
    header.correct_inductive = result->correct_inductive;
    header.predictions = result->predictions;
    header.compute_seconds = result->compute_seconds;
    header.has_delta = result->delta.defined();
    header.has_moments = result->adam_v.defined();
    header.has_first_moment = result->adam_m.defined();
  }
  auto send = [&](const void* data, int count, MPI_Datatype type, int part) {
    out->requests.emplace_back();
    MPI_Isend(data, count, type, 0, part, MPI_COMM_WORLD, &out->requests.back());
  };
  out->requests.reserve(4);
  send(&header, sizeof(header), MPI_BYTE, 0);
  if (!result.ok()) {
    send(out->error.data(), static_cast<int>(out->error.size()), MPI_CHAR, 1);
    return;
  }
  auto send_tensor = [&](const torch::Tensor& t, int part) {
    send(t.data_ptr<float>(), static_cast<int>(t.numel()), MPI_FLOAT, part);
  };
  if (header.has_delta) send_tensor(result->delta, 1);
  if (header.has_first_moment) send_tensor(result->adam_m, 2);
  if (header.has_moments) send_tensor(result->adam_v, 3);
}

absl::StatusOr<TaskResult> ReceiveResult(int source, size_t item, int64_t numel, int64_t* bytes) {
  ResultHeader header;
  Receive(&header, sizeof(header), MPI_BYTE, source, 0);
  if (header.error_bytes > 0) {
    std::string error(static_cast<size_t>(header.error_bytes), '\0');
    Receive(error.data(), static_cast<int>(error.size()), MPI_CHAR, source, 1);
    return absl::InternalError(absl::StrCat("work item ", item, " failed on rank ", source, ": ", error));
  }
  TaskResult result;
  result.loss = header.loss;
  result.correct = header.correct;
  result.correct_inductive = header.correct_inductive;
  result.predictions = header.predictions;
  result.compute_seconds = header.compute_seconds;
  auto receive = [&](int part) {
    torch::Tensor t = torch::empty({numel}, torch::kFloat32);
    Receive(t.data_ptr<float>(), static_cast<int>(numel), MPI_FLOAT, source, part);
    *bytes += numel * 4;
    return t;
  };
  result.tensor_items = header.has_delta ? 1 : 0;
  if (header.has_delta) result.delta = receive(1);
  if (header.has_first_moment) result.adam_m = receive(2);
  if (header.has_moments) result.adam_v = receive(3);
  return result;
}

// Receives the broadcast of one batch (every rank but 0). False when rank 0
// says the run is over.
bool ReceiveBatch(MetaState* state, std::vector<WorkItem>* items, bool* reduce_sum) {
  BatchHeader header;
  Broadcast(&header, sizeof(header), MPI_BYTE);
  if (header.command == kFinish) return false;
  *reduce_sum = header.reduce_sum != 0;
  BroadcastTensor(state->parameters, header.numel);
  if (header.has_first_moment) {
    BroadcastTensor(state->adam_m, header.numel);
  } else {
    state->adam_m = torch::Tensor();
  }
  if (header.has_moments) {
    BroadcastTensor(state->adam_v, header.numel);
  } else {
    state->adam_v = torch::Tensor();
  }
  state->adam_step = header.adam_step;
  std::string bytes(static_cast<size_t>(header.batch_bytes), '\0');
  Broadcast(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE);
  WorkBatch batch;
  batch.ParseFromString(bytes);
  items->clear();
  for (int i = 0; i < batch.specs_size(); ++i)
    items->push_back(WorkItem{batch.evaluate(i) ? WorkKind::kEvaluate : WorkKind::kTrain, batch.specs(i)});
  return true;
}

}  // namespace

MpiJob::MpiJob() {
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  rank_ = Rank();
  size_ = Size();
}

MpiJob::~MpiJob() { MPI_Finalize(); }

void MpiJob::Abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

absl::StatusOr<ExperimentConfig> ShareConfigOverMpi(const std::optional<ExperimentConfig>& config) {
  std::string bytes = config.has_value() ? config->SerializeAsString() : std::string();
  int64_t size = config.has_value() ? static_cast<int64_t>(bytes.size()) : -1;
  MPI_Bcast(&size, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
  if (size < 0) return absl::CancelledError("rank 0 could not set the run up");
  bytes.resize(static_cast<size_t>(size));
  MPI_Bcast(bytes.data(), static_cast<int>(size), MPI_BYTE, 0, MPI_COMM_WORLD);
  ExperimentConfig shared;
  if (!shared.ParseFromString(bytes)) return absl::DataLossError("the config broadcast by rank 0 does not parse");
  return shared;
}

absl::StatusOr<std::unique_ptr<MpiTransport>> MpiTransport::Create(const ExperimentConfig& config,
                                                                   std::shared_ptr<const TaskSource> tasks) {
  if (Rank() != 0) return absl::FailedPreconditionError("the MPI transport runs on rank 0");
  std::unique_ptr<MpiTransport> transport(new MpiTransport());
  transport->working_ranks_ = WorkingRanks(config.runtime().mpi_rank0_works());
  transport->reduce_sum_ = config.runtime().mpi_reduction() == MPI_REDUCE_SUM;
  if (transport->working_ranks_.front() == 0) {
    ASSIGN_OR_RETURN(transport->learner_, Learner::Create(config, tasks));
  }
  return transport;
}

MpiTransport::~MpiTransport() {
  BatchHeader header;
  header.command = kFinish;
  Broadcast(&header, sizeof(header), MPI_BYTE);
}

void MpiTransport::Interrupt(const std::string& why) {
  absl::MutexLock lock(&mu_);
  interrupted_ = why.empty() ? "interrupted" : why;
}

absl::StatusOr<std::vector<TaskResult>> MpiTransport::Run(const MetaState& state,
                                                          const std::vector<WorkItem>& items) {
  {
    absl::MutexLock lock(&mu_);
    if (!interrupted_.empty()) return absl::CancelledError(interrupted_);
  }
  BatchHeader header;
  header.command = kBatch;
  header.numel = state.parameters.numel();
  const CarriedMoments moments = CarriedMomentsOf(state);
  header.has_moments = moments.second;
  header.has_first_moment = moments.first;
  header.adam_step = state.adam_step;
  WorkBatch batch;
  bool training = !items.empty();
  for (const WorkItem& item : items) {
    *batch.add_specs() = item.spec;
    batch.add_evaluate(item.kind == WorkKind::kEvaluate);
    training &= item.kind == WorkKind::kTrain;
  }
  header.reduce_sum = reduce_sum_ && training;
  std::string bytes = batch.SerializeAsString();
  header.batch_bytes = static_cast<int64_t>(bytes.size());
  Broadcast(&header, sizeof(header), MPI_BYTE);
  // The state is only read: broadcasting from its buffers does not change it.
  torch::Tensor parameters = state.parameters.contiguous(), adam_m = state.adam_m, adam_v = state.adam_v;
  BroadcastTensor(parameters, header.numel);
  if (moments.first) {
    adam_m = adam_m.contiguous();
    BroadcastTensor(adam_m, header.numel);
  }
  if (moments.second) {
    adam_v = adam_v.contiguous();
    BroadcastTensor(adam_v, header.numel);
  }
  Broadcast(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE);
  stats_.bytes_out += header.numel * 4 * (1 + header.has_first_moment + header.has_moments) * (Size() - 1);

  std::vector<absl::StatusOr<TaskResult>> results(items.size(), absl::UnknownError("not run"));
  torch::Tensor sum;
  if (header.reduce_sum) sum = EmptySum(header.numel, moments);
  if (learner_ != nullptr)
    for (size_t i = 0; i < items.size(); ++i)
      if (working_ranks_[i % working_ranks_.size()] == 0) {
        results[i] = learner_->Run(state, items[i]);
        if (header.reduce_sum && results[i].ok()) AddToSum(&*results[i], moments, sum);
      }
  for (size_t i = 0; i < items.size(); ++i) {
    const int source = working_ranks_[i % working_ranks_.size()];
    if (source != 0) results[i] = ReceiveResult(source, i, header.numel, &stats_.bytes_in);
  }
  if (header.reduce_sum) {
    ReduceToRank0(sum);  // every rank takes part, even after a failed item
    stats_.bytes_in += sum.numel() * 4;  // counted once; MPI's reduction tree may bring a few
    if (results[0].ok()) {
      results[0]->delta = sum[0];
      if (moments.first) results[0]->adam_m = sum[1];
      if (moments.second) results[0]->adam_v = sum[moments.first ? 2 : 1];
      results[0]->tensor_items = static_cast<int>(items.size());
    }
  }
  stats_.workers_alive = num_workers();
  stats_.tasks_in_flight = std::min<int>(num_workers(), static_cast<int>(items.size()));
  std::vector<TaskResult> out;
  out.reserve(items.size());
  for (size_t i = 0; i < results.size(); ++i) {
    if (!results[i].ok())
      return absl::Status(results[i].status().code(), absl::StrCat("work item ", i, ": ", results[i].status().message()));
    out.push_back(std::move(results[i]).value());
  }
  return out;
}

absl::Status RunMpiWorker(const ExperimentConfig& config, std::shared_ptr<const TaskSource> tasks) {
  const int rank = Rank();
  const std::vector<int> working = WorkingRanks(config.runtime().mpi_rank0_works());
  ASSIGN_OR_RETURN(std::unique_ptr<Learner> learner, Learner::Create(config, tasks));
  MetaState state;
  std::vector<WorkItem> items;
  bool reduce_sum = false;
  while (ReceiveBatch(&state, &items, &reduce_sum)) {
    torch::Tensor sum;
    if (reduce_sum) sum = EmptySum(state.parameters.numel(), CarriedMomentsOf(state));
    std::deque<OutgoingResult> outgoing;  // stable addresses for MPI
    for (size_t i = 0; i < items.size(); ++i) {
      if (working[i % working.size()] != rank) continue;
      outgoing.push_back(OutgoingResult{{}, {}, learner->Run(state, items[i]), {}});
      if (reduce_sum && outgoing.back().result.ok())
        AddToSum(&*outgoing.back().result, CarriedMomentsOf(state), sum);
      StartSend(&outgoing.back());
    }
    for (OutgoingResult& out : outgoing)
      for (MPI_Request& request : out.requests) Wait(&request);
    if (reduce_sum) ReduceToRank0(sum);
  }
  return absl::OkStatus();
}

}  // namespace reptile
