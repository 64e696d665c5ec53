// A user's own network, scripted or traced in Python and saved with
// torch.jit.save, as a MetaModel. Its parameters and float32 buffers (batch
// norm's running statistics) are theta, submodule by submodule; buffers
// of other types (num_batches_tracked) stay each learner's own. The graph
// runs unoptimised (the profiling executor would compute the first calls
// differently from the later ones), so a task's result does not depend on
// what its learner ran before. Each training-mode batch norm followed by a
// ReLU runs as the built-in networks' fused kernel (BatchNormRelu), so a
// TorchScript copy of a built-in network computes the same bits. Not
// thread-safe: one model per learner, as for the built-in networks.
#ifndef REPTILE_CORE_MODELS_TORCHSCRIPT_MODEL_H_
#define REPTILE_CORE_MODELS_TORCHSCRIPT_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/models/models.h"

namespace reptile {

// The largest model file a worker takes from its coordinator (gRPC, MPI).
inline constexpr uint64_t kMaxTorchScriptBytes = uint64_t{4} << 30;

// SHA-256 (hex) of a model file's bytes, as model.torchscript_sha256 holds it.
std::string TorchScriptDigest(const std::string& bytes);

// Makes `bytes` this process's model of digest TorchScriptDigest(*bytes),
// e.g. a model a worker received from its coordinator. Thread-safe.
void ProvideTorchScriptBytes(std::shared_ptr<const std::string> bytes);

// The bytes of `config`'s model: those provided or read before for
// model.torchscript_sha256, else model.torchscript_file's, checked against
// the digest when it is set. NotFound naming the file if it cannot be read;
// FailedPrecondition naming the file and both digests if it holds another
// model than the run's. Thread-safe.
absl::StatusOr<std::shared_ptr<const std::string>> TorchScriptBytes(const ExperimentConfig& config);

// Loads the module in `bytes` and checks it against the task of `config`:
// at least one parameter, every parameter float32, and a forward that maps a
// batch of the task's inputs to float32 [batch, ways] logits ([batch, 1] for
// sine). InvalidArgument naming `source` and what is wrong.
absl::StatusOr<std::shared_ptr<MetaModel>> LoadTorchScriptModel(std::shared_ptr<const std::string> bytes,
                                                               const std::string& source,
                                                               const ExperimentConfig& config);

// Writes the module of `model` (made by LoadTorchScriptModel), as its file
// defines it, with the values its tensors hold now to `path`, in the format
// torch.jit.load reads.
absl::Status SaveTorchScriptModel(MetaModel& model, const std::string& path);

}  // namespace reptile

#endif  // REPTILE_CORE_MODELS_TORCHSCRIPT_MODEL_H_
