// Tensors on the wire: split into TensorChunks of at most kChunkBytes, and
// put back together by a TensorAssembler that checks every chunk against the
// sizes the receiver expects. This is the only decoding path for tensors that
// arrive from another process, so it trusts nothing in them.
#ifndef REPTILE_TRANSPORT_WIRE_TENSOR_STREAM_H_
#define REPTILE_TRANSPORT_WIRE_TENSOR_STREAM_H_

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "wire.pb.h"

namespace reptile {

inline constexpr size_t kChunkBytes = size_t{1} << 20;

// Bytes per element of `dtype` on the wire; 0 for a value outside the enum.
size_t DeltaDtypeBytes(DeltaDtype dtype);

// `tensor` (fp32, contiguous) as little-endian bytes in `dtype`.
std::string EncodeTensor(const torch::Tensor& tensor, DeltaDtype dtype);
// What EncodeTensor returns, without the copy where none is needed: a
// contiguous fp32 tensor sent as fp32 is viewed where it lies (valid while
// its storage lives); any other is encoded into *storage and viewed there.
absl::string_view WireBytes(const torch::Tensor& tensor, DeltaDtype dtype, std::string* storage);

// Bytes in `dtype` back to an fp32 tensor of `numel` elements. Fails if the
// size is wrong or any value is NaN or infinite. The rvalue form takes over
// fp32 bytes as the tensor's storage instead of copying them.
absl::StatusOr<torch::Tensor> DecodeTensor(const std::string& bytes, DeltaDtype dtype, int64_t numel);
absl::StatusOr<torch::Tensor> DecodeTensor(std::string&& bytes, DeltaDtype dtype, int64_t numel);

// Calls `write` with every chunk of every tensor in turn (tensor i is chunk
// field `tensor` = i); `write` may take the chunk's contents (Swap it into
// a message). Returns false as soon as `write` does.
bool WriteChunks(absl::Span<const absl::string_view> tensors, const std::function<bool(TensorChunk*)>& write);

// Reassembles the tensors of one stream. Chunks of a tensor must arrive in
// order without gaps or overlap, and no tensor may grow past its size. Memory
// follows the bytes received (a buffer grows as its chunks arrive, to at most
// twice what it holds), never a size alone: a peer that stops early or
// sends one byte does not make the receiver allocate whole tensors.
class TensorAssembler {
 public:
  // `sizes[i]`: the exact byte size tensor i must reach.
  explicit TensorAssembler(std::vector<size_t> sizes);

  // InvalidArgument naming the tensor and offset when the chunk does not fit.
  // The rvalue form takes over the bytes of a tensor's first chunk (for
  // tensors up to kChunkBytes, all of it) instead of copying them, unless
  // their string holds more than twice their size.
  absl::Status Add(const TensorChunk& chunk);
  absl::Status Add(TensorChunk&& chunk);
  // InvalidArgument if any tensor is incomplete (a truncated stream).
  absl::Status Finish() const;

  // Tensor i's bytes; valid after Finish() succeeded.
  std::string& bytes(size_t i) { return buffers_[i]; }
  size_t bytes_received() const { return total_received_; }

 private:
  // Checks `chunk` against what tensor chunk.tensor() still lacks.
  absl::Status Check(const TensorChunk& chunk) const;
  void Count(size_t tensor, size_t bytes);

  std::vector<size_t> sizes_;
  std::vector<size_t> received_;
  std::vector<std::string> buffers_;
  size_t total_received_ = 0;
};

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_WIRE_TENSOR_STREAM_H_
