#include "core/models/torchscript_model.h"

#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <utility>

#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/subgraph_rewrite.h>
#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/library.h>
#include <torch/script.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/fingerprint.h"
#include "core/models/batch_norm_relu.h"

namespace reptile {
namespace {

// A LibTorch error in one line: its last (an error inside a TorchScript
// graph comes after the Python traceback of where it happened).
std::string OneLine(const std::exception& e) {
  const auto* torch_error = dynamic_cast<const c10::Error*>(&e);
  std::string what = torch_error != nullptr ? torch_error->what_without_backtrace() : e.what();
  while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
  return what.substr(what.rfind('\n') + 1);
}

std::string Shape(const torch::Tensor& t) { return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]"); }

// relu(torch.batch_norm(...)) for a module's rewritten forward: the fused
// kernel of the built-in networks where it applies (training mode, affine,
// float32), LibTorch's two operations elsewhere.
torch::Tensor BatchNormReluOp(const torch::Tensor& input, const c10::optional<torch::Tensor>& weight,
                              const c10::optional<torch::Tensor>& bias, const c10::optional<torch::Tensor>& running_mean,
                              const c10::optional<torch::Tensor>& running_var, bool training, double momentum,
                              double epsilon, bool cudnn_enabled) {
  auto float32 = [](const c10::optional<torch::Tensor>& t) {
    return t.has_value() && t->defined() && t->scalar_type() == torch::kFloat32 && t->is_contiguous();
  };
  const bool running = float32(running_mean) && float32(running_var);
  const bool no_running = !(running_mean.has_value() && running_mean->defined()) &&
                          !(running_var.has_value() && running_var->defined());
  if (training && input.scalar_type() == torch::kFloat32 && input.dim() >= 2 && float32(weight) && float32(bias) &&
      (running || no_running)) {
    return BatchNormRelu(input, *weight, *bias, epsilon, running ? *running_mean : torch::Tensor(),
                         running ? *running_var : torch::Tensor(), momentum);
  }
  return torch::relu(
      torch::batch_norm(input, weight, bias, running_mean, running_var, training, momentum, epsilon, cudnn_enabled));
}

TORCH_LIBRARY(reptile, library) {
  library.def(
      "batch_norm_relu(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, "
      "bool training, float momentum, float eps, bool cudnn_enabled) -> Tensor",
      &BatchNormReluOp);
}

bool HasCalls(const torch::jit::Block& block) {
  for (const torch::jit::Node* node : block.nodes()) {
    if (node->kind() == c10::prim::CallFunction || node->kind() == c10::prim::CallMethod) return true;
    for (const torch::jit::Block* inner : node->blocks())
      if (HasCalls(*inner)) return true;
  }
  return false;
}

// Rewrites `module`'s forward, with every call inlined, so that each batch
// norm whose only use is a ReLU runs as reptile::batch_norm_relu. Before the
// first forward: the interpreter plans a graph once.
void FuseBatchNormRelu(torch::jit::Module& module) {
  std::shared_ptr<torch::jit::Graph> graph = module.get_method("forward").graph();
  // One level of calls a pass: unoptimised, a callee's graph comes as written.
  for (int depth = 0; depth < 64 && HasCalls(*graph->block()); ++depth) torch::jit::Inline(*graph);
  torch::jit::ConstantPropagation(graph);  // F.relu's `if inplace:` branch, decided
  const std::string fused = R"(
graph(%x, %w, %b, %mean, %var, %training, %momentum, %eps, %cudnn):
  %r = reptile::batch_norm_relu(%x, %w, %b, %mean, %var, %training, %momentum, %eps, %cudnn)
  return (%r))";
  torch::jit::SubgraphRewriter rewriter;
  for (const char* relu : {"aten::relu", "aten::relu_"}) {
    rewriter.RegisterRewritePattern(absl::StrCat(R"(
graph(%x, %w, %b, %mean, %var, %training, %momentum, %eps, %cudnn):
  %y = aten::batch_norm(%x, %w, %b, %mean, %var, %training, %momentum, %eps, %cudnn)
  %r = )", relu, R"((%y)
  return (%r))"),
                                    fused);
  }
  rewriter.runOnGraph(graph);
}

// Module by module (pre-order), each one's parameters and then its float32
// buffers: a layer's tensors lie together, and the last layer is the
// classifier (LayersOf, `reptile analyze`).
std::vector<NamedTensor> FlatTensorsOf(const torch::jit::Module& module) {
  std::vector<NamedTensor> tensors;
  for (const auto& m : module.named_modules()) {
    const std::string prefix = m.name.empty() ? "" : m.name + ".";
    for (const auto& p : m.value.named_parameters(/*recurse=*/false)) tensors.emplace_back(prefix + p.name, p.value);
    for (const auto& b : m.value.named_buffers(/*recurse=*/false))
      if (b.value.scalar_type() == torch::kFloat32) tensors.emplace_back(prefix + b.name, b.value);
  }
  return tensors;
}

torch::jit::Module Load(const std::string& bytes) {
  std::istringstream in(bytes);
  return torch::jit::load(in, torch::kCPU);
}

// `module` runs with its forward rewritten (FuseBatchNormRelu); `bytes` is
// the file it came from, what Save writes back with theta's values.
class ScriptedModel final : public MetaModel {
 public:
  ScriptedModel(torch::jit::Module module, std::shared_ptr<const std::string> bytes)
      : module_(std::move(module)), bytes_(std::move(bytes)) {
    train(true);
  }

