#include "core/models/export.h"

#include <fstream>

#include <torch/serialize.h>

#include "absl/strings/str_cat.h"
#include "core/flat_parameters.h"
#include "core/models/models.h"
#include "core/models/torchscript_model.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

// The tensors of `layout` as views into `theta`; InvalidArgument if one
// reaches past its end.
absl::StatusOr<std::vector<NamedTensor>> Unflatten(const std::vector<ParameterShape>& layout,
                                                   const torch::Tensor& theta) {
  std::vector<NamedTensor> tensors;
  for (const ParameterShape& shape : layout) {
    std::vector<int64_t> dims(shape.dims().begin(), shape.dims().end());
    int64_t numel = 1;
    for (int64_t d : dims) numel *= d;
    if (shape.offset() < 0 || numel < 0 || shape.offset() + numel > theta.numel())
      return absl::InvalidArgumentError(absl::StrCat("parameter ", shape.name(), " lies past theta's ", theta.numel(),
                                                     " values"));
    tensors.emplace_back(shape.name(), theta.narrow(0, shape.offset(), numel).view(dims));
  }
  return tensors;
}

absl::Status WriteStateDict(const std::vector<NamedTensor>& tensors, const std::string& path) {
  c10::Dict<std::string, torch::Tensor> state;
  for (const NamedTensor& t : tensors) state.insert(t.first, t.second.clone());
  const std::vector<char> bytes = torch::pickle_save(state);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status WriteTorchScript(const ExperimentConfig& config, const torch::Tensor& theta, const std::string& path) {
  if (config.model().arch() != TORCHSCRIPT)
    return absl::FailedPreconditionError(absl::StrCat(
        "--format torchscript needs a run of a TorchScript model; this one is ", ModelArch_Name(config.model().arch()),
        ": use --format state_dict"));
  ASSIGN_OR_RETURN(std::shared_ptr<MetaModel> model, MakeModel(config));
  FlatParameters flat(*model);
  if (flat.numel() != theta.numel())
    return absl::InvalidArgumentError(absl::StrCat("theta has ", theta.numel(), " values; the model lays out ",
                                                   flat.numel()));
  {
    torch::NoGradGuard no_grad;
    flat.values().copy_(theta);
  }
  return SaveTorchScriptModel(*model, path);
}

}  // namespace

absl::StatusOr<ExportFormat> ParseExportFormat(const std::string& name) {
  if (name == "torchscript") return ExportFormat::kTorchScript;
  if (name == "state_dict") return ExportFormat::kStateDict;
  return absl::InvalidArgumentError(absl::StrCat("--format must be torchscript or state_dict, not ", name));
}

absl::Status ExportModel(const ExperimentConfig& config, const std::vector<ParameterShape>& layout,
                         const torch::Tensor& theta, ExportFormat format, const std::string& path) {
  try {
    if (format == ExportFormat::kTorchScript) return WriteTorchScript(config, theta, path);
    ASSIGN_OR_RETURN(std::vector<NamedTensor> tensors, Unflatten(layout, theta));
    return WriteStateDict(tensors, path);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("exporting to ", path, " failed: ", e.what_without_backtrace()));
  }
}

}  // namespace reptile
