// Fuzzes the receiving end of the result and state streams: TensorChunk
// messages from a peer, reassembled by a TensorAssembler against the sizes
// the receiver's model decides, then decoded. Input layout:
//   byte 0     bit 0: tensor 0 is sent (a delta or the parameters) in the
//              dtype of byte 1; bit 1: Adam's v follows, in fp32; bit 2
//              (with bit 1): Adam's m comes ahead of v, in fp32
//   byte 1     the DeltaDtype value the peer's header names
//   bytes 2-3  the model's parameter count, little-endian
//   the rest   TensorChunk messages, each preceded by its varint length
// A stream must be refused cleanly or rebuilt to exactly the bytes of the
// chunks that were accepted; a refused chunk must leave the assembler as it
// was, and a tensor's buffer must hold no more than about twice the bytes
// received for it.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/util/delimited_message_util.h"
#include "transport/wire/tensor_stream.h"

// Protobuf logs malformed input (e.g. strings that are not UTF-8) to stderr;
// the fuzzer only needs the return values.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr size_t kPrefix = 4;
  if (size < kPrefix) return 0;
  const bool sends_tensor = (data[0] & 1) != 0, sends_moments = (data[0] & 2) != 0;
  const bool sends_first_moment = sends_moments && (data[0] & 4) != 0;
  const auto dtype = static_cast<reptile::DeltaDtype>(data[1]);
  const int64_t numel = data[2] | data[3] << 8;
  const size_t element = reptile::DeltaDtypeBytes(dtype);
  if (sends_tensor && element == 0) {  // the receivers refuse the header
    if (reptile::DecodeTensor(std::string(), dtype, numel).ok()) __builtin_trap();
    return 0;
  }
  std::vector<size_t> sizes;
  std::vector<reptile::DeltaDtype> dtypes;
  if (sends_tensor) {
    sizes.push_back(numel * element);
    dtypes.push_back(dtype);
  }
  if (sends_moments) {
    const size_t moments = sends_first_moment ? 2 : 1;
    sizes.insert(sizes.end(), moments, numel * 4);
    dtypes.insert(dtypes.end(), moments, reptile::DELTA_FP32);
  }

  reptile::TensorAssembler assembler(sizes);
  std::vector<std::string> accepted(sizes.size());
  google::protobuf::io::ArrayInputStream raw(data + kPrefix, static_cast<int>(size - kPrefix));
  google::protobuf::io::CodedInputStream coded(&raw);
  reptile::TensorChunk chunk;
  // The message is read into again and again, as the receivers do; odd
  // chunks go through the moving Add (which may take the chunk's string),
  // even ones through the copying one.
  for (bool moving = false;
       google::protobuf::util::ParseDelimitedFromCodedStream(&chunk, &coded, /*clean_eof=*/nullptr);
       moving = !moving) {
    const reptile::TensorChunk sent = chunk;
    if (!(moving ? assembler.Add(std::move(chunk)) : assembler.Add(chunk)).ok()) continue;
    const size_t t = sent.tensor();
    if (t >= sizes.size() || sent.offset() != accepted[t].size() ||
        accepted[t].size() + sent.data().size() > sizes[t])
      __builtin_trap();
    accepted[t] += sent.data();
    // Memory follows the bytes received (15: std::string's inline capacity).
    if (assembler.bytes(t).capacity() > 2 * accepted[t].size() + 15) __builtin_trap();
  }
  if (!assembler.Finish().ok()) return 0;
  size_t total = 0;
  for (size_t t = 0; t < sizes.size(); ++t) {
    if (assembler.bytes(t) != accepted[t]) __builtin_trap();
    total += sizes[t];
    absl::StatusOr<torch::Tensor> tensor = reptile::DecodeTensor(assembler.bytes(t), dtypes[t], numel);
    if (tensor.ok() && tensor->numel() != numel) __builtin_trap();
  }
  if (assembler.bytes_received() != total) __builtin_trap();
  return 0;
}
