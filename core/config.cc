#include "core/config.h"

#include <cmath>

#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/fingerprint.h"
#include "core/status_macros.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/message_differencer.h"

namespace reptile {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;

class CollectErrors : public google::protobuf::io::ErrorCollector {
 public:
  explicit CollectErrors(std::string source) : source_(std::move(source)) {}
  void AddError(int line, int column, const std::string& message) override {
    errors_.push_back(absl::StrFormat("%s:%d:%d: %s", source_, line + 1, column + 1, message));
  }
  void AddWarning(int line, int column, const std::string& message) override {
    AddError(line, column, message);
  }
  std::string Joined() const { return absl::StrJoin(errors_, "; "); }

 private:
  std::string source_;
  std::vector<std::string> errors_;
};

absl::Status FieldError(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("config field ", field, ": ", what));
}

absl::Status RequirePositive(const std::string& field, double value) {
  if (value > 0) return absl::OkStatus();
  return FieldError(field, absl::StrCat("must be > 0, got ", value));
}

absl::Status ValidateNormalization(const TaskConfig& t) {
  if (t.normalize_mean_size() != t.normalize_std_size())
    return FieldError("task.normalize_std", absl::StrCat("has ", t.normalize_std_size(), " values and normalize_mean ",
                                                         t.normalize_mean_size(), ": give one of each per channel"));
  if (t.normalize_mean_size() != 0 && t.normalize_mean_size() != 1 && t.normalize_mean_size() != 3)
    return FieldError("task.normalize_mean", "needs one value per channel (1 or 3)");
  for (float std : t.normalize_std())
    if (!(std > 0) || !std::isfinite(std)) return FieldError("task.normalize_std", absl::StrCat("must be > 0, got ", std));
  for (float mean : t.normalize_mean())
    if (!std::isfinite(mean)) return FieldError("task.normalize_mean", absl::StrCat("must be finite, got ", mean));
  return absl::OkStatus();
}

absl::Status ValidateTask(const TaskConfig& t) {
  switch (t.family()) {
    case SINE:
      RETURN_IF_ERROR(RequirePositive("task.sine_train_points", t.sine_train_points()));
      RETURN_IF_ERROR(RequirePositive("task.sine_query_points", t.sine_query_points()));
      if (t.sine_grid_points() < 0) return FieldError("task.sine_grid_points", "must be >= 0 (0: no grid)");
      if (t.sine_grid_points() == 1) return FieldError("task.sine_grid_points", "a grid needs at least 2 points");
      if (t.sine_grid_points() > 0 &&
          (t.sine_train_points() != t.sine_grid_points() || t.sine_query_points() != t.sine_grid_points()))
        return FieldError("task.sine_grid_points",
                          absl::StrCat("a grid of ", t.sine_grid_points(), " points is every task's training set "
                                       "and query set: set sine_train_points and sine_query_points to it too (got ",
                                       t.sine_train_points(), " and ", t.sine_query_points(), ")"));
      return RequirePositive("task.eval_shots", t.eval_shots());
    case OMNIGLOT:
    case FASHION_MNIST:
    case IMAGE_FOLDER:
      if (t.data_dir().empty()) return FieldError("task.data_dir", "must name the dataset folder");
      RETURN_IF_ERROR(RequirePositive("task.ways", t.ways()));
      if (t.ways() < 2) return FieldError("task.ways", "must be at least 2");
      RETURN_IF_ERROR(RequirePositive("task.train_shots", t.train_shots()));
      RETURN_IF_ERROR(RequirePositive("task.eval_shots", t.eval_shots()));
      RETURN_IF_ERROR(RequirePositive("task.query_shots", t.query_shots()));
      if (int64_t{t.eval_shots()} + t.query_shots() > 20 && t.family() == OMNIGLOT)
        return FieldError("task.eval_shots", "eval_shots + query_shots exceeds Omniglot's 20 drawers");
      if (t.train_shots() > 20 && t.family() == OMNIGLOT)
        return FieldError("task.train_shots", "exceeds Omniglot's 20 drawers");
      if (t.family() == FASHION_MNIST && t.ways() > 5)
        return FieldError("task.ways", "Fashion-MNIST has 5 meta-test classes; ways must be <= 5");
      if (t.family() == FASHION_MNIST && t.image_size() != 28)
        return FieldError("task.image_size", "Fashion-MNIST images are 28x28; set 28");
      if (t.image_channels() != 0 && (t.family() != IMAGE_FOLDER || (t.image_channels() != 1 && t.image_channels() != 3)))
        return FieldError("task.image_channels", "is for IMAGE_FOLDER: 1 (grey), 3 (colour) or 0 (as the images are)");
      RETURN_IF_ERROR(ValidateNormalization(t));
      return RequirePositive("task.image_size", t.image_size());
    default:
      return FieldError("task.family", "must be one of SINE, OMNIGLOT, FASHION_MNIST, IMAGE_FOLDER");
  }
}