  // The interpreter throws std::runtime_error; callers catch c10::Error.
  torch::Tensor forward(torch::Tensor input) override {
    torch::jit::setGraphExecutorOptimize(false);  // a per-thread setting
    try {
      return module_.forward({std::move(input)}).toTensor();
    } catch (const c10::Error&) {
      throw;
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "the TorchScript forward failed: ", OneLine(e));
    }
  }

  void train(bool on) override {
    torch::nn::Module::train(on);
    module_.train(on);
  }

  std::vector<NamedTensor> FlatTensors() override { return FlatTensorsOf(module_); }

  // The module as loaded from its file, holding the values of this one's
  // tensors, each in a storage of its own.
  void Save(const std::string& path) {
    torch::jit::Module saved = Load(*bytes_);
    std::vector<NamedTensor> values = FlatTensors();
    std::vector<NamedTensor> targets = FlatTensorsOf(saved);
    TORCH_CHECK(values.size() == targets.size(), "the model file lays out other tensors");
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < values.size(); ++i) {
      TORCH_CHECK(values[i].first == targets[i].first, "the model file lays out other tensors");
      targets[i].second.copy_(values[i].second);
    }
    saved.save(path);
  }

 private:
  torch::jit::Module module_;
  std::shared_ptr<const std::string> bytes_;
};

// A batch of two inputs of the task's shape (not drawn at random: the
// global generator is left alone).
torch::Tensor ProbeInput(const TaskConfig& task) {
  const std::vector<int64_t> shape =
      task.family() == SINE ? std::vector<int64_t>{2, 1}
                            : std::vector<int64_t>{2, InputChannels(task), task.image_size(), task.image_size()};
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  return torch::linspace(0, 1, numel).reshape(shape);
}

