#include "transport/wire/result_codec.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "transport/wire/tensor_stream.h"

namespace reptile {
namespace {

absl::Status Invalid(absl::string_view what) { return absl::InvalidArgumentError(what); }

// A training result's tensors as the exact sums of `tasks` tasks, in the
// order delta, m, v (each carried one present), checked and left compact.
absl::StatusOr<CompactTensorSums> CheckSums(std::vector<std::string>& payload, const ResultShape& shape, int tasks) {
  size_t index = 0;
  auto check = [&](const char* what) -> absl::StatusOr<CompactSum> {
    absl::StatusOr<CompactSum> checked =
        CompactSum::Check(std::move(payload[index++]), shape.numel, tasks, shape.meta_batch);
    if (!checked.ok()) return Invalid(absl::StrCat(what, ": ", checked.status().message()));
    return checked;
  };
  ASSIGN_OR_RETURN(CompactSum delta, check("delta"));
  CompactTensorSums sums{std::move(delta), std::nullopt, std::nullopt};
  if (shape.moments.first) {
    ASSIGN_OR_RETURN(sums.adam_m, check("adam_m"));
  }
  if (shape.moments.second) {
    ASSIGN_OR_RETURN(sums.adam_v, check("adam_v"));
    if (sums.adam_v->has_negative()) return Invalid("adam_v has negative entries");
  }
  return sums;
}

// A result's loss and counts, in the header or a node item.
template <typename Scalars>
absl::Status CheckScalars(const Scalars& scalars) {
  if (!std::isfinite(scalars.loss())) return Invalid(absl::StrCat("loss is ", scalars.loss()));
  if (scalars.predictions() < 0 || scalars.correct() < 0 || scalars.correct() > scalars.predictions() ||
      scalars.correct_inductive() < 0 || scalars.correct_inductive() > scalars.predictions())
    return Invalid("prediction counts are inconsistent");
  return absl::OkStatus();
}

}  // namespace

EncodedResult EncodeResult(const absl::StatusOr<TaskResult>& result, DeltaDtype dtype, int64_t numel) {
  EncodedResult encoded;
  ResultHeader& header = encoded.header;
  if (!result.ok()) {
    header.set_error(result.status().ToString());
    return encoded;
  }
  header.set_delta_dtype(dtype);
  header.set_num_parameters(numel);
  header.set_loss(result->loss);
  header.set_correct(result->correct);
  header.set_correct_inductive(result->correct_inductive);
  header.set_predictions(result->predictions);
  header.set_compute_seconds(result->compute_seconds);
  header.set_tasks(result->sums ? result->sums->tasks() : 1);
  // At most 3 strings: reserve() keeps the views into them valid.
  encoded.storage.reserve(3);
  auto add = [&](std::string bytes) { encoded.tensors.push_back(encoded.storage.emplace_back(std::move(bytes))); };
  auto add_sum = [&](const ExactSum& sum) {
    add(sum.EncodeCompact());
    header.add_exact_bytes(encoded.tensors.back().size());
  };
  auto add_tensor = [&](const torch::Tensor& tensor, DeltaDtype as) {
    encoded.tensors.push_back(WireBytes(tensor, as, &encoded.storage.emplace_back()));
  };
  if (result->sums) {
    header.set_has_delta(true);
    add_sum(result->sums->delta);
    if (result->sums->adam_m) {
      header.set_has_first_moment(true);
      add_sum(*result->sums->adam_m);
    }
    if (result->sums->adam_v) {
      header.set_has_moments(true);
      add_sum(*result->sums->adam_v);
    }
  } else if (result->delta.defined()) {
    header.set_has_delta(true);
    add_tensor(result->delta, dtype);
  }
  if (result->adam_m.defined()) {
    header.set_has_first_moment(true);
    add_tensor(result->adam_m, DELTA_FP32);
  }
  if (result->adam_v.defined()) {
    header.set_has_moments(true);
    add_tensor(result->adam_v, DELTA_FP32);
  }
  return encoded;
}

absl::StatusOr<std::vector<size_t>> ResultPayloadSizes(const ResultHeader& header, const WorkItem& work,
                                                       const ResultShape& shape) {
  const bool train = work.kind == WorkKind::kTrain;
  const int tasks = static_cast<int>(work.tasks.size());
  const bool exact = tasks > 1;  // the tensors are exact sums
  if (header.has_delta() != train)
    return Invalid(train ? "a training task must return a delta" : "an evaluation episode returns no delta");
  if (train && header.num_parameters() != shape.numel)
    return Invalid(absl::StrCat("delta has ", header.num_parameters(), " parameters; the model has ", shape.numel));
  if (header.tasks() != static_cast<uint32_t>(tasks))
    return Invalid(absl::StrCat("result covers ", header.tasks(), " tasks; the lease", header.node_items_size() > 0 ? "s have " : " has ", tasks));
  const size_t element = DeltaDtypeBytes(header.delta_dtype());
  if (train && !exact && element == 0) return Invalid(absl::StrCat("unknown delta dtype ", header.delta_dtype()));
  // What must follow is the coordinator's decision, from its config; the
  // header must only agree with it.
  const bool second = train && shape.moments.second, first = train && shape.moments.first;
  if (header.has_moments() != second)
    return Invalid(second ? "Adam's moments must come with the delta (CARRY)" : "unexpected Adam moments");
  if (header.has_first_moment() != first)
    return Invalid(first ? "Adam's m must come with the delta (CARRY, adam_beta1 != 0)"
                         : "unexpected Adam m (adam_beta1 is 0: m is not carried)");
  RETURN_IF_ERROR(CheckScalars(header));
  for (const NodeItem& item : header.node_items()) {
    absl::Status scalars = CheckScalars(item);
    if (!scalars.ok()) return Invalid(absl::StrCat("lease ", item.lease_id(), ": ", scalars.message()));
  }
  // The coordinator's own numel; still, no size below may wrap.
  if (shape.numel < 0 || static_cast<uint64_t>(shape.numel) > (uint64_t{1} << 40))
    return Invalid(absl::StrCat("a model of ", shape.numel, " parameters is beyond any result"));
  const size_t numel = static_cast<size_t>(shape.numel);
  std::vector<size_t> sizes;
  if (train && exact) {  // compact exact sums, each of the size the header gives, within the model's bound
    const int count = 1 + (first ? 1 : 0) + (second ? 1 : 0);
    if (header.exact_bytes_size() != count)
      return Invalid(absl::StrCat("the header sizes ", header.exact_bytes_size(), " exact sums; ", count, " follow"));
    for (uint64_t bytes : header.exact_bytes()) {
      if (bytes > ExactSum::MaxCompactBytes(shape.numel))
        return Invalid(absl::StrCat("an exact sum of ", bytes, " bytes; ", shape.numel, " values take at most ",
                                    ExactSum::MaxCompactBytes(shape.numel)));
      sizes.push_back(static_cast<size_t>(bytes));
    }
    return sizes;
  }
  if (header.exact_bytes_size() != 0) return Invalid("exact-sum sizes in a result that holds no exact sums");
  if (train) sizes.push_back(numel * element);
  if (first) sizes.push_back(numel * 4);
  if (second) sizes.push_back(numel * 4);
  return sizes;
}

absl::StatusOr<TaskResult> DecodeResult(const ResultHeader& header, const WorkItem& work, const ResultShape& shape,
                                        std::vector<std::string> payload) {
  const bool train = work.kind == WorkKind::kTrain;
  const int tasks = static_cast<int>(work.tasks.size());
  const bool first = train && shape.moments.first, second = train && shape.moments.second;
  if (payload.size() != (train ? 1u : 0u) + (first ? 1u : 0u) + (second ? 1u : 0u))
    return Invalid(absl::StrCat("a result of this item has ", (train ? 1 : 0) + first + second, " tensors, not ",
                                payload.size()));
  const size_t m_index = 1, v_index = first ? 2 : 1;
  TaskResult result;
  if (train && tasks > 1) {
    ASSIGN_OR_RETURN(result.compact_sums, CheckSums(payload, shape, tasks));
  } else if (train) {
    absl::StatusOr<torch::Tensor> delta = DecodeTensor(std::move(payload[0]), header.delta_dtype(), shape.numel);
    if (!delta.ok()) return Invalid(absl::StrCat("delta: ", delta.status().message()));
    result.delta = *std::move(delta);
    if (first) {
      absl::StatusOr<torch::Tensor> m = DecodeTensor(std::move(payload[m_index]), DELTA_FP32, shape.numel);
      if (!m.ok()) return Invalid(absl::StrCat("adam_m: ", m.status().message()));
      result.adam_m = *std::move(m);
    }
    if (second) {
      absl::StatusOr<torch::Tensor> v = DecodeTensor(std::move(payload[v_index]), DELTA_FP32, shape.numel);
      if (!v.ok()) return Invalid(absl::StrCat("adam_v: ", v.status().message()));
      if (v->min().item<float>() < 0) return Invalid("adam_v has negative entries");  // one pass, no mask
      result.adam_v = *std::move(v);
    }
  }
  result.loss = header.loss();
  result.correct = header.correct();
  result.correct_inductive = header.correct_inductive();
  result.predictions = header.predictions();
  result.compute_seconds = header.compute_seconds();
  return result;
}

}  // namespace reptile
