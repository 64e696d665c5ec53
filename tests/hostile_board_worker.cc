// A worker process that turns on the shared-memory board, for
// tests/shared_memory_test. tests/hostile_exec.c starts it in the place of
// one of the coordinator's own workers. It takes a place on the board and
// beats like a worker, waits for a batch, then does what its mode says:
//   scribble  tries to shrink every shared file and to write every one only
//             the coordinator may write (the config, the state, the batch);
//             writes the stop, batch and claim-cursor words; registers pids
//             that are no worker of the run (the coordinator's, and
//             $HOSTILE_BYSTANDER's); then hands back a NaN result for every
//             item it can claim, until it is evicted
//   hold      claims an item and never finishes it
// Each attempt on a file is one line of <dir>/<mode>.report: what was tried
// and what the kernel answered. It runs until it is killed.
// Usage: hostile_board_worker MODE BOARD_PATH DIR
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "transport/shared_memory/shared_board.h"
#include "transport/wire/result_codec.h"
#include "transport/wire/shared_folder.h"

namespace reptile {
namespace {

std::string Outcome(bool done) { return done ? "DONE" : absl::StrCat("refused (", std::strerror(errno), ")"); }

// Tries to shrink `path`; and, unless the workers may write it, to write it
// and to map it writable.
void Attack(const std::string& path, bool workers_write, std::ofstream& report) {
  const std::string name = path.substr(path.rfind('/') + 1);
  const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    report << "open " << name << " read-write: " << Outcome(false) << "\n";
    return;
  }
  report << "truncate " << name << ": " << Outcome(ftruncate(fd, 0) == 0) << "\n";
  if (!workers_write) {
    const char junk[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    report << "write " << name << ": " << Outcome(pwrite(fd, junk, sizeof(junk), 0) == sizeof(junk)) << "\n";
    void* map = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    report << "map " << name << " writable: " << Outcome(map != MAP_FAILED) << "\n";
    if (map != MAP_FAILED) munmap(map, 4096);
  }
  report.flush();
  close(fd);
}

void TakePlace(BoardHeader& board, int32_t pid) {
  for (std::atomic<int32_t>& place : board.worker_pids) {
    int32_t free = 0;
    if (place.compare_exchange_strong(free, pid)) return;
  }
}

// Claims an item of `batch` in this worker's name, as a worker does: from
// the claim cursor, then any open one.
std::optional<size_t> Claim(const SharedBatch& batch, int32_t pid) {
  const uint64_t mine = ClaimWord(pid, ItemStage::kClaimed);
  for (uint32_t i = batch.next_item().load(); i < batch.header().items; i = batch.next_item().load()) {
    uint64_t open = ClaimWord(0, ItemStage::kOpen);
    if (batch.next_item().compare_exchange_strong(i, i + 1) && batch.item(i).claim.compare_exchange_strong(open, mine))
      return i;
  }
  for (uint32_t i = 0; i < batch.header().items; ++i) {
    uint64_t word = batch.item(i).claim.load();
    if (StageOf(word) == ItemStage::kOpen && batch.item(i).claim.compare_exchange_strong(word, mine)) return i;
  }
  return std::nullopt;
}

// The batch on the board once there is one.
SharedBatch NextBatch(const std::string& folder, const BoardHeader& board, uint64_t after) {
  for (;; usleep(500)) {
    const uint64_t number = board.batch.load();
    if (number == 0 || number == after) continue;
    if (absl::StatusOr<SharedBatch> batch = SharedBatch::Open(folder, number); batch.ok()) return *std::move(batch);
  }
}

// Hands back a result of NaNs, well formed, for item i.
void HandBackNaN(const SharedBatch& batch, size_t i, const ExperimentConfig& config, const std::string& folder,
                 BoardHeader& board, int32_t pid) {
  const int64_t numel = batch.header().numel;
  const CarriedMoments moments = CarriedMomentsOf(config);
  TaskResult result;
  result.loss = std::nan("");
  if (absl::StatusOr<ItemSpec> spec = batch.Spec(i); spec.ok() && !spec->evaluate()) {
    result.delta = torch::full({numel}, std::nanf(""));
    if (moments.first) result.adam_m = torch::zeros({numel});
    if (moments.second) result.adam_v = torch::zeros({numel});
  }
  const EncodedResult encoded = EncodeResult(result, DELTA_FP32, numel);
  if (!OverwriteTensorFile(SharedResultPath(folder, static_cast<uint64_t>(pid)), encoded.tensors).ok()) return;
  const std::string header = encoded.header.SerializeAsString();
  ItemSlot& slot = batch.item(i);
  std::memcpy(slot.result, header.data(), header.size());
  slot.result_bytes = static_cast<uint32_t>(header.size());
  slot.claim.store(ClaimWord(pid, ItemStage::kDone));
  board.result_signal.fetch_add(1);
  FutexWakeAll(&board.result_signal);
  // Until the coordinator has read it (or the batch is over).
  const uint64_t number = batch.header().batch;
  while (slot.claim.load() == ClaimWord(pid, ItemStage::kDone) && board.batch.load() == number) usleep(200);
}

int Main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: hostile_board_worker scribble|hold BOARD_PATH DIR\n";
    return 2;
  }
  const std::string mode = argv[1], board_path = argv[2], dir = argv[3];
  const std::string folder = board_path.substr(0, board_path.rfind('/'));
  absl::StatusOr<SharedBoard> opened = SharedBoard::Open(folder);
  if (!opened.ok()) {
    std::cerr << opened.status() << "\n";
    return 1;
  }
  BoardHeader& board = opened->header();
  absl::StatusOr<ExperimentConfig> config = opened->Config();
  if (!config.ok()) return 1;
  const int32_t pid = getpid();
  TakePlace(board, pid);
  std::thread([&board, pid] {
    for (;;) {
      for (int place = 0; place < kMaxSharedWorkers; ++place)
        if (board.worker_pids[place].load() == pid) board.worker_beats[place].fetch_add(1);
      usleep(100000);
    }
  }).detach();
  std::ofstream report(absl::StrCat(dir, "/", mode, ".report"));
  SharedBatch batch = NextBatch(folder, board, 0);
  if (mode == "hold") {
    while (!Claim(batch, pid).has_value()) batch = NextBatch(folder, board, batch.header().batch);
    report << "holding an item of batch " << batch.header().batch << std::endl;
    for (;;) pause();
  }
  const uint64_t number = batch.header().batch;
  for (const std::string& file : {SharedBoardPath(folder), SharedClaimsPath(folder, number)}) Attack(file, true, report);
  for (const std::string& file : {SharedConfigPath(folder), SharedMemoryStatePath(folder), SharedBatchPath(folder, number)})
    Attack(file, false, report);
  board.stop.store(1);
  board.batch.store(0);
  FutexWakeAll(&board.work_signal);
  batch.next_item().store(batch.header().items + 1000);
  TakePlace(board, getppid());
  if (const char* bystander = std::getenv("HOSTILE_BYSTANDER")) TakePlace(board, std::atoi(bystander));
  report << "scribbled the board" << std::endl;
  for (int handed = 0;; batch = NextBatch(folder, board, batch.header().batch)) {
    while (std::optional<size_t> i = Claim(batch, pid)) {
      HandBackNaN(batch, *i, *config, folder, board, pid);
      report << "NaN result " << ++handed << std::endl;
    }
  }
}

}  // namespace
}  // namespace reptile

int main(int argc, char** argv) { return reptile::Main(argc, argv); }
