// Fuzzes what crosses the shared memory of a local run
// (transport/shared_memory/shared_board.h) where a worker process can
// write: the board, and a batch's claims file. (The config, the batch file
// and the state are sealed against every writer but the coordinator.)
// Input layout:
//   byte 0     bit 0: the rest is a claims file (else a board);
//              bit 1: the coordinator's items are evaluation episodes;
//              bit 2: its items hold 2 tasks (results are exact sums);
//              bit 3: the run carries Adam's v; bit 4 (with 3): and m
//   the rest   the file's bytes; for claims, their tail also stands for the
//              result file the coordinator reads beside them
// A board must open or be refused. Claims must open beside the
// coordinator's own batch of 3 items or be refused; then every slot's result
// (as the coordinator reads it, against its own items and model) must parse
// or be refused, and what is accepted has the coordinator's shape.
//
// With REPTILE_FUZZ_WRITE_SEEDS=<folder> in the environment the binary
// instead writes seed inputs there, made by the real writers, and exits
// (fuzz/make_corpus.sh).
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz/seed_writer.h"
#include "google/protobuf/stubs/logging.h"
#include "transport/wire/result_codec.h"
#include "transport/shared_memory/shared_board.h"

namespace {

constexpr int64_t kNumel = 4;     // the coordinator's model
constexpr int kMetaBatch = 4;     // the bound of its exact sums
constexpr uint64_t kBatch = 7;    // the batch the coordinator announced

struct Choice {
  bool batch, evaluate, two_tasks;
  reptile::CarriedMoments moments;
};

Choice Decode(uint8_t byte) {
  const bool second = (byte & 8) != 0;
  return {(byte & 1) != 0, (byte & 2) != 0, (byte & 4) != 0, {second && (byte & 16) != 0, second}};
}

// The item the coordinator itself holds for every slot.
reptile::WorkItem OwnItem(const Choice& choice) {
  reptile::WorkItem item;
  item.kind = choice.evaluate ? reptile::WorkKind::kEvaluate : reptile::WorkKind::kTrain;
  item.tasks.resize(choice.two_tasks && !choice.evaluate ? 2 : 1);
  return item;
}

constexpr size_t kItems = 3;

std::vector<reptile::ItemSpec> OwnSpecs(const Choice& choice) {
  const reptile::WorkItem item = OwnItem(choice);
  std::vector<reptile::ItemSpec> specs(kItems);
  for (size_t i = 0; i < specs.size(); ++i) {
    specs[i].set_evaluate(choice.evaluate);
    for (size_t t = 0; t < item.tasks.size(); ++t) {
      reptile::TaskSpec* task = specs[i].add_tasks();
      task->set_seed(100 * i + t);
      task->set_support_shots(1);
      task->add_class_ids(static_cast<int32_t>(i));
    }
  }
  return specs;
}

reptile::BatchHeader OwnBatch() {
  reptile::BatchHeader fields{};
  fields.batch = kBatch;
  fields.numel = kNumel;
  return fields;
}

// A folder holding the coordinator's own board, config and batch (alive as
// long as the process), where the fuzzer replaces the board and the claims
// with plain files of its input.
std::string Scratch() {
  static const std::string folder = [] {
    char pattern[] = "/tmp/shared_memory_fuzzer.XXXXXX";
    const char* made = mkdtemp(pattern);
    if (made == nullptr) abort();
    return std::string(made);
  }();
  static const auto* board = new absl::StatusOr<reptile::SharedBoard>(
      reptile::SharedBoard::Create(folder, reptile::ExperimentConfig()));
  static const auto* batch = new absl::StatusOr<reptile::SharedBatch>(
      reptile::SharedBatch::Create(folder, OwnBatch(), OwnSpecs(Decode(0))));
  if (!board->ok() || !batch->ok()) abort();
  return folder;
}

void WriteFile(const std::string& path, const char* data, size_t size) {
  unlink(path.c_str());
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || write(fd, data, size) != static_cast<ssize_t>(size)) abort();
  close(fd);
}