absl::Status ValidateModel(const ExperimentConfig& c) {
  const ModelArch arch = c.model().arch();
  if (arch == MODEL_ARCH_UNSPECIFIED)
    return FieldError("model.arch", "must be one of MLP_SINE, CONV_OMNIGLOT, CONV_MINIIMAGENET, TORCHSCRIPT");
  if (arch == TORCHSCRIPT) {
    if (c.model().torchscript_file().empty())
      return FieldError("model.torchscript_file", "TORCHSCRIPT needs the file of a module saved with torch.jit.save");
  } else if (!c.model().torchscript_file().empty() || !c.model().torchscript_sha256().empty()) {
    return FieldError("model.torchscript_file", "applies to model.arch TORCHSCRIPT only");
  } else if ((arch == MLP_SINE) != (c.task().family() == SINE)) {
    return FieldError("model.arch", "MLP_SINE goes with task.family SINE, and only with it");
  }
  if (c.model().hidden_units() < 0) return FieldError("model.hidden_units", "must be >= 0 (0: 64)");
  if (c.model().hidden_units() > 0 && arch != MLP_SINE)
    return FieldError("model.hidden_units", "applies to MLP_SINE only");
  if (arch == CONV_MINIIMAGENET && c.task().image_size() < 16)
    return FieldError("task.image_size", "CONV_MINIIMAGENET needs images of at least 16x16 (84 in the paper)");
  return absl::OkStatus();
}

absl::Status ValidateInner(const InnerLoopConfig& in) {
  if (in.optimizer() != ADAM && in.optimizer() != SGD)
    return FieldError("inner.optimizer", "must be ADAM or SGD");
  RETURN_IF_ERROR(RequirePositive("inner.learning_rate", in.learning_rate()));
  RETURN_IF_ERROR(RequirePositive("inner.batch_size", in.batch_size()));
  RETURN_IF_ERROR(RequirePositive("inner.iterations", in.iterations()));
  if (in.optimizer() == ADAM) {
    if (!(in.adam_beta1() >= 0 && in.adam_beta1() < 1))  // written so that NaN fails
      return FieldError("inner.adam_beta1", "must be in [0, 1)");
    if (!(in.adam_beta2() > 0 && in.adam_beta2() < 1))
      return FieldError("inner.adam_beta2", "must be in (0, 1)");
    RETURN_IF_ERROR(RequirePositive("inner.adam_epsilon", in.adam_epsilon()));
    if (in.state_mode() != CARRY && in.state_mode() != RESET)
      return FieldError("inner.state_mode", "must be CARRY or RESET with ADAM");
  }
  return absl::OkStatus();
}

absl::Status ValidateOuter(const OuterLoopConfig& out) {
  if (out.algorithm() != REPTILE && out.algorithm() != FOMAML)
    return FieldError("outer.algorithm", "must be REPTILE or FOMAML");
  RETURN_IF_ERROR(RequirePositive("outer.rounds", out.rounds()));
  RETURN_IF_ERROR(RequirePositive("outer.meta_batch_size", out.meta_batch_size()));
  RETURN_IF_ERROR(RequirePositive("outer.step_size", out.step_size()));
  if (!(out.step_size_final() >= 0)) return FieldError("outer.step_size_final", "must be >= 0");
  return absl::OkStatus();
}

