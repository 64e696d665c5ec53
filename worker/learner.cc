#include "worker/learner.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <torch/nn/functional/loss.h>

#include "absl/strings/str_cat.h"
#include "core/rng.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

torch::Tensor RoundToDeltaDtype(torch::Tensor delta, DeltaDtype dtype) {
  switch (dtype) {
    case DELTA_BF16:
      return delta.to(torch::kBFloat16).to(torch::kFloat32);
    case DELTA_FP16:
      return delta.to(torch::kHalf).to(torch::kFloat32);
    default:
      return delta;
  }
}

// Stream label for the order in which a task's support examples are visited.
constexpr uint64_t kMinibatchOrderStream = 0x6d696e69;

bool IsClassification(const ExperimentConfig& config) { return config.task().family() != SINE; }

absl::Status CheckState(const MetaState& state, int64_t numel, CarriedMoments carried) {
  auto check = [numel](const torch::Tensor& t, const char* what) -> absl::Status {
    if (!t.defined() || t.scalar_type() != torch::kFloat32 || t.dim() != 1 || t.numel() != numel)
      return absl::InvalidArgumentError(
          absl::StrCat("meta-state ", what, " must be a flat fp32 vector of ", numel, " values"));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check(state.parameters, "parameters"));
  if (carried.first) RETURN_IF_ERROR(check(state.adam_m, "adam_m"));
  if (carried.second) {
    RETURN_IF_ERROR(check(state.adam_v, "adam_v"));
    if (state.adam_step < 0) return absl::InvalidArgumentError("meta-state adam_step is negative");
  }
  return absl::OkStatus();
}

