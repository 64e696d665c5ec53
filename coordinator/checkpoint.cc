#include "coordinator/checkpoint.h"

#include <sys/types.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "coordinator/atomic_file.h"
#include "core/fingerprint.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

// File layout: kMagic, SHA-256 of the payload (32 bytes), payload (a
// serialized Checkpoint message).
constexpr char kMagic[8] = {'R', 'E', 'P', 'T', 'C', 'K', 'P', '1'};
constexpr uint32_t kFormatVersion = 1;
// Owner only: a checkpoint is the whole trained model and its run config.
constexpr mode_t kCheckpointMode = 0600;

void ToFlat(const torch::Tensor& t, FlatTensor* out) {
  torch::Tensor c = t.contiguous();
  out->set_size(c.numel());
  out->set_data(c.data_ptr<float>(), c.numel() * sizeof(float));
}

absl::StatusOr<torch::Tensor> FromFlat(const FlatTensor& flat, const std::string& what, const std::string& path) {
  const std::string& bytes = flat.data();
  // Divides rather than multiplies, so a huge size cannot wrap around.
  if (flat.size() < 0 || bytes.size() % sizeof(float) != 0 ||
      bytes.size() / sizeof(float) != static_cast<uint64_t>(flat.size()))
    return absl::DataLossError(absl::StrCat("checkpoint ", path, ": ", what, " has ", bytes.size(),
                                            " bytes, not ", flat.size(), " floats"));
  torch::Tensor t = torch::empty({flat.size()}, torch::kFloat32);
  if (!bytes.empty()) std::memcpy(t.data_ptr<float>(), bytes.data(), bytes.size());  // an empty t's data is null
  return t;
}

// With adam_beta1 = 0 Adam's m is not part of the meta-state (see
// CarriedMoments): it is not written, and dropped on read from checkpoints
// written before it was left out.
bool DropsFirstMoment(const ExperimentConfig& config) { return config.inner().adam_beta1() == 0; }

// Every tensor of the layout must lie inside the parameters, and Adam's
// moments must be as long as they are; v comes with m, and m with v unless
// adam_beta1 is 0.
absl::Status CheckConsistent(const TrainingState& state, const std::string& path) {
  const int64_t numel = state.meta.parameters.numel();
  for (const ParameterShape& shape : state.layout) {
    int64_t elements = 1;
    bool fits = shape.offset() >= 0;
    for (int64_t d : shape.dims()) {
      fits = fits && d >= 0 && (d == 0 || elements <= numel / d);  // no product past numel, so no overflow
      if (fits) elements *= d;
    }
    if (!fits || shape.offset() > numel - elements)
      return absl::DataLossError(absl::StrCat("checkpoint ", path, ": layout tensor '", shape.name(), "' [",
                                              absl::StrJoin(shape.dims(), ","), "] at offset ", shape.offset(),
                                              " does not fit in the ", numel, " parameters"));
  }
  const MetaState& meta = state.meta;
  for (const auto& [moment, name] : {std::pair{&meta.adam_m, "m"}, std::pair{&meta.adam_v, "v"}})
    if (moment->defined() && moment->numel() != numel)
      return absl::DataLossError(absl::StrCat("checkpoint ", path, ": Adam's ", name, " has ", moment->numel(),
                                              " values for ", numel, " parameters"));
  if (meta.adam_m.defined() && !meta.adam_v.defined())
    return absl::DataLossError(absl::StrCat("checkpoint ", path, ": Adam's m without its v"));
  if (meta.adam_v.defined() && !meta.adam_m.defined() && !DropsFirstMoment(state.config))
    return absl::DataLossError(absl::StrCat("checkpoint ", path, ": Adam's v without its m, but inner.adam_beta1 is ",
                                            state.config.inner().adam_beta1()));
  return absl::OkStatus();
}

}  // namespace

std::string ParameterFingerprint(const torch::Tensor& parameters) {
  torch::Tensor c = parameters.contiguous();
  return ToHex(Sha256(c.data_ptr<float>(), c.numel() * sizeof(float)));
}