void FuzzClaims(const std::string& folder, const Choice& choice, const uint8_t* file, size_t size) {
  absl::StatusOr<reptile::SharedBatch> batch = reptile::SharedBatch::Open(folder, kBatch);
  if (!batch.ok()) return;
  const reptile::WorkItem item = OwnItem(choice);
  const reptile::ResultShape shape{kNumel, choice.moments, kMetaBatch};
  for (uint32_t i = 0; i < batch->header().items; ++i) {
    (void)batch->Spec(i);
    absl::StatusOr<reptile::ResultHeader> header = batch->ResultHeaderOf(i);
    if (!header.ok()) continue;
    absl::StatusOr<std::vector<size_t>> sizes = reptile::ResultPayloadSizes(*header, item, shape);
    if (!sizes.ok()) continue;
    size_t total = 0;
    for (size_t s : *sizes) total += s;
    if (total > size) continue;  // the result file would be refused for its size
    std::vector<std::string> payload;
    size_t at = size - total;
    for (size_t s : *sizes) {
      payload.emplace_back(reinterpret_cast<const char*>(file) + at, s);
      at += s;
    }
    absl::StatusOr<reptile::TaskResult> result = reptile::DecodeResult(*header, item, shape, std::move(payload));
    if (!result.ok()) continue;
    if (item.kind == reptile::WorkKind::kEvaluate) {
      if (result->delta.defined() || result->compact_sums) __builtin_trap();
    } else if (item.tasks.size() > 1) {
      if (!result->compact_sums || result->compact_sums->delta.numel() != kNumel) __builtin_trap();
    } else if (!result->delta.defined() || result->delta.numel() != kNumel ||
               result->adam_v.defined() != choice.moments.second || result->adam_m.defined() != choice.moments.first) {
      __builtin_trap();
    }
  }
}

std::string ReadLink(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Seeds: a board, and claims of 3 items whose slots hold well-formed
// results, their tensors appended as the file's tail.
void WriteSeeds(const std::string& folder) {
  char pattern[] = "/tmp/shared_memory_seeds.XXXXXX";
  const std::string scratch = mkdtemp(pattern);
  {
    absl::StatusOr<reptile::SharedBoard> board = reptile::SharedBoard::Create(scratch, reptile::ExperimentConfig());
    if (!board.ok()) abort();
    std::ofstream(folder + "/board", std::ios::binary) << '\0' << ReadLink(reptile::SharedBoardPath(scratch));
  }
  for (uint8_t selector : {uint8_t{1}, uint8_t{1 | 2}, uint8_t{1 | 4}, uint8_t{1 | 8 | 16}}) {
    const Choice choice = Decode(selector);
    const reptile::WorkItem item = OwnItem(choice);
    std::string tail, bytes;
    {
      absl::StatusOr<reptile::SharedBatch> batch = reptile::SharedBatch::Create(scratch, OwnBatch(), OwnSpecs(choice));
      if (!batch.ok()) abort();
      reptile::TaskResult result;
      result.loss = 0.5;
      if (!choice.evaluate) {
        const torch::Tensor ones = torch::ones({kNumel});
        if (item.tasks.size() > 1) {
          result.sums.emplace(kNumel, kMetaBatch, choice.moments);
          for (size_t t = 0; t < item.tasks.size(); ++t)
            if (!result.sums->Add(ones, choice.moments.first ? ones : torch::Tensor(),
                                  choice.moments.second ? ones : torch::Tensor()).ok())
              abort();
        } else {
          result.delta = ones;
          if (choice.moments.first) result.adam_m = ones;
          if (choice.moments.second) result.adam_v = ones;
        }
      }
      const reptile::EncodedResult encoded = reptile::EncodeResult(result, reptile::DELTA_FP32, kNumel);
      const std::string header = encoded.header.SerializeAsString();
      for (size_t i = 0; i < kItems; ++i) {
        reptile::ItemSlot& slot = batch->item(i);
        std::copy(header.begin(), header.end(), slot.result);
        slot.result_bytes = static_cast<uint32_t>(header.size());
      }
      for (absl::string_view t : encoded.tensors) tail.append(t.data(), t.size());
      bytes = ReadLink(reptile::SharedClaimsPath(scratch, kBatch));
    }
    unlink(reptile::SharedBatchPath(scratch, kBatch).c_str());
    unlink(reptile::SharedClaimsPath(scratch, kBatch).c_str());
    std::ofstream(folder + "/claims-" + std::to_string(selector), std::ios::binary)
        << static_cast<char>(selector) << bytes << tail;
  }
  for (const char* file : {"board", "config"}) unlink((scratch + "/" + file).c_str());
  rmdir(scratch.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  WriteSeedsIfAsked(WriteSeeds);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const Choice choice = Decode(data[0]);
  const std::string folder = Scratch();
  if (choice.batch) {
    WriteFile(reptile::SharedClaimsPath(folder, kBatch), reinterpret_cast<const char*>(data + 1), size - 1);
    FuzzClaims(folder, choice, data + 1, size - 1);
  } else {
    WriteFile(reptile::SharedBoardPath(folder), reinterpret_cast<const char*>(data + 1), size - 1);
    (void)reptile::SharedBoard::Open(folder);
  }
  return 0;
}
