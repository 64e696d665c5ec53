#include "transport/shared_memory/shared_memory_worker.h"

#include <unistd.h>

#include <cstring>
#include <memory>
#include <optional>
#include <thread>

#include <ATen/Parallel.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "core/config.h"
#include "core/process_setup.h"
#include "core/status_macros.h"
#include "core/tasks/task_source.h"
#include "transport/wire/result_codec.h"
#include "transport/wire/shared_folder.h"
#include "transport/wire/tensor_stream.h"
#include "transport/shared_memory/shared_board.h"
#include "worker/learner.h"

namespace reptile {
namespace {

constexpr absl::Duration kWorkRecheck = absl::Milliseconds(200);

// Whether a worker other than `pid` is on the board.
bool OthersOnBoard(const BoardHeader& board, int32_t pid) {
  for (const std::atomic<int32_t>& place : board.worker_pids) {
    const int32_t other = place.load(std::memory_order_relaxed);
    if (other > 0 && other != pid) return true;
  }
  return false;
}

// The next item of `batch` nobody holds: from the claim cursor, then any
// opened again after its worker died or its result was refused. An item
// whose result from this worker was refused is left to the others while
// there are any.
std::optional<size_t> Claim(const SharedBatch& batch, const BoardHeader& board, int32_t pid) {
  const uint32_t items = batch.header().items;
  const uint64_t mine = ClaimWord(pid, ItemStage::kClaimed);
  for (uint32_t i = batch.next_item().load(std::memory_order_relaxed); i < items;
       i = batch.next_item().load(std::memory_order_relaxed)) {
    uint32_t next = i;
    if (!batch.next_item().compare_exchange_weak(next, i + 1, std::memory_order_acq_rel)) continue;
    uint64_t open = ClaimWord(0, ItemStage::kOpen);
    if (batch.item(i).claim.compare_exchange_strong(open, mine, std::memory_order_acq_rel)) return i;
  }
  std::optional<bool> others;
  for (uint32_t i = 0; i < items; ++i) {
    uint64_t word = batch.item(i).claim.load(std::memory_order_acquire);
    if (StageOf(word) != ItemStage::kOpen) continue;
    if (PidOf(word) == pid) {
      if (!others.has_value()) others = OthersOnBoard(board, pid);
      if (*others) continue;
    }
    if (batch.item(i).claim.compare_exchange_strong(word, mine, std::memory_order_acq_rel)) return i;
  }
  return std::nullopt;
}

// The state a batch runs on, viewed where it lies in the coordinator's state
// file (mapped once, read-only, and rewritten in place only between batches).
absl::StatusOr<MetaState> StateOf(const std::string& folder, const BatchHeader& batch, CarriedMoments moments,
                                  SharedMapping* mapping) {
  const size_t bytes = static_cast<size_t>(batch.numel) * sizeof(float);
  const size_t size = bytes * (1 + (moments.first ? 1 : 0) + (moments.second ? 1 : 0));
  if (mapping->size() != size) {
    ASSIGN_OR_RETURN(*mapping, SharedMapping::Open(SharedMemoryStatePath(folder), size, Writers::kCreator));
    if (mapping->size() != size)
      return absl::InvalidArgumentError(absl::StrCat("the state file holds ", mapping->size(), " bytes, not ", size));
  }
  auto view = [&](size_t index) {
    return torch::from_blob(mapping->data() + index * bytes, {batch.numel}, torch::TensorOptions(torch::kFloat32));
  };
  MetaState state;
  state.parameters = view(0);
  if (moments.first) state.adam_m = view(1);
  if (moments.second) state.adam_v = view(moments.first ? 2 : 1);
  state.adam_step = batch.adam_step;
  return state;
}

// Waits until the coordinator has read `slot`'s result (the worker's result
// file then may be written again), or its batch is over.
void AwaitTaken(const ItemSlot& slot, uint64_t done, const BoardHeader& board, uint64_t batch) {
  while (slot.claim.load(std::memory_order_acquire) == done && board.batch.load(std::memory_order_acquire) == batch &&
         board.stop.load(std::memory_order_acquire) == 0)
    usleep(50);
}

// This worker's place on the board, and the heartbeat thread that bumps
// its beat every runtime.heartbeat_seconds (a thread of its own, so that it
// beats through a long task). Leaves the board when it goes.
class BoardPlace {
 public:
  static absl::StatusOr<std::unique_ptr<BoardPlace>> Take(BoardHeader& header, int32_t pid,
                                                           absl::Duration beat_every) {
    for (std::atomic<int32_t>& place : header.worker_pids) {
      int32_t free = 0;
      if (place.compare_exchange_strong(free, pid))
        return std::unique_ptr<BoardPlace>(
            new BoardPlace(&place, &header.worker_beats[&place - header.worker_pids], pid, beat_every));
    }
    return absl::ResourceExhaustedError(absl::StrCat("the board holds ", kMaxSharedWorkers, " workers; it is full"));
  }
  ~BoardPlace() {
    left_.Notify();
    heartbeat_.join();
    int32_t mine = pid_;
    place_->compare_exchange_strong(mine, 0);
  }
  // False once the coordinator has taken the place back (evicted).
  bool held() const { return place_->load(std::memory_order_acquire) == pid_; }

