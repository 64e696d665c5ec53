#include "transport/wire/tensor_stream.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace reptile {
namespace {

torch::ScalarType WireScalarType(DeltaDtype dtype) {
  switch (dtype) {
    case DELTA_BF16:
      return torch::kBFloat16;
    case DELTA_FP16:
      return torch::kHalf;
    default:
      return torch::kFloat32;
  }
}

}  // namespace

size_t DeltaDtypeBytes(DeltaDtype dtype) {
  switch (dtype) {
    case DELTA_FP32:
      return 4;
    case DELTA_BF16:
    case DELTA_FP16:
      return 2;
    default:
      return 0;
  }
}

std::string EncodeTensor(const torch::Tensor& tensor, DeltaDtype dtype) {
  const torch::Tensor wire = tensor.to(WireScalarType(dtype)).contiguous();
  return std::string(static_cast<const char*>(wire.data_ptr()), wire.numel() * wire.element_size());
}

absl::string_view WireBytes(const torch::Tensor& tensor, DeltaDtype dtype, std::string* storage) {
  if (dtype == DELTA_FP32 && tensor.scalar_type() == torch::kFloat32 && tensor.is_contiguous())
    return absl::string_view(static_cast<const char*>(tensor.data_ptr()), tensor.numel() * sizeof(float));
  *storage = EncodeTensor(tensor, dtype);
  return *storage;
}

namespace {

absl::Status CheckSize(size_t bytes, DeltaDtype dtype, int64_t numel) {
  const size_t element = DeltaDtypeBytes(dtype);
  if (element == 0) return absl::InvalidArgumentError(absl::StrCat("unknown tensor dtype ", static_cast<int>(dtype)));
  // Divides rather than multiplies, so a huge `numel` cannot wrap around.
  if (numel < 0 || bytes % element != 0 || bytes / element != static_cast<uint64_t>(numel))
    return absl::InvalidArgumentError(
        absl::StrCat("tensor has ", bytes, " bytes, not ", numel, " elements of ", element, " bytes"));
  return absl::OkStatus();
}

// Whether every value is finite: one branch-free pass that GCC vectorizes
// (an early exit per element would not be).
__attribute__((target_clones("avx2", "default"))) bool AllFinite(const float* values, size_t n) {
  int outside = 0;
  for (size_t i = 0; i < n; ++i) outside |= !(std::fabs(values[i]) <= std::numeric_limits<float>::max());
  return outside == 0;
}

absl::StatusOr<torch::Tensor> CheckFinite(torch::Tensor tensor) {
  const float* values = tensor.data_ptr<float>();
  if (AllFinite(values, static_cast<size_t>(tensor.numel()))) return tensor;
  int64_t i = 0;
  while (std::isfinite(values[i])) ++i;
  return absl::InvalidArgumentError(absl::StrCat("tensor element ", i, " is ", values[i]));
}

}  // namespace

absl::StatusOr<torch::Tensor> DecodeTensor(const std::string& bytes, DeltaDtype dtype, int64_t numel) {
  if (absl::Status size = CheckSize(bytes.size(), dtype, numel); !size.ok()) return size;
  torch::Tensor out = torch::empty({numel}, torch::kFloat32);
  if (numel == 0) return out;  // memcpy may not be given an empty tensor's null data
  if (dtype == DELTA_FP32) {
    std::memcpy(out.data_ptr<float>(), bytes.data(), bytes.size());
  } else {
    torch::Tensor wire = torch::empty({numel}, WireScalarType(dtype));
    std::memcpy(wire.data_ptr(), bytes.data(), bytes.size());
    out.copy_(wire);
  }
  return CheckFinite(std::move(out));
}

absl::StatusOr<torch::Tensor> DecodeTensor(std::string&& bytes, DeltaDtype dtype, int64_t numel) {
  if (dtype != DELTA_FP32 || numel == 0) return DecodeTensor(static_cast<const std::string&>(bytes), dtype, numel);
  if (absl::Status size = CheckSize(bytes.size(), dtype, numel); !size.ok()) return size;
  // operator new's alignment (16) suits floats; the tensor owns the string.
  auto* owner = new std::string(std::move(bytes));
  torch::Tensor out = torch::from_blob(
      owner->data(), {numel}, [owner](void*) { delete owner; }, torch::TensorOptions(torch::kFloat32));
  return CheckFinite(std::move(out));
}

bool WriteChunks(absl::Span<const absl::string_view> tensors, const std::function<bool(TensorChunk*)>& write) {
  TensorChunk chunk;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const absl::string_view bytes = tensors[t];
    for (size_t offset = 0; offset < bytes.size(); offset += kChunkBytes) {
      chunk.set_tensor(static_cast<uint32_t>(t));
      chunk.set_offset(offset);
      chunk.set_data(bytes.data() + offset, std::min(kChunkBytes, bytes.size() - offset));
      if (!write(&chunk)) return false;
    }
  }
  return true;
}

TensorAssembler::TensorAssembler(std::vector<size_t> sizes)
    : sizes_(std::move(sizes)), received_(sizes_.size(), 0), buffers_(sizes_.size()) {}

absl::Status TensorAssembler::Check(const TensorChunk& chunk) const {
  const size_t t = chunk.tensor();
  if (t >= sizes_.size())
    return absl::InvalidArgumentError(absl::StrCat("chunk for tensor ", t, "; the stream has ", sizes_.size()));
  if (chunk.data().empty()) return absl::InvalidArgumentError(absl::StrCat("empty chunk for tensor ", t));
  if (chunk.offset() != received_[t])
    return absl::InvalidArgumentError(absl::StrCat("chunk for tensor ", t, " at byte ", chunk.offset(),
                                                   "; expected byte ", received_[t], " (chunks out of order)"));
  if (chunk.data().size() > sizes_[t] - received_[t])
    return absl::InvalidArgumentError(absl::StrCat("oversized: tensor ", t, " would reach ",
                                                   received_[t] + chunk.data().size(), " bytes; it has ",
                                                   sizes_[t]));
  return absl::OkStatus();
}

void TensorAssembler::Count(size_t tensor, size_t bytes) {
  received_[tensor] += bytes;
  total_received_ += bytes;
}

absl::Status TensorAssembler::Add(const TensorChunk& chunk) {
  if (absl::Status fits = Check(chunk); !fits.ok()) return fits;
  buffers_[chunk.tensor()].append(chunk.data());
  Count(chunk.tensor(), chunk.data().size());
  return absl::OkStatus();
}

absl::Status TensorAssembler::Add(TensorChunk&& chunk) {
  if (absl::Status fits = Check(chunk); !fits.ok()) return fits;
  std::string& buffer = buffers_[chunk.tensor()];
  const size_t bytes = chunk.data().size();
  // A message read into again keeps its string's capacity from larger
  // chunks before: taken over only where that stays within the bound on
  // memory per byte received.
  if (buffer.empty() && chunk.data().capacity() <= 2 * bytes + 15) {
    buffer.swap(*chunk.mutable_data());  // its first chunk: its bytes become the buffer
  } else {
    buffer.append(chunk.data());
  }
  Count(chunk.tensor(), bytes);
  return absl::OkStatus();
}

absl::Status TensorAssembler::Finish() const {
  for (size_t t = 0; t < sizes_.size(); ++t)
    if (received_[t] != sizes_[t])
      return absl::InvalidArgumentError(
          absl::StrCat("truncated: tensor ", t, " has ", received_[t], " of ", sizes_[t], " bytes"));
  return absl::OkStatus();
}

}  // namespace reptile