// A spec must be what TaskSampler draws from this config for the item's
// kind: a training task from the meta-training split, or an evaluation
// episode from the meta-test split, with the config's ways and shots.
absl::Status CheckSpecFitsConfig(WorkKind kind, const TaskSpec& spec, const TaskConfig& task) {
  const bool evaluate = kind == WorkKind::kEvaluate;
  const bool sine = task.family() == SINE;
  const char* what = evaluate ? "an evaluation episode" : "a training task";
  auto error = [&](const char* field, int64_t value, const std::string& expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("task spec field ", field, ": ", value, ", but ", what, " has ", expected));
  };
  if (spec.family() != task.family())
    return absl::InvalidArgumentError(absl::StrCat("task spec field family: ", TaskFamily_Name(spec.family()),
                                                   ", but task.family is ", TaskFamily_Name(task.family())));
  if (spec.meta_test() != evaluate)
    return error("meta_test", spec.meta_test(), evaluate ? "meta_test 1 (the held-out classes)" : "meta_test 0");
  const int ways = sine ? 0 : task.ways();
  if (spec.class_ids_size() != ways)
    return error("class_ids (count)", spec.class_ids_size(), absl::StrCat(ways, " (task.ways)"));
  const int support = evaluate ? task.eval_shots() : sine ? task.sine_train_points() : task.train_shots();
  if (spec.support_shots() != support)
    return error("support_shots", spec.support_shots(),
                 absl::StrCat(support, evaluate ? " (task.eval_shots)"
                                                : sine ? " (task.sine_train_points)" : " (task.train_shots)"));
  const int query = !evaluate ? 0 : sine ? task.sine_query_points() : task.query_shots();
  if (spec.query_shots() != query)
    return error("query_shots", spec.query_shots(),
                 absl::StrCat(query, !evaluate ? "" : sine ? " (task.sine_query_points)" : " (task.query_shots)"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Learner>> Learner::Create(const ExperimentConfig& config,
                                                         std::shared_ptr<const TaskSource> tasks) {
  ASSIGN_OR_RETURN(std::shared_ptr<MetaModel> model, MakeModel(config));
  return std::unique_ptr<Learner>(new Learner(config, std::move(tasks), std::move(model)));
}

Learner::Learner(const ExperimentConfig& config, std::shared_ptr<const TaskSource> tasks,
                 std::shared_ptr<MetaModel> model)
    : config_(config), tasks_(std::move(tasks)), model_(std::move(model)) {
  model_->train();  // batch norm uses batch statistics, always
  flat_ = std::make_unique<FlatParameters>(*model_);
  adam_m_ = torch::zeros_like(flat_->values());
  adam_v_ = torch::zeros_like(flat_->values());
}

absl::StatusOr<TaskResult> Learner::Run(const MetaState& state, const WorkItem& item) {
  RETURN_IF_ERROR(CheckState(state, flat_->numel(), CarriedMomentsOf(config_)));
  const int meta_batch = config_.outer().meta_batch_size();
  const int max_tasks = item.kind == WorkKind::kTrain ? meta_batch : 1;
  if (item.tasks.empty() || static_cast<int>(item.tasks.size()) > max_tasks)
    return absl::InvalidArgumentError(absl::StrCat("work item of ", item.tasks.size(), " tasks; ",
                                                   item.kind == WorkKind::kTrain ? "training" : "evaluation",
                                                   " items hold 1 to ", max_tasks));
  for (const TaskSpec& spec : item.tasks) RETURN_IF_ERROR(CheckSpecFitsConfig(item.kind, spec, config_.task()));
  if (tasks_ == nullptr) return absl::FailedPreconditionError("learner has no task source");
  try {
    const auto start = std::chrono::steady_clock::now();
    TaskResult result;
    if (item.tasks.size() > 1) result.sums.emplace(flat_->numel(), meta_batch, CarriedMomentsOf(config_));
    for (const TaskSpec& spec : item.tasks) {
      ASSIGN_OR_RETURN(TaskExamples task, tasks_->Materialize(spec));
      TaskResult one = item.kind == WorkKind::kTrain ? Train(state, spec, task) : Evaluate(state, spec, task);
      if (!result.sums) {
        result = std::move(one);
        continue;
      }
      RETURN_IF_ERROR(result.sums->Add(one.delta, one.adam_m, one.adam_v));
      result.loss += one.loss / static_cast<double>(item.tasks.size());
      result.correct += one.correct;
      result.correct_inductive += one.correct_inductive;
      result.predictions += one.predictions;
    }
    result.compute_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return result;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("inner loop failed: ", e.what_without_backtrace()));
  }
}

torch::Tensor Learner::Loss(const torch::Tensor& output, const torch::Tensor& target) const {
  return IsClassification(config_) ? torch::nn::functional::cross_entropy(output, target)
                                   : torch::mse_loss(output, target);
}

// One optimizer step over the flat vectors in a single pass, which also
// clears the gradient for the next backward(): memory traffic, not
// arithmetic, bounds the update of a small model, and separate tensor
// operations would each read and write every vector again.
void Learner::OptimizerStep(int64_t from) {
  const InnerLoopConfig& in = config_.inner();
  const int64_t n = flat_->numel();
  from = std::clamp<int64_t>(from, 0, n);
  std::fill_n(flat_->grads().data_ptr<float>(), from, 0.0f);  // frozen values: only cleared
  float* theta = flat_->values().data_ptr<float>() + from;
  float* grad = flat_->grads().data_ptr<float>() + from;
  if (in.optimizer() == SGD) {
    const float rate = in.learning_rate();
    for (int64_t i = 0; i < n - from; ++i) {
      theta[i] -= rate * grad[i];
      grad[i] = 0;
    }
    return;
  }
  ++adam_step_;
  const float beta1 = in.adam_beta1(), beta2 = in.adam_beta2(), epsilon = in.adam_epsilon();
  const double step = static_cast<double>(adam_step_);
  const float bias2_root = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, step)));
  const float rate = static_cast<float>(in.learning_rate() / (1.0 - std::pow(beta1, step)));
  float* m = adam_m_.data_ptr<float>() + from;
  float* v = adam_v_.data_ptr<float>() + from;
  for (int64_t i = 0; i < n - from; ++i) {
    const float g = grad[i];
    m[i] = beta1 * m[i] + (1.0f - beta1) * g;
    v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
    theta[i] -= rate * m[i] / (std::sqrt(v[i]) / bias2_root + epsilon);
    grad[i] = 0;
  }
}