 private:
  BoardPlace(std::atomic<int32_t>* place, std::atomic<uint32_t>* beats, int32_t pid, absl::Duration beat_every)
      : place_(place), pid_(pid), heartbeat_([this, beats, beat_every] {
          NameThisThread("heartbeat");
          do beats->fetch_add(1, std::memory_order_relaxed);
          while (!left_.WaitForNotificationWithTimeout(beat_every));
        }) {}
  std::atomic<int32_t>* const place_;
  const int32_t pid_;
  absl::Notification left_;
  std::thread heartbeat_;
};

// Item i of `batch` run on `state`; a spec that does not parse or a state
// that cannot be read gives its error.
absl::StatusOr<TaskResult> RunItem(Learner& learner, const SharedBatch& batch, size_t i,
                                   const absl::StatusOr<MetaState>& state) {
  absl::StatusOr<ItemSpec> spec = batch.Spec(i);
  absl::StatusOr<TaskResult> result = absl::UnknownError("not run");
  if (!spec.ok() || !state.ok()) {
    result = !spec.ok() ? spec.status() : state.status();
  } else {
    WorkItem item;
    item.kind = spec->evaluate() ? WorkKind::kEvaluate : WorkKind::kTrain;
    item.tasks.assign(spec->tasks().begin(), spec->tasks().end());
    result = learner.Run(*state, item);
  }
  return result;
}

// One worker's way of handing results back: tensors to its result file
// (once the coordinator has read the last), the header into the item's
// slot, and the claim marked done if it is still this worker's.
class ResultWriter {
 public:
  ResultWriter(std::string path, BoardHeader& board, int32_t pid, DeltaDtype dtype)
      : path_(std::move(path)), board_(board), pid_(pid), dtype_(dtype) {}
  ~ResultWriter() { unlink(path_.c_str()); }
  // A new batch: no result of it is waiting to be read.
  void NewBatch() { unread_ = nullptr; }
  void HandBack(const SharedBatch& batch, size_t i, const absl::StatusOr<TaskResult>& result, uint64_t batch_number) {
    ItemSlot& slot = batch.item(i);
    EncodedResult encoded = EncodeResult(result, dtype_, batch.header().numel);  // views into `result`
    if (!encoded.tensors.empty()) {
      if (unread_ != nullptr) AwaitTaken(*unread_, ClaimWord(pid_, ItemStage::kDone), board_, batch_number);
      const absl::Status written = OverwriteTensorFile(path_, encoded.tensors);
      if (!written.ok()) encoded = EncodeResult(written, DELTA_FP32, 0);
      unread_ = &slot;
    }
    if (encoded.header.error().size() > kResultHeaderBytes / 2)
      encoded.header.mutable_error()->resize(kResultHeaderBytes / 2);
    const std::string bytes = encoded.header.SerializeAsString();
    std::memcpy(slot.result, bytes.data(), bytes.size());
    slot.result_bytes = static_cast<uint32_t>(bytes.size());
    // Done only if still ours: an item the coordinator gave to another
    // worker meanwhile keeps that worker's claim.
    uint64_t claimed = ClaimWord(pid_, ItemStage::kClaimed);
    if (!slot.claim.compare_exchange_strong(claimed, ClaimWord(pid_, ItemStage::kDone), std::memory_order_acq_rel))
      return;
    board_.result_signal.fetch_add(1, std::memory_order_acq_rel);
    FutexWakeAll(&board_.result_signal);
  }

