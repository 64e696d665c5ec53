// The memory a local coordinator and its worker processes share, as files
// linked from the coordinator's private folder, mapped by every process.
// What only the coordinator writes, workers map read-only, and the kernel
// holds them to it (sealed against writing: F_SEAL_FUTURE_WRITE):
//  - the run's config;
//  - a batch file per Run(): the batch's number, sizes and task specs;
//  - the state, rewritten in place for each batch while no worker runs
//    (workers map it once and read it where it lies).
// What workers write, and the coordinator checks at each use:
//  - the board: the workers' pids and heartbeats, two futex words (one the
//    coordinator bumps for new work, one a worker bumps for each result),
//    and the stop and batch words the coordinator owns and puts back;
//  - a claims file per batch: the claim cursor and, for each item, one
//    atomic word (who claimed it, and whether it is done) and the header of
//    its result;
//  - each worker's result file, rewritten in place for each result once
//    the coordinator has taken the one before (SharedResultPath(folder,
//    pid)), which the coordinator reads with read(2), never maps.
// All but result files are sealed memfds (SharedMapping), not tmpfs files:
// /dev/shm's size does not limit them, and no worker can truncate them
// under the coordinator. A worker that scribbles on what it may write can
// spoil its own results, never another worker's inputs, and never make the
// coordinator read out of bounds.
#ifndef REPTILE_TRANSPORT_SHARED_MEMORY_SHARED_BOARD_H_
#define REPTILE_TRANSPORT_SHARED_MEMORY_SHARED_BOARD_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "wire.pb.h"
#include "reptile.pb.h"

namespace reptile {

inline constexpr int kMaxSharedWorkers = 256;

struct BoardHeader {
  char magic[8];
  std::atomic<uint32_t> work_signal;    // futex: a new batch, an item to run again, or stop
  std::atomic<uint32_t> result_signal;  // futex: a worker finished an item
  std::atomic<uint32_t> stop;           // 1: workers leave
  std::atomic<uint64_t> batch;          // the batch being run; 0: none
  std::atomic<int32_t> worker_pids[kMaxSharedWorkers];  // 0: a free place
  // Bumped by each worker's heartbeat thread every runtime.heartbeat_seconds.
  std::atomic<uint32_t> worker_beats[kMaxSharedWorkers];
};

// An item's claim word: the pid of the worker that claimed it, and its
// stage. kTaken: the coordinator has read the result, and its worker may
// write the next one.
enum class ItemStage : uint64_t { kOpen = 0, kClaimed = 1, kDone = 2, kTaken = 3 };
inline uint64_t ClaimWord(int32_t pid, ItemStage stage) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(pid)) << 2) | static_cast<uint64_t>(stage);
}
inline ItemStage StageOf(uint64_t word) { return static_cast<ItemStage>(word & 3); }
inline int32_t PidOf(uint64_t word) { return static_cast<int32_t>(word >> 2); }

inline constexpr size_t kResultHeaderBytes = 1000;

// An item's slot in the claims file.
struct ItemSlot {
  std::atomic<uint64_t> claim;  // ClaimWord
  uint32_t result_bytes;  // the serialized ResultHeader in `result`, written before the claim is kDone
  char result[kResultHeaderBytes];
};

// The start of a batch file (read-only to workers); an index of the items'
// specs (SpecPlace) and the specs follow.
struct BatchHeader {
  char magic[8];
  uint64_t batch;
  int64_t numel;
  int64_t adam_step;
  uint32_t items;
};

// Where item i's ItemSpec (kind and tasks) lies in the batch file.
struct SpecPlace {
  uint32_t offset;
  uint32_t bytes;
};

// The start of a claims file; the items' slots follow.
struct ClaimsHeader {
  char magic[8];
  uint64_t batch;
  std::atomic<uint32_t> next_item;  // the claim cursor
};

// Who may write a shared mapping: everyone who maps it, or only its creator.
enum class Writers { kAll, kCreator };

