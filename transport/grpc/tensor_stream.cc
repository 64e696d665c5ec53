#include "transport/grpc/tensor_stream.h"

#include <cmath>
#include <cstring>

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

absl::StatusOr<torch::Tensor> DecodeTensor(const std::string& bytes, DeltaDtype dtype, int64_t numel) {
  const size_t element = DeltaDtypeBytes(dtype);
  if (element == 0) return absl::InvalidArgumentError(absl::StrCat("unknown tensor dtype ", static_cast<int>(dtype)));
  // Divides rather than multiplies, so a huge `numel` cannot wrap around.
  if (numel < 0 || bytes.size() % element != 0 || bytes.size() / element != static_cast<uint64_t>(numel))
    return absl::InvalidArgumentError(
        absl::StrCat("tensor has ", bytes.size(), " bytes, not ", numel, " elements of ", element, " bytes"));
  torch::Tensor out = torch::empty({numel}, torch::kFloat32);
  if (numel == 0) return out;  // memcpy may not be given an empty tensor's null data
  if (dtype == DELTA_FP32) {
    std::memcpy(out.data_ptr<float>(), bytes.data(), bytes.size());
  } else {
    torch::Tensor wire = torch::empty({numel}, WireScalarType(dtype));
    std::memcpy(wire.data_ptr(), bytes.data(), bytes.size());
    out.copy_(wire);
  }
  const float* values = out.data_ptr<float>();
  for (int64_t i = 0; i < numel; ++i)
    if (!std::isfinite(values[i]))
      return absl::InvalidArgumentError(absl::StrCat("tensor element ", i, " is ", values[i]));
  return out;
}

bool WriteChunks(absl::Span<const std::string* const> tensors, const std::function<bool(const TensorChunk&)>& write) {
  TensorChunk chunk;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const std::string& bytes = *tensors[t];
    for (size_t offset = 0; offset < bytes.size(); offset += kChunkBytes) {
      chunk.set_tensor(static_cast<uint32_t>(t));
      chunk.set_offset(offset);
      chunk.set_data(bytes.data() + offset, std::min(kChunkBytes, bytes.size() - offset));
      if (!write(chunk)) return false;
    }
  }
  return true;
}

TensorAssembler::TensorAssembler(std::vector<size_t> sizes)
    : sizes_(std::move(sizes)), received_(sizes_.size(), 0), buffers_(sizes_.size()) {}

absl::Status TensorAssembler::Add(const TensorChunk& chunk) {
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
  buffers_[t].append(chunk.data());
  received_[t] += chunk.data().size();
  total_received_ += chunk.data().size();
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
