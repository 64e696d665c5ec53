// Fuzzes checkpoint decoding. The input is a checkpoint file; when it starts
// with the checkpoint magic its SHA-256 is recomputed first, so mutations
// reach the payload parser instead of stopping at the checksum (inputs
// without the magic exercise the header checks). A checkpoint that is
// accepted must be usable: tensors of the sizes it declares.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "coordinator/checkpoint.h"
#include "core/fingerprint.h"
#include "google/protobuf/stubs/logging.h"

namespace {

// The file layout of coordinator/checkpoint.cc: magic, SHA-256 of the rest,
// payload.
constexpr char kMagic[8] = {'R', 'E', 'P', 'T', 'C', 'K', 'P', '1'};
constexpr size_t kHeader = sizeof(kMagic) + 32;

}  // namespace

// Protobuf logs malformed input (e.g. strings that are not UTF-8) to stderr;
// the fuzzer only needs the return values.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string file(reinterpret_cast<const char*>(data), size);
  if (file.size() >= kHeader && std::memcmp(file.data(), kMagic, sizeof(kMagic)) == 0) {
    const reptile::Sha256Digest digest = reptile::Sha256(file.data() + kHeader, file.size() - kHeader);
    std::memcpy(&file[sizeof(kMagic)], digest.data(), digest.size());
  }
  absl::StatusOr<reptile::TrainingState> state = reptile::ParseCheckpoint(file, "fuzz/checkpoint.bin");
  if (!state.ok()) return 0;
  if (!state->meta.parameters.defined() || state->meta.parameters.dim() != 1) __builtin_trap();
  (void)reptile::ParameterFingerprint(state->meta.parameters);
  if (state->meta.adam_m.defined() && !state->meta.adam_v.defined()) __builtin_trap();
  return 0;
}