// Shared memory mapped by path; unmapped when the object goes. What a
// coordinator creates is a sealed memfd, preallocated, that no process can
// shrink or grow (so no peer can make its mapping fault), reached by path
// through a link to /proc/<pid>/fd/<fd>; what a worker opens is such a
// memfd or a plain file.
class SharedMapping {
 public:
  SharedMapping() = default;
  // Makes a sealed memfd of `size` zero bytes, maps it read-write and links
  // `path` (which must not exist) to it. With Writers::kCreator, no other
  // mapping of it may write (F_SEAL_FUTURE_WRITE). ResourceExhausted naming
  // the size if the memory cannot be reserved.
  static absl::StatusOr<SharedMapping> Create(const std::string& path, size_t size, Writers writers);
  // Maps what `path` holds: a link to a sealed memfd as Create makes, or a
  // regular file not reached through a symlink; at least `min_size` bytes.
  // Writers::kCreator maps it read-only (and such a memfd must be sealed so).
  static absl::StatusOr<SharedMapping> Open(const std::string& path, size_t min_size, Writers writers);
  SharedMapping(SharedMapping&& other) noexcept;
  SharedMapping& operator=(SharedMapping&& other) noexcept;
  ~SharedMapping();

  char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  // Maps `fd` of `size` bytes (read-only unless `writable`); keeps it open
  // if `keep` (the memfd of a link), else closes it either way.
  static absl::StatusOr<SharedMapping> Map(int fd, size_t size, const std::string& path, bool writable, bool keep);
  SharedMapping(char* data, size_t size, int fd) : data_(data), size_(size), fd_(fd) {}
  void Release();
  char* data_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;  // the memfd a link points at, while this object lives
};

// The board of a run (folder/board) and its config (folder/config, read-only
// to workers): created by the coordinator, opened by its workers.
class SharedBoard {
 public:
  static absl::StatusOr<SharedBoard> Create(const std::string& folder, const ExperimentConfig& config);
  static absl::StatusOr<SharedBoard> Open(const std::string& folder);

  BoardHeader& header() const { return *reinterpret_cast<BoardHeader*>(board_.data()); }
  absl::StatusOr<ExperimentConfig> Config() const;

 private:
  SharedBoard(SharedMapping board, SharedMapping config) : board_(std::move(board)), config_(std::move(config)) {}
  SharedMapping board_, config_;
};

// One batch: its file (number, sizes and specs; read-only to workers) and
// its claims file, both written by the coordinator before the batch is
// announced and opened by each worker that takes part.
class SharedBatch {
 public:
  SharedBatch() = default;
  // `header`'s fields but the magic and the item count, and the items' specs.
  static absl::StatusOr<SharedBatch> Create(const std::string& folder, const BatchHeader& header,
                                            const std::vector<ItemSpec>& specs);
  // InvalidArgument if the files are not batch `batch` or their sizes do
  // not fit.
  static absl::StatusOr<SharedBatch> Open(const std::string& folder, uint64_t batch);

  bool valid() const { return batch_.data() != nullptr; }
  // The number, sizes and item count, as the coordinator wrote them.
  const BatchHeader& header() const { return *reinterpret_cast<const BatchHeader*>(batch_.data()); }
  std::atomic<uint32_t>& next_item() const { return reinterpret_cast<ClaimsHeader*>(claims_.data())->next_item; }
  // Item i's slot; i < header().items.
  ItemSlot& item(size_t i) const;
  // Item i as the coordinator wrote it; InvalidArgument if it does not parse.
  absl::StatusOr<ItemSpec> Spec(size_t i) const;
  // The header a worker wrote into item i's slot, its length read once;
  // InvalidArgument, saying which, if it claims more than the slot holds or
  // does not parse.
  absl::StatusOr<ResultHeader> ResultHeaderOf(size_t i) const;

 private:
  SharedBatch(SharedMapping batch, SharedMapping claims) : batch_(std::move(batch)), claims_(std::move(claims)) {}
  SharedMapping batch_, claims_;
};

std::string SharedBoardPath(const std::string& folder);
std::string SharedConfigPath(const std::string& folder);
std::string SharedBatchPath(const std::string& folder, uint64_t batch);
std::string SharedClaimsPath(const std::string& folder, uint64_t batch);
std::string SharedMemoryStatePath(const std::string& folder);

// Waits while *word == expected, at most `timeout` (or until woken).
void FutexWait(std::atomic<uint32_t>* word, uint32_t expected, absl::Duration timeout);
// Wakes every process waiting on `word`.
void FutexWakeAll(std::atomic<uint32_t>* word);

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_SHARED_MEMORY_SHARED_BOARD_H_
