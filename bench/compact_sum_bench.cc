// What the compact exact-sum wire form (ExactSum::EncodeCompact) costs in
// bytes on real Omniglot results: configs/demo.textproto (5-way, Adam's v
// carried) trained for some rounds on threads, then 64 tasks of the next
// round run by the learner. For 1, 2, 8 and 64 results summed, it prints
// the bytes of the compact delta and v sums against one fp32 result (delta
// and v, 4 bytes a value each) and against the 16-byte form, the encode
// and decode times, and the coordinator's ingest of both sums into a
// round's sums: decoded into sums of their own and merged, or checked
// (CompactSum) and added straight from their bytes.
//
//   build/bench/compact_sum_bench [rounds trained first]   (default 300)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "coordinator/round_engine.h"
#include "coordinator/task_sampler.h"
#include "core/config.h"
#include "core/exact_sum.h"
#include "core/process_setup.h"
#include "transport/local/local_transport.h"
#include "worker/learner.h"

namespace reptile {
namespace {

using Clock = std::chrono::steady_clock;

template <typename T>
T OrDie(absl::StatusOr<T> value) {
  if (!value.ok()) {
    std::fprintf(stderr, "%s\n", value.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(value);
}

double Millis(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

int Main(int rounds) {
  ConfigureProcessForTraining();
  ExperimentConfig config = OrDie(LoadConfig(std::string(REPTILE_SOURCE_DIR) + "/configs/demo.textproto",
                                             {"eval.every_rounds=0", "eval.final_episodes=0", "outer.meta_batch_size=64"}));
  config.mutable_task()->set_data_dir(std::string(REPTILE_SOURCE_DIR) + "/" + config.task().data_dir());
  const std::shared_ptr<const TaskSource> tasks = OrDie(TaskSource::Create(config.task()));
  ExperimentConfig warmup = config;
  warmup.mutable_outer()->set_meta_batch_size(5);
  auto transport = OrDie(LocalTransport::Create(warmup, tasks, 2));
  auto engine = OrDie(RoundEngine::Create(warmup, *tasks, transport.get(), {}));
  if (absl::Status trained = engine->Run(rounds); !trained.ok()) {
    std::fprintf(stderr, "%s\n", trained.ToString().c_str());
    return 1;
  }
  const MetaState& state = engine->meta_state();
  const int64_t numel = state.parameters.numel();
  const TaskSampler sampler(config, tasks->num_classes(false), tasks->num_classes(true),
                            tasks->num_validation_classes());
  std::unique_ptr<Learner> learner = OrDie(Learner::Create(config, tasks));
  std::vector<TaskResult> results;
  for (const WorkItem& item : sampler.TrainingItems(rounds)) results.push_back(OrDie(learner->Run(state, item)));

  const double fp32_result = 2.0 * 4 * static_cast<double>(numel);  // delta and v
  std::printf("compact exact sums of Omniglot results (%lld parameters, delta and Adam's v), after %d rounds\n",
              static_cast<long long>(numel), rounds);
  std::printf("%8s %14s %14s %12s %12s %12s %12s %14s %14s\n", "results", "compact bytes", "vs one fp32",
              "vs 16-byte", "bits/value", "encode ms", "decode ms", "decode+merge", "check+add");
  for (int count : {1, 2, 8, 64}) {
    ExactSum delta(numel, 64), v(numel, 64);
    for (int r = 0; r < count; ++r) {
      const TaskResult& result = results[static_cast<size_t>(r)];
      if (!delta.Add(result.delta.data_ptr<float>()).ok() || !v.Add(result.adam_v.data_ptr<float>()).ok()) return 1;
    }
    const auto encode_start = Clock::now();
    const std::string delta_bytes = delta.EncodeCompact(), v_bytes = v.EncodeCompact();
    const double encode_ms = Millis(encode_start);
    const auto decode_start = Clock::now();
    const ExactSum delta_back = OrDie(ExactSum::DecodeCompact(delta_bytes, numel, count, 64));
    const ExactSum v_back = OrDie(ExactSum::DecodeCompact(v_bytes, numel, count, 64));
    const double decode_ms = Millis(decode_start);
    if (delta_back.Encode() != delta.Encode() || v_back.Encode() != v.Encode()) {
      std::fprintf(stderr, "a compact sum did not decode to its own bits\n");
      return 1;
    }
    // The coordinator's ingest of the two sums into a round's sums, medians
    // of 5: decoded into sums of their own and merged (as before), or
    // checked and added straight from their bytes (as now).
    std::vector<double> decode_merge, check_add;
    for (int repetition = 0; repetition < 5; ++repetition) {
      ExactSum round_delta(numel, 64), round_v(numel, 64);
      auto start = Clock::now();
      if (!round_delta.Merge(OrDie(ExactSum::DecodeCompact(delta_bytes, numel, count, 64))).ok() ||
          !round_v.Merge(OrDie(ExactSum::DecodeCompact(v_bytes, numel, count, 64))).ok())
        return 1;
      decode_merge.push_back(Millis(start));
      ExactSum direct_delta(numel, 64), direct_v(numel, 64);
      start = Clock::now();
      if (!direct_delta.Merge(OrDie(CompactSum::Check(delta_bytes, numel, count, 64))).ok() ||
          !direct_v.Merge(OrDie(CompactSum::Check(v_bytes, numel, count, 64))).ok())
        return 1;
      check_add.push_back(Millis(start));
      if (direct_delta.Encode() != round_delta.Encode() || direct_v.Encode() != round_v.Encode()) {
        std::fprintf(stderr, "the two ingest paths disagree\n");
        return 1;
      }
    }
    std::sort(decode_merge.begin(), decode_merge.end());
    std::sort(check_add.begin(), check_add.end());
    const double compact = static_cast<double>(delta_bytes.size() + v_bytes.size());
    std::printf("%8d %14.0f %13.2fx %11.3fx %12.1f %12.2f %12.2f %14.2f %14.2f\n", count, compact,
                compact / fp32_result, compact / (2.0 * ExactSum::kElementBytes * numel), 8 * compact / (2.0 * numel),
                encode_ms, decode_ms, decode_merge[2], check_add[2]);
  }
  return 0;
}

}  // namespace
}  // namespace reptile

int main(int argc, char** argv) { return reptile::Main(argc > 1 ? std::atoi(argv[1]) : 300); }
