#include "transport/shared_memory/shared_memory_transport.h"

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "transport/wire/result_codec.h"
#include "transport/wire/shared_folder.h"
#include "transport/wire/tensor_stream.h"

namespace reptile {
namespace {

constexpr int kEvictAfterRefusals = 3;  // as the lease scheduler's policy
constexpr absl::Duration kResultRecheck = absl::Milliseconds(50);

int PidFdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }
void KillThrough(int pidfd) { syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0); }

// Opens item i again for any worker to claim, if its word is still `word`;
// `refused` (the worker whose result was refused, or 0) leaves it to the
// others while there are any.
bool Reopen(ItemSlot& slot, uint64_t word, BoardHeader& board, int32_t refused = 0) {
  if (!slot.claim.compare_exchange_strong(word, ClaimWord(refused, ItemStage::kOpen), std::memory_order_acq_rel))
    return false;
  board.work_signal.fetch_add(1, std::memory_order_acq_rel);
  FutexWakeAll(&board.work_signal);
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SharedMemoryTransport>> SharedMemoryTransport::Create(
    const ExperimentConfig& config, const std::string& folder, std::function<void(const std::string&)> log) {
  ASSIGN_OR_RETURN(SharedBoard board, SharedBoard::Create(folder, config));
  return std::unique_ptr<SharedMemoryTransport>(
      new SharedMemoryTransport(config, folder, std::move(board), std::move(log)));
}

SharedMemoryTransport::SharedMemoryTransport(const ExperimentConfig& config, std::string folder, SharedBoard board,
                                             std::function<void(const std::string&)> log)
    : config_(config),
      log_(std::move(log)),
      folder_(std::move(folder)),
      board_path_(SharedBoardPath(folder_)),
      board_(std::move(board)),
      worker_timeout_(absl::Seconds(config.runtime().worker_timeout_seconds() > 0
                                        ? config.runtime().worker_timeout_seconds()
                                        : 6)),
      task_timeout_(absl::Seconds(config.runtime().task_timeout_seconds() > 0
                                      ? config.runtime().task_timeout_seconds()
                                      : 600)),
      ledger_(config.runtime().max_task_attempts() > 0 ? config.runtime().max_task_attempts() : 2,
              kEvictAfterRefusals) {}

SharedMemoryTransport::~SharedMemoryTransport() {
  Finish();
  for (const auto& [pid, worker] : seen_) close(worker.pidfd);
  unlink(board_path_.c_str());
  unlink(SharedConfigPath(folder_).c_str());
  unlink(SharedMemoryStatePath(folder_).c_str());
}

void SharedMemoryTransport::TrustOnlyChildren(std::function<int(pid_t)> open_child) {
  open_child_ = std::move(open_child);
}

absl::Status SharedMemoryTransport::PublishState(absl::Span<const absl::string_view> tensors) {
  size_t size = 0;
  for (absl::string_view t : tensors) size += t.size();
  if (state_.data() == nullptr) {
    ASSIGN_OR_RETURN(state_, SharedMapping::Create(SharedMemoryStatePath(folder_), size, Writers::kCreator));
  }
  if (state_.size() != size)
    return absl::InvalidArgumentError(
        absl::StrCat("a meta-state of ", size, " bytes; the run's first was ", state_.size()));
  char* at = state_.data();
  for (absl::string_view t : tensors) {
    std::memcpy(at, t.data(), t.size());
    at += t.size();
  }
  return absl::OkStatus();
}

void SharedMemoryTransport::Finish() {
  BoardHeader& board = board_.header();
  board.stop.store(1, std::memory_order_release);
  board.work_signal.fetch_add(1, std::memory_order_acq_rel);
  FutexWakeAll(&board.work_signal);
}

absl::Status SharedMemoryTransport::Run(const MetaState& state, const std::vector<WorkItem>& items,
                                        const ResultSink& take) {
  RETURN_IF_ERROR(Interrupted());
  const ResultShape shape{state.parameters.numel(), CarriedMomentsOf(config_), config_.outer().meta_batch_size()};
  if (CarriedMomentsOf(state) != shape.moments)
    return absl::InvalidArgumentError("meta-state's Adam moments are not those the run's config carries");
  const uint64_t number = ++last_batch_;
  BoardHeader& board = board_.header();
  // Whatever ends the batch, no worker starts another of its items.
  absl::Cleanup end_batch = [&] {
    board.batch.store(0, std::memory_order_release);
    unlink(SharedBatchPath(folder_, number).c_str());
    unlink(SharedClaimsPath(folder_, number).c_str());
  };
  ASSIGN_OR_RETURN(const SharedBatch batch, PublishBatch(number, state, items, shape));
  std::vector<char> taken(items.size(), 0);
  ledger_.StartBatch(items.size());
  claimed_since_.assign(items.size(), {ClaimWord(0, ItemStage::kOpen), absl::Now()});
  size_t remaining = items.size(), first_open = 0;
  while (remaining > 0) {
    const uint32_t signal = board.result_signal.load(std::memory_order_acquire);
    PutBackOwnWords(number);
    // Items past the claim cursor have not been claimed, so are not done.
    const size_t claimed = std::min<size_t>(items.size(), batch.next_item().load(std::memory_order_acquire));
    bool progress = false;
    for (size_t i = first_open; i < claimed; ++i) {
      if (taken[i] || StageOf(batch.item(i).claim.load(std::memory_order_acquire)) != ItemStage::kDone) continue;
      ASSIGN_OR_RETURN(bool accepted, TakeResult(batch, i, items, shape, take));
      if (accepted) {
        taken[i] = 1;
        --remaining;
      }
      progress = true;
    }
    while (first_open < items.size() && taken[first_open]) ++first_open;
    if (remaining == 0) break;
    RETURN_IF_ERROR(Interrupted());
    ReapDeadWorkers(batch, items.size());
    if (!progress) FutexWait(&board.result_signal, signal, kResultRecheck);
  }
  return absl::OkStatus();
}

absl::Status SharedMemoryTransport::Interrupted() const {
  absl::MutexLock lock(&mu_);
  return interrupted_.empty() ? absl::OkStatus() : absl::CancelledError(interrupted_);
}

absl::StatusOr<SharedBatch> SharedMemoryTransport::PublishBatch(uint64_t number, const MetaState& state,
                                                                const std::vector<WorkItem>& items,
                                                                const ResultShape& shape) {
  // The state, once for every worker, from where its tensors lie.
  std::string encoded[3];
  std::vector<absl::string_view> tensors = {WireBytes(state.parameters, DELTA_FP32, &encoded[0])};
  if (shape.moments.first) tensors.push_back(WireBytes(state.adam_m, DELTA_FP32, &encoded[1]));
  if (shape.moments.second) tensors.push_back(WireBytes(state.adam_v, DELTA_FP32, &encoded[2]));
  // No worker reads the state between batches (board.batch is 0).
  RETURN_IF_ERROR(PublishState(tensors));
  BatchHeader fields{};
  fields.batch = number;
  fields.numel = shape.numel;
  fields.adam_step = state.adam_step;
  std::vector<ItemSpec> specs(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    specs[i].set_evaluate(items[i].kind == WorkKind::kEvaluate);
    for (const TaskSpec& task : items[i].tasks) *specs[i].add_tasks() = task;
  }
  ASSIGN_OR_RETURN(SharedBatch batch, SharedBatch::Create(folder_, fields, specs));
  {
    absl::MutexLock lock(&mu_);
    for (absl::string_view t : tensors) stats_.bytes_out += static_cast<int64_t>(t.size());
    stats_.tasks_in_flight = std::min<int>(num_workers(), static_cast<int>(items.size()));
  }
  BoardHeader& board = board_.header();
  board.batch.store(number, std::memory_order_release);
  board.work_signal.fetch_add(1, std::memory_order_acq_rel);
  FutexWakeAll(&board.work_signal);
  return batch;
}

void SharedMemoryTransport::PutBackOwnWords(uint64_t batch) {
  BoardHeader& board = board_.header();
  if (board.stop.load(std::memory_order_acquire) == 0 && board.batch.load(std::memory_order_acquire) == batch) return;
  board.stop.store(0, std::memory_order_release);
  board.batch.store(batch, std::memory_order_release);
  board.work_signal.fetch_add(1, std::memory_order_acq_rel);
  FutexWakeAll(&board.work_signal);
  if (log_) log_("a worker wrote the board's stop or batch word; put back");
}

absl::StatusOr<bool> SharedMemoryTransport::TakeResult(const SharedBatch& batch, size_t i,
                                                       const std::vector<WorkItem>& items, const ResultShape& shape,
                                                       const ResultSink& take) {
  ItemSlot& slot = batch.item(i);
  const uint64_t word = slot.claim.load(std::memory_order_acquire);
  const int32_t worker = PidOf(word);
  if (seen_.count(worker) == 0) RefreshWorkers(absl::Now());  // it may have joined since the last look
  const std::string result_path = SharedResultPath(folder_, static_cast<uint64_t>(worker));
  std::string reason = "invalid_result";
  size_t bytes_in = 0;
  const absl::Status taken = [&]() -> absl::Status {
    if (evicted_.count(worker) > 0) return absl::PermissionDeniedError("its worker was evicted");
    ASSIGN_OR_RETURN(ResultHeader header, batch.ResultHeaderOf(i));
    if (!header.error().empty()) {
      reason = "worker_error";
      return absl::InternalError(absl::StrCat("the worker failed: ", header.error().substr(0, 300)));
    }
    ASSIGN_OR_RETURN(std::vector<size_t> sizes, ResultPayloadSizes(header, items[i], shape));
    std::vector<std::string> payload;
    if (!sizes.empty()) {
      ASSIGN_OR_RETURN(payload, ReadTensorFile(result_path, sizes));
    }
    for (size_t size : sizes) bytes_in += size;
    uint64_t done = word;  // the worker may now write its next result
    if (!slot.claim.compare_exchange_strong(done, ClaimWord(worker, ItemStage::kTaken)))
      return absl::InvalidArgumentError("its claim changed while it was read");
    ASSIGN_OR_RETURN(TaskResult result, DecodeResult(header, items[i], shape, std::move(payload)));
    return take(i, std::move(result));
  }();
  {
    absl::MutexLock lock(&mu_);
    stats_.bytes_in += static_cast<int64_t>(bytes_in);
    if (!taken.ok()) {
      ++stats_.results_refused;
      ++stats_.results_refused_by_reason[reason];
    }
  }
  if (taken.ok()) {
    ledger_.Accepted(worker);
    return true;
  }
  if (log_) log_(absl::StrCat("result of work item ", i, " from worker process ", worker, " refused: ", taken.message()));
  const std::string worker_fault = ledger_.Refused(worker, {i}, std::string(taken.message()));
  if (!worker_fault.empty()) Evict(worker, worker_fault);
  // Judged after the eviction, which takes back this refusal too.
  const std::string task_fault = ledger_.TaskFault(i);
  if (!task_fault.empty()) return absl::Status(taken.code(), task_fault);
  const uint64_t now = slot.claim.load(std::memory_order_acquire);
  if ((now == word || now == ClaimWord(worker, ItemStage::kTaken)) && Reopen(slot, now, board_.header(), worker)) {
    absl::MutexLock lock(&mu_);
    ++stats_.tasks_redone;
  }
  return false;
}

void SharedMemoryTransport::RefreshWorkers(absl::Time now) {
  BoardHeader& board = board_.header();
  for (int place = 0; place < kMaxSharedWorkers; ++place) {
    int32_t pid = board.worker_pids[place].load(std::memory_order_acquire);
    if (pid <= 0) continue;
    if (evicted_.count(pid) > 0) {
      board.worker_pids[place].compare_exchange_strong(pid, 0);
      continue;
    }
    const uint32_t beat = board.worker_beats[place].load(std::memory_order_relaxed);
    auto found = seen_.find(pid);
    if (found != seen_.end()) {
      if (found->second.beat != beat) {
        found->second.beat = beat;
        found->second.beat_changed = now;
      }
      continue;
    }
    // Only a child of ours, when we know them; any live process otherwise.
    const int fd = open_child_ ? open_child_(pid) : PidFdOpen(pid);
    if (fd < 0) {
      // Gone already, or no worker of this run (a forged or stale pid): its
      // place is freed, and its claims go back to the others.
      board.worker_pids[place].compare_exchange_strong(pid, 0);
      continue;
    }
    seen_[pid] = {fd, static_cast<bool>(open_child_), beat, now};
    ledger_.Join(pid);
    if (log_) log_(absl::StrCat("worker process ", pid, " joined (", seen_.size(), " alive)"));
  }
}

void SharedMemoryTransport::Evict(pid_t pid, const std::string& why) {
  auto it = seen_.find(pid);
  const bool child = it != seen_.end() && it->second.child;
  if (log_) log_(absl::StrCat("worker process ", pid, " ", why, child ? "; killing it" : "; evicted"));
  if (it != seen_.end()) {
    if (child) KillThrough(it->second.pidfd);  // its place is taken by another
    for (std::atomic<int32_t>& place : board_.header().worker_pids) {
      int32_t mine = pid;
      place.compare_exchange_strong(mine, 0);
    }
    close(it->second.pidfd);
    seen_.erase(it);
  }
  if (!child) evicted_.insert(pid);
  ledger_.Forget(pid);
  absl::MutexLock lock(&mu_);
  ++stats_.workers_evicted;
}

void SharedMemoryTransport::ReapDeadWorkers(const SharedBatch& batch, size_t items) {
  const absl::Time now = absl::Now();
  RefreshWorkers(now);
  // Stopped or stuck: its items would hold the batch forever.
  std::vector<pid_t> silent;
  for (const auto& [pid, worker] : seen_)
    if (now - worker.beat_changed > worker_timeout_) silent.push_back(pid);
  for (pid_t pid : silent)
    Evict(pid, absl::StrCat("sent no heartbeat for ", absl::FormatDuration(worker_timeout_)));
  ForgetEndedWorkers();
  const size_t claimed = std::min<size_t>(items, batch.next_item().load());
  EvictHoldersPastDeadline(batch, claimed, now);
  // Claims of workers not alive on the board go back to the others. A
  // worker registers before it claims, so a claimer still unknown after a
  // second look is gone (or never was a worker).
  bool looked_again = false;
  for (size_t i = 0; i < claimed; ++i) {
    ItemSlot& slot = batch.item(i);
    const uint64_t word = slot.claim.load(std::memory_order_acquire);
    if (StageOf(word) != ItemStage::kClaimed || seen_.count(PidOf(word)) > 0) continue;
    if (!looked_again) {
      RefreshWorkers(now);
      looked_again = true;
      if (seen_.count(PidOf(word)) > 0) continue;
    }
    if (Reopen(slot, word, board_.header())) {
      absl::MutexLock lock(&mu_);
      ++stats_.tasks_redone;
    }
  }
}

void SharedMemoryTransport::ForgetEndedWorkers() {
  std::vector<pollfd> polls;
  for (auto& [pid, worker] : seen_) polls.push_back({worker.pidfd, POLLIN, 0});
  if (polls.empty() || poll(polls.data(), polls.size(), 0) <= 0) return;
  for (const pollfd& p : polls) {
    if (p.revents == 0) continue;  // still running
    for (auto it = seen_.begin(); it != seen_.end(); ++it) {
      if (it->second.pidfd != p.fd) continue;
      const pid_t gone = it->first;
      for (std::atomic<int32_t>& place : board_.header().worker_pids) {
        int32_t pid = gone;
        place.compare_exchange_strong(pid, 0);
      }
      unlink(SharedResultPath(folder_, static_cast<uint64_t>(gone)).c_str());
      close(it->second.pidfd);
      seen_.erase(it);
      ledger_.Drop(gone);
      if (log_) log_(absl::StrCat("worker process ", gone, " is gone (", seen_.size(), " alive)"));
      break;
    }
  }
}

void SharedMemoryTransport::EvictHoldersPastDeadline(const SharedBatch& batch, size_t claimed, absl::Time now) {
  for (size_t i = 0; i < claimed; ++i) {
    const uint64_t word = batch.item(i).claim.load(std::memory_order_acquire);
    auto& [seen_word, since] = claimed_since_[i];
    if (word != seen_word) {
      seen_word = word;
      since = now;
    } else if (StageOf(word) == ItemStage::kClaimed && now - since > task_timeout_ && seen_.count(PidOf(word)) > 0) {
      Evict(PidOf(word), absl::StrCat("held work item ", i, " for ", absl::FormatDuration(task_timeout_),
                                      " (runtime.task_timeout_seconds)"));
    }
  }
}

int SharedMemoryTransport::num_workers() const {
  int alive = 0;
  for (const std::atomic<int32_t>& place : board_.header().worker_pids)
    if (place.load(std::memory_order_relaxed) > 0) ++alive;
  return alive;
}

TransportStats SharedMemoryTransport::Stats() const {
  TransportStats stats;
  {
    absl::MutexLock lock(&mu_);
    stats = stats_;
  }
  stats.workers_alive = num_workers();
  return stats;
}

void SharedMemoryTransport::Interrupt(const std::string& why) {
  absl::MutexLock lock(&mu_);
  interrupted_ = why.empty() ? "interrupted" : why;
}

}  // namespace reptile