Learner::InnerRun Learner::Adapt(const MetaState& state, const TaskExamples& task, uint64_t order_seed,
                                 int iterations, int batch_size, torch::Tensor* before_last,
                                 const AdaptHooks& hooks) {
  {
    torch::NoGradGuard no_grad;
    flat_->values().copy_(state.parameters);
    flat_->grads().zero_();  // OptimizerStep() clears them after every step
    // Without a carried m (adam_beta1 = 0) m starts at zero, which the first
    // step overwrites exactly as it would a carried m: m = 0 * m + 1 * g = g
    // for any finite m (but for the sign of a zero gradient, which cannot
    // change theta unless theta is -0).
    const bool carry = config_.inner().state_mode() == CARRY && state.adam_v.defined();
    if (carry) {
      if (state.adam_m.defined()) {
        adam_m_.copy_(state.adam_m);
      } else {
        adam_m_.zero_();
      }
      adam_v_.copy_(state.adam_v);
      adam_step_ = state.adam_step;
    } else {
      adam_m_.zero_();
      adam_v_.zero_();
      adam_step_ = 0;
    }
  }
  // A batch larger than the support set wraps into the next shuffled pass
  // and so repeats examples, as the reference code's minibatches do.
  const int64_t n = task.support_x.size(0);
  Rng rng(Rng::Derive(order_seed, kMinibatchOrderStream));
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  int64_t cursor = n;  // forces a shuffle before the first batch
  InnerRun run;
  torch::Tensor batch_index = torch::empty({batch_size}, torch::kInt64);
  if (hooks.after_step) hooks.after_step(0);
  for (int it = 0; it < iterations; ++it) {
    int64_t* idx = batch_index.data_ptr<int64_t>();
    for (int b = 0; b < batch_size; ++b) {
      if (cursor == n) {
        rng.Shuffle(order);
        cursor = 0;
      }
      idx[b] = order[cursor++];
    }
    torch::Tensor x = task.support_x.index_select(0, batch_index);
    torch::Tensor y = task.support_y.index_select(0, batch_index);
    torch::Tensor output = model_->forward(x);
    torch::Tensor loss = Loss(output, y);
    loss.backward();
    if (before_last != nullptr && it == iterations - 1) *before_last = flat_->values().clone();
    OptimizerStep(hooks.trainable_from);
    run.mean_loss += loss.item<double>() / iterations;
    if (IsClassification(config_)) {
      run.correct += output.argmax(1).eq(y).sum().item<int64_t>();
      run.predictions += batch_size;
    }
    if (hooks.after_step) hooks.after_step(it + 1);
  }
  return run;
}

TaskResult Learner::Train(const MetaState& state, const TaskSpec& spec, const TaskExamples& task) {
  const InnerLoopConfig& in = config_.inner();
  torch::Tensor before_last;
  const bool fomaml = config_.outer().algorithm() == FOMAML;
  InnerRun run = Adapt(state, task, spec.seed(), in.iterations(), in.batch_size(), fomaml ? &before_last : nullptr,
                       AdaptHooks());
  TaskResult result;
  result.delta = RoundToDeltaDtype(flat_->values() - (fomaml ? before_last : state.parameters),
                                   config_.outer().delta_dtype());
  const CarriedMoments carried = CarriedMomentsOf(config_);
  if (carried.first) result.adam_m = adam_m_.clone();
  if (carried.second) result.adam_v = adam_v_.clone();
  result.loss = run.mean_loss;
  result.correct = run.correct;
  result.predictions = run.predictions;
  return result;
}