absl::Status CheckCheckpointFits(const ExperimentConfig& config, int64_t numel) {
  const CarriedMoments carried = CarriedMomentsOf(config);
  const int tensors = 1 + (carried.first && !DropsFirstMoment(config) ? 1 : 0) + (carried.second ? 1 : 0);
  const double bytes = static_cast<double>(numel) * 4 * tensors;
  constexpr double kLimit = 2147483647.0 - (1 << 20);  // protobuf's 2 GiB, less room for the config and layout
  if (bytes <= kLimit) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "a model of %d parameters makes checkpoints of %.2f GiB (%d fp32 tensor%s: theta%s), over the 2 GiB a "
      "checkpoint holds; train a smaller model%s",
      numel, bytes / (1 << 30), tensors, tensors > 1 ? "s" : "", tensors > 1 ? " and Adam's carried moments" : "",
      tensors > 1 ? ", or without carried Adam moments (inner.state_mode RESET)" : ""));
}

absl::Status WriteCheckpoint(const std::string& path, const TrainingState& state) {
  Checkpoint message;
  message.set_format_version(kFormatVersion);
  *message.mutable_config() = state.config;
  message.set_round(state.round);
  message.set_finished(state.finished);
  for (const ParameterShape& shape : state.layout) *message.add_layout() = shape;
  ToFlat(state.meta.parameters, message.mutable_parameters());
  if (state.meta.adam_m.defined() && !DropsFirstMoment(state.config))
    ToFlat(state.meta.adam_m, message.mutable_adam_m());
  if (state.meta.adam_v.defined()) {
    ToFlat(state.meta.adam_v, message.mutable_adam_v());
    message.set_adam_step(state.meta.adam_step);
  }
  message.set_sampler_seed(state.config.seed());
  std::string payload;
  if (!message.SerializeToString(&payload)) return absl::InternalError("cannot serialize checkpoint");
  const Sha256Digest digest = Sha256(payload.data(), payload.size());

  const absl::string_view header(kMagic, sizeof(kMagic));
  const absl::string_view checksum(reinterpret_cast<const char*>(digest.data()), digest.size());
  return WriteFileAtomically(path, {header, checksum, payload}, kCheckpointMode);
}

absl::StatusOr<TrainingState> ReadCheckpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int error = errno;  // e.g. another user's checkpoint, which is theirs only
    if (!std::filesystem::exists(path)) return absl::NotFoundError(absl::StrCat("no checkpoint at ", path));
    return absl::ErrnoToStatus(error, absl::StrCat("cannot read checkpoint ", path));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseCheckpoint(buffer.str(), path);
}

absl::StatusOr<TrainingState> ParseCheckpoint(const std::string& file, const std::string& path) {
  constexpr size_t kHeader = sizeof(kMagic) + 32;
  if (file.size() < kHeader || std::memcmp(file.data(), kMagic, sizeof(kMagic)) != 0)
    return absl::DataLossError(absl::StrCat(path, " is not a reptile checkpoint (bad header)"));
  const Sha256Digest digest = Sha256(file.data() + kHeader, file.size() - kHeader);
  if (std::memcmp(digest.data(), file.data() + sizeof(kMagic), 32) != 0)
    return absl::DataLossError(absl::StrCat("checkpoint ", path, " is corrupt or truncated (checksum mismatch)"));
  // Protobuf parses at most 2 GiB; a larger size would not fit the int below.
  if (file.size() - kHeader > static_cast<size_t>(std::numeric_limits<int>::max()))
    return absl::DataLossError(absl::StrCat("checkpoint ", path, " is over 2 GiB, more than a checkpoint can hold"));
  Checkpoint message;
  if (!message.ParseFromArray(file.data() + kHeader, static_cast<int>(file.size() - kHeader)))
    return absl::DataLossError(absl::StrCat("checkpoint ", path, " does not parse"));
  if (message.format_version() != kFormatVersion)
    return absl::DataLossError(absl::StrCat("checkpoint ", path, " has format version ", message.format_version(),
                                            ", this build reads ", kFormatVersion));
  TrainingState state;
  state.config = message.config();
  state.round = message.round();
  state.finished = message.finished();
  state.layout.assign(message.layout().begin(), message.layout().end());
  ASSIGN_OR_RETURN(state.meta.parameters, FromFlat(message.parameters(), "parameters", path));
  if (message.has_adam_m() && !DropsFirstMoment(state.config)) {
    ASSIGN_OR_RETURN(state.meta.adam_m, FromFlat(message.adam_m(), "adam_m", path));
  }
  if (message.has_adam_v()) {
    ASSIGN_OR_RETURN(state.meta.adam_v, FromFlat(message.adam_v(), "adam_v", path));
    state.meta.adam_step = message.adam_step();
  }
  RETURN_IF_ERROR(CheckConsistent(state, path));
  return state;
}

}  // namespace reptile
