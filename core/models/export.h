// A trained theta as files PyTorch reads: the run's TorchScript module with
// theta in it (torch.jit.load), or a state dict (torch.load) whose keys are
// the parameter names of the network (python/reptile_models.py defines the
// built-in networks as PyTorch modules with those names). Stateless.
#ifndef REPTILE_CORE_MODELS_EXPORT_H_
#define REPTILE_CORE_MODELS_EXPORT_H_

#include <string>
#include <vector>

#include <torch/types.h>

#include "absl/status/statusor.h"
#include "reptile.pb.h"

namespace reptile {

enum class ExportFormat { kTorchScript, kStateDict };

// "torchscript" or "state_dict"; InvalidArgument naming the choices.
absl::StatusOr<ExportFormat> ParseExportFormat(const std::string& name);

// Writes `theta` (flat, as `layout` lays it out) of the network `config`
// names to `path` in `format`. kTorchScript needs a TORCHSCRIPT config
// (FailedPrecondition otherwise); InvalidArgument if theta does not fit the
// layout; Internal naming the file if it cannot be written.
absl::Status ExportModel(const ExperimentConfig& config, const std::vector<ParameterShape>& layout,
                         const torch::Tensor& theta, ExportFormat format, const std::string& path);

}  // namespace reptile

#endif  // REPTILE_CORE_MODELS_EXPORT_H_