TaskResult Learner::Evaluate(const MetaState& state, const TaskSpec& spec, const TaskExamples& task) {
  const EvalConfig& ev = config_.eval();
  Adapt(state, task, spec.seed(), ev.inner_iterations(), ev.inner_batch_size(), nullptr, AdaptHooks());
  torch::NoGradGuard no_grad;
  TaskResult result;
  torch::Tensor output = model_->forward(task.query_x);
  result.loss = Loss(output, task.query_y).item<double>();
  if (!IsClassification(config_)) return result;
  result.correct = output.argmax(1).eq(task.query_y).sum().item<int64_t>();
  const int64_t queries = task.query_x.size(0);
  for (int64_t q = 0; q < queries; ++q) {
    torch::Tensor batch = torch::cat({task.support_x, task.query_x.narrow(0, q, 1)});
    const int64_t predicted = model_->forward(batch)[-1].argmax().item<int64_t>();
    result.correct_inductive += predicted == task.query_y[q].item<int64_t>();
  }
  result.predictions = queries;
  return result;
}

absl::StatusOr<AdaptationTrace> Learner::TraceAdaptation(const MetaState& state, const TaskSpec& spec,
                                                         AdaptedLayers layers) {
  RETURN_IF_ERROR(CheckState(state, flat_->numel(), CarriedMomentsOf(config_)));
  RETURN_IF_ERROR(CheckSpecFitsConfig(WorkKind::kEvaluate, spec, config_.task()));
  if (tasks_ == nullptr) return absl::FailedPreconditionError("learner has no task source");
  try {
    ASSIGN_OR_RETURN(TaskExamples task, tasks_->Materialize(spec));
    const std::vector<LayerSpan> spans = LayersOf(flat_->layout());
    AdaptHooks hooks;
    if (layers == AdaptedLayers::kLastOnly && !spans.empty()) hooks.trainable_from = spans.back().begin;
    AdaptationTrace trace;
    hooks.after_step = [&](int) {
      torch::NoGradGuard no_grad;
      torch::Tensor output = model_->forward(task.query_x);
      trace.loss.push_back(Loss(output, task.query_y).item<double>());
      if (IsClassification(config_))
        trace.accuracy.push_back(output.argmax(1).eq(task.query_y).to(torch::kFloat64).mean().item<double>());
    };
    const EvalConfig& ev = config_.eval();
    Adapt(state, task, spec.seed(), ev.inner_iterations(), ev.inner_batch_size(), nullptr, hooks);
    torch::NoGradGuard no_grad;
    for (const LayerSpan& span : spans) {
      torch::Tensor theta = state.parameters.slice(0, span.begin, span.end);
      torch::Tensor adapted = flat_->values().slice(0, span.begin, span.end);
      const double norm = theta.norm().item<double>();
      const double change = (adapted - theta).norm().item<double>();
      trace.relative_change.push_back(norm > 0 ? change / norm : (change > 0 ? INFINITY : 0.0));
    }
    return trace;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("adaptation trace failed: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<std::vector<int64_t>> Learner::AdaptAndPredict(const MetaState& state, const TaskExamples& task) {
  RETURN_IF_ERROR(CheckState(state, flat_->numel(), CarriedMomentsOf(config_)));
  try {
    const EvalConfig& ev = config_.eval();
    Adapt(state, task, config_.eval().seed(), ev.inner_iterations(), ev.inner_batch_size(), nullptr, AdaptHooks());
    torch::NoGradGuard no_grad;
    std::vector<int64_t> labels;
    for (int64_t q = 0; q < task.query_x.size(0); ++q) {
      torch::Tensor batch = torch::cat({task.support_x, task.query_x.narrow(0, q, 1)});
      labels.push_back(model_->forward(batch)[-1].argmax().item<int64_t>());
    }
    return labels;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("adaptation failed: ", e.what_without_backtrace()));
  }
}

}  // namespace reptile