 private:
  const std::string path_;
  BoardHeader& board_;
  const int32_t pid_;
  const DeltaDtype dtype_;
  const ItemSlot* unread_ = nullptr;  // the slot of the result in the file, until the coordinator has read it
};

}  // namespace

absl::Status RunSharedMemoryWorker(const std::string& board_path, absl::Notification* stop) {
  const std::string folder = board_path.substr(0, board_path.rfind('/'));
  ASSIGN_OR_RETURN(SharedBoard board, SharedBoard::Open(folder));
  ASSIGN_OR_RETURN(ExperimentConfig config, board.Config());
  RETURN_IF_ERROR(ValidateConfig(config));
  ASSIGN_OR_RETURN(std::shared_ptr<const TaskSource> tasks, TaskSource::Create(config.task()));
  ASSIGN_OR_RETURN(std::unique_ptr<Learner> learner, Learner::Create(config, tasks));
  // One intra-op thread, as a worker thread has: a task's arithmetic, and
  // so its result, must not depend on how many threads share the machine.
  at::set_num_threads(1);
  NameThisThread("learner");
  BoardHeader& header = board.header();
  const int32_t pid = getpid();
  const absl::Duration beat_every =
      absl::Seconds(config.runtime().heartbeat_seconds() > 0 ? config.runtime().heartbeat_seconds() : 1);
  ASSIGN_OR_RETURN(std::unique_ptr<BoardPlace> place, BoardPlace::Take(header, pid, beat_every));
  ResultWriter results(SharedResultPath(folder, static_cast<uint64_t>(pid)), header, pid,
                       config.outer().delta_dtype());
  SharedBatch batch;
  uint64_t batch_number = 0, state_batch = 0;
  SharedMapping state_file;
  absl::StatusOr<MetaState> state = absl::FailedPreconditionError("no state yet");
  while (!stop->HasBeenNotified() && header.stop.load(std::memory_order_acquire) == 0) {
    if (!place->held())
      return absl::FailedPreconditionError("evicted: the coordinator took this worker's place on the board");
    const uint32_t signal = header.work_signal.load(std::memory_order_acquire);
    const uint64_t current = header.batch.load(std::memory_order_acquire);
    if (current != 0 && current != batch_number) {
      batch_number = current;
      absl::StatusOr<SharedBatch> opened = SharedBatch::Open(folder, current);
      batch = opened.ok() ? *std::move(opened) : SharedBatch();  // a batch already over is gone
      results.NewBatch();
    }
    bool worked = false;
    while (current != 0 && batch.valid() && header.batch.load(std::memory_order_acquire) == batch_number) {
      const std::optional<size_t> i = Claim(batch, header, pid);
      if (!i.has_value()) break;
      worked = true;
      if (state_batch != batch_number) {
        state = StateOf(folder, batch.header(), CarriedMomentsOf(config), &state_file);
        state_batch = batch_number;
      }
      results.HandBack(batch, *i, RunItem(*learner, batch, *i, state), batch_number);
    }
    if (!worked) FutexWait(&header.work_signal, signal, kWorkRecheck);
  }
  return absl::OkStatus();
}

}  // namespace reptile