absl::Status ValidateEval(const EvalConfig& e) {
  if (e.every_rounds() < 0) return FieldError("eval.every_rounds", "must be >= 0 (0: only at the end)");
  if (e.every_rounds() > 0) RETURN_IF_ERROR(RequirePositive("eval.episodes", e.episodes()));
  if (e.final_episodes() < 0) return FieldError("eval.final_episodes", "must be >= 0");
  RETURN_IF_ERROR(RequirePositive("eval.inner_iterations", e.inner_iterations()));
  return RequirePositive("eval.inner_batch_size", e.inner_batch_size());
}

absl::Status ValidateRuntime(const RuntimeConfig& r) {
  RETURN_IF_ERROR(RequirePositive("runtime.workers", r.workers()));
  if (r.checkpoint_every_rounds() < 0) return FieldError("runtime.checkpoint_every_rounds", "must be >= 0");
  if (r.log_every_seconds() < 0) return FieldError("runtime.log_every_seconds", "must be >= 0");
  if (r.metrics_every_rounds() < 0) return FieldError("runtime.metrics_every_rounds", "must be >= 0");
  if (r.max_workers() < 0) return FieldError("runtime.max_workers", "must be >= 0");
  if (r.tasks_per_item() < 0) return FieldError("runtime.tasks_per_item", "must be >= 0 (0: 1)");
  if (r.start_with_learners() < 0) return FieldError("runtime.start_with_learners", "must be >= 0 (0: at once)");
  if (!(r.heartbeat_seconds() >= 0)) return FieldError("runtime.heartbeat_seconds", "must be >= 0 (0: 1 s)");
  if (!(r.worker_timeout_seconds() >= 0))
    return FieldError("runtime.worker_timeout_seconds", "must be >= 0 (0: 6 s)");
  if (r.heartbeat_seconds() > 0 && r.worker_timeout_seconds() > 0 &&
      r.worker_timeout_seconds() < 2 * r.heartbeat_seconds())
    return FieldError("runtime.worker_timeout_seconds", "must be at least twice runtime.heartbeat_seconds");
  if (!(r.task_timeout_seconds() >= 0)) return FieldError("runtime.task_timeout_seconds", "must be >= 0 (0: 600 s)");
  if (!(r.mpi_connect_timeout_seconds() >= 0))
    return FieldError("runtime.mpi_connect_timeout_seconds", "must be >= 0 (0: 60 s)");
  if (r.max_task_attempts() < 0) return FieldError("runtime.max_task_attempts", "must be >= 0 (0: 2)");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ExperimentConfig> ParseConfig(const std::string& text, const std::string& source) {
  ExperimentConfig config;
  CollectErrors errors(source);
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &config)) return absl::InvalidArgumentError(errors.Joined());
  return config;
}

absl::StatusOr<ExperimentConfig> LoadConfig(const std::string& path,
                                            const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  std::stringstream text;
  text << in.rdbuf();
  ASSIGN_OR_RETURN(ExperimentConfig config, ParseConfig(text.str(), path));
  for (const std::string& assignment : overrides) RETURN_IF_ERROR(ApplyOverride(assignment, &config));
  RETURN_IF_ERROR(ValidateConfig(config));
  return config;
}