absl::Status CheckModule(torch::jit::Module& module, const std::string& source, const TaskConfig& task) {
  auto invalid = [&source](const std::string& what) { return absl::InvalidArgumentError(absl::StrCat(source, ": ", what)); };
  int parameters = 0;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    ++parameters;
    if (p.value.scalar_type() != torch::kFloat32)
      return invalid(absl::StrCat("parameter ", p.name, " is ", c10::toString(p.value.scalar_type()),
                                  ", not float32 (call .float() before saving)"));
  }
  if (parameters == 0) return invalid("the module has no parameters: nothing to meta-train");
  // A copy: a forward in training mode moves batch norm's running statistics.
  torch::jit::Module probe = module.deepcopy();
  probe.train(true);
  const torch::Tensor input = ProbeInput(task);
  torch::Tensor output;
  try {
    torch::NoGradGuard no_grad;
    torch::jit::IValue result = probe.forward({input});
    if (!result.isTensor()) return invalid(absl::StrCat("forward returns a ", result.tagKind(), ", not one tensor"));
    output = result.toTensor();
  } catch (const std::exception& e) {
    return invalid(absl::StrCat("forward fails on a batch of the task's inputs ", Shape(input), ": ", OneLine(e)));
  }
  const int64_t outputs = task.family() == SINE ? 1 : task.ways();
  const std::string wanted = task.family() == SINE ? "1 (sine regression)" : absl::StrCat(outputs, " (task.ways)");
  if (output.dim() != 2 || output.size(0) != input.size(0) || output.size(1) != outputs)
    return invalid(absl::StrCat("forward maps inputs ", Shape(input), " to ", Shape(output), "; the task needs [",
                                input.size(0), ", ", wanted, "]"));
  if (output.scalar_type() != torch::kFloat32)
    return invalid(absl::StrCat("forward returns ", c10::toString(output.scalar_type()), ", not float32"));
  return absl::OkStatus();
}

// The models this process holds, by digest.
class ModelBytes {
 public:
  static ModelBytes& Get() {
    static ModelBytes* bytes = new ModelBytes();
    return *bytes;
  }
  void Add(std::shared_ptr<const std::string> bytes) {
    const std::string digest = TorchScriptDigest(*bytes);
    std::lock_guard<std::mutex> lock(mu_);
    by_digest_[digest] = std::move(bytes);
  }
  std::shared_ptr<const std::string> Find(const std::string& digest) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_digest_.find(digest);
    return it == by_digest_.end() ? nullptr : it->second;
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<const std::string>> by_digest_;
};

}  // namespace

std::string TorchScriptDigest(const std::string& bytes) { return ToHex(Sha256(bytes.data(), bytes.size())); }

void ProvideTorchScriptBytes(std::shared_ptr<const std::string> bytes) { ModelBytes::Get().Add(std::move(bytes)); }

absl::StatusOr<std::shared_ptr<const std::string>> TorchScriptBytes(const ExperimentConfig& config) {
  const std::string& path = config.model().torchscript_file();
  const std::string& wanted = config.model().torchscript_sha256();
  if (!wanted.empty()) {
    if (std::shared_ptr<const std::string> known = ModelBytes::Get().Find(wanted)) return known;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("model.torchscript_file ", path, ": cannot read it"));
  std::ostringstream text;
  text << in.rdbuf();
  auto bytes = std::make_shared<const std::string>(text.str());
  if (!wanted.empty()) {
    const std::string digest = TorchScriptDigest(*bytes);
    if (digest != wanted)
      return absl::FailedPreconditionError(absl::StrCat("model.torchscript_file ", path, " has SHA-256 ", digest,
                                                        ", not the run's model (", wanted, ")"));
    ModelBytes::Get().Add(bytes);
  }
  return bytes;
}

absl::StatusOr<std::shared_ptr<MetaModel>> LoadTorchScriptModel(std::shared_ptr<const std::string> bytes,
                                                               const std::string& source,
                                                               const ExperimentConfig& config) {
  torch::jit::setGraphExecutorOptimize(false);  // for the probe below; a per-thread setting
  torch::jit::Module module;
  try {
    module = Load(*bytes);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not a TorchScript module (save one with torch.jit.save): ", OneLine(e)));
  }
  try {
    FuseBatchNormRelu(module);
    absl::Status checked = CheckModule(module, source, config.task());
    if (!checked.ok()) return checked;
    return std::shared_ptr<MetaModel>(std::make_shared<ScriptedModel>(std::move(module), std::move(bytes)));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", OneLine(e)));
  }
}

absl::Status SaveTorchScriptModel(MetaModel& model, const std::string& path) {
  auto* scripted = dynamic_cast<ScriptedModel*>(&model);
  if (scripted == nullptr) return absl::InvalidArgumentError("not a TorchScript model");
  try {
    scripted->Save(path);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot write ", path, ": ", OneLine(e)));
  }
  return absl::OkStatus();
}

}  // namespace reptile