absl::Status ApplyOverride(const std::string& assignment, ExperimentConfig* config) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    return absl::InvalidArgumentError(
        absl::StrCat("override '", assignment, "' is not of the form field.path=value"));
  const std::string path = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  const std::vector<std::string> names = absl::StrSplit(path, '.');
  // Walk the path to check each name and find the leaf's type.
  const Descriptor* message = ExperimentConfig::descriptor();
  const FieldDescriptor* field = nullptr;
  for (size_t i = 0; i < names.size(); ++i) {
    if (message == nullptr)
      return absl::InvalidArgumentError(absl::StrCat("override '", path, "': '", names[i - 1], "' is not a message"));
    field = message->FindFieldByName(names[i]);
    if (field == nullptr)
      return absl::InvalidArgumentError(absl::StrCat("override '", path, "': unknown config field '",
                                                     names[i], "' in ", message->full_name()));
    message = field->message_type();
  }
  if (message != nullptr)
    return absl::InvalidArgumentError(absl::StrCat("override '", path, "' names a message, not a value"));
  const bool quoted = field->type() == FieldDescriptor::TYPE_STRING;
  std::string text = absl::StrCat(names.back(), ": ", quoted ? absl::StrCat("\"", absl::CEscape(value), "\"") : value);
  for (size_t i = names.size() - 1; i-- > 0;) text = absl::StrCat(names[i], " { ", text, " }");
  ExperimentConfig patch;
  CollectErrors errors(absl::StrCat("override '", assignment, "'"));
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &patch)) return absl::InvalidArgumentError(errors.Joined());
  // Clear the leaf first so that setting a value to its default (0) works.
  google::protobuf::Message* target = config;
  for (size_t i = 0; i + 1 < names.size(); ++i) {
    target = target->GetReflection()->MutableMessage(target, target->GetDescriptor()->FindFieldByName(names[i]));
  }
  target->GetReflection()->ClearField(target, field);
  config->MergeFrom(patch);
  return absl::OkStatus();
}

absl::Status ValidateConfig(const ExperimentConfig& config) {
  RETURN_IF_ERROR(ValidateTask(config.task()));
  RETURN_IF_ERROR(ValidateModel(config));
  RETURN_IF_ERROR(ValidateInner(config.inner()));
  RETURN_IF_ERROR(ValidateOuter(config.outer()));
  RETURN_IF_ERROR(ValidateEval(config.eval()));
  RETURN_IF_ERROR(ValidateRuntime(config.runtime()));
  if (config.runtime().tasks_per_item() > config.outer().meta_batch_size())
    return FieldError("runtime.tasks_per_item", absl::StrCat(config.runtime().tasks_per_item(),
                                                             " is more than outer.meta_batch_size, ",
                                                             config.outer().meta_batch_size()));
  return absl::OkStatus();
}

int TrainingItemsPerRound(const ExperimentConfig& config) {
  const int per_item = std::max(1, config.runtime().tasks_per_item());
  return (config.outer().meta_batch_size() + per_item - 1) / per_item;
}

std::string ConfigSummary(const ExperimentConfig& c) {
  std::string task = TaskFamily_Name(c.task().family());
  if (c.task().family() != SINE)
    absl::StrAppend(&task, " ", c.task().ways(), "-way ", c.task().eval_shots(), "-shot");
  return absl::StrFormat(
      "%s: %s, %s, %s %s lr=%g batch=%d k=%d state=%s, %s %d rounds x %d tasks, eps %g->%g",
      c.name(), task, ModelArch_Name(c.model().arch()), "inner", InnerOptimizer_Name(c.inner().optimizer()),
      c.inner().learning_rate(), c.inner().batch_size(), c.inner().iterations(),
      OptimizerStateMode_Name(c.inner().state_mode()), OuterAlgorithm_Name(c.outer().algorithm()),
      c.outer().rounds(), c.outer().meta_batch_size(), c.outer().step_size(), c.outer().step_size_final());
}

std::string ConfigToText(const ExperimentConfig& config) {
  std::string text;
  google::protobuf::TextFormat::PrintToString(config, &text);
  return text;
}

std::string ConfigFingerprint(const ExperimentConfig& config) {
  ExperimentConfig essential = config;
  essential.clear_name();
  essential.clear_runtime();
  essential.mutable_task()->clear_data_dir();
  essential.mutable_model()->clear_torchscript_file();  // the model is its digest
  std::string bytes;
  google::protobuf::io::StringOutputStream stream(&bytes);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  essential.SerializeToCodedStream(&coded);
  coded.Trim();
  return ToHex(Sha256(bytes.data(), bytes.size()));
}

std::string ConfigDifferences(const ExperimentConfig& a, const ExperimentConfig& b) {
  google::protobuf::util::MessageDifferencer differencer;
  std::string report;
  differencer.ReportDifferencesToString(&report);
  differencer.Compare(a, b);
  return report;
}

}  // namespace reptile
