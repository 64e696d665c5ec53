// What the compact exact-sum wire form (ExactSum::EncodeCompact) costs in
// bytes on real Omniglot results: configs/demo.textproto (5-way, Adam's v
// carried) trained for some rounds on threads, then 64 tasks of the next
// round run by the learner. For 1, 2, 8 and 64 results summed, it prints
// the bytes of the compact delta and v sums against one fp32 result (delta
// and v, 4 bytes a value each) and against the 16-byte form, the encode
// and decode times, and the coordinator's ingest of both sums into a
// round's sums: decoded into sums of their own and merged, or checked
// (CompactSum) and added straight from their bytes. Then the ingest of a
// whole round into the Aggregator on 1, 2, ... threads: how it grows with
// the coordinator's cores.
//
//   build/bench/compact_sum_bench [rounds trained first]   (default 300)
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/round_engine.h"
#include "coordinator/task_sampler.h"
#include "core/aggregator.h"
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

double ProcessCpuSeconds() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// A round of 64 tasks added into the Aggregator from 1, 2, ... threads at
// once, as the coordinator's RPC threads add the uploads they received: as
// 8 node sums of 8 results each (compact, checked on the adding thread), and
// as 64 fp32 results of single learners. Prints wall and CPU milliseconds
// per MB of results (fp32, delta and v: 64 x `fp32_result` bytes a round),
// medians of 31 rounds, and the speed against one thread.
int IngestOnThreads(const std::vector<TaskResult>& results, int64_t numel, double fp32_result) {
  const int tasks = 64, nodes = 8;
  const CarriedMoments carried{false, true};
  std::vector<std::pair<std::string, std::string>> node_sums;  // compact delta and v
  for (int node = 0; node < nodes; ++node) {
    ExactSum delta(numel, tasks), v(numel, tasks);
    for (int r = node * 8; r < node * 8 + 8; ++r)
      if (!delta.Add(results[r].delta.data_ptr<float>()).ok() || !v.Add(results[r].adam_v.data_ptr<float>()).ok())
        return 1;
    node_sums.emplace_back(delta.EncodeCompact(), v.EncodeCompact());
  }
  const double megabytes = tasks * fp32_result / 1e6;
  std::printf("\nthe coordinator's ingest of a round of 64 tasks on several threads (Aggregator, %lld-element shards), "
              "medians of 31 rounds, thread counts interleaved; %d cores online\n",
              static_cast<long long>(Aggregator::kShardElements), static_cast<int>(std::thread::hardware_concurrency()));
  std::printf("%-28s %8s %12s %14s %14s %10s\n", "uploads", "threads", "ms a round", "wall ms/MB", "CPU ms/MB",
              "speed");
  const int max_threads = std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
  for (bool from_nodes : {true, false}) {
    const int uploads = from_nodes ? nodes : tasks;
    // One round's ingest on `threads` threads: wall and CPU ms, and the
    // parameters it gives.
    auto ingest = [&](int threads, double* wall_ms, double* cpu_ms) -> std::optional<std::string> {
      Aggregator aggregator(numel, std::vector<int>(uploads, tasks / uploads), carried);
      std::vector<std::pair<std::string, std::string>> bytes = node_sums;  // Check takes its bytes
      std::atomic<int> next{0}, failed{0};
      auto add = [&] {
        for (int upload = next++; upload < uploads; upload = next++) {
          TaskResult result;
          if (from_nodes) {
            absl::StatusOr<CompactSum> delta = CompactSum::Check(std::move(bytes[upload].first), numel, 8, tasks);
            absl::StatusOr<CompactSum> v = CompactSum::Check(std::move(bytes[upload].second), numel, 8, tasks);
            if (!delta.ok() || !v.ok()) {
              ++failed;
              continue;
            }
            result.compact_sums = CompactTensorSums{*std::move(delta), std::nullopt, *std::move(v)};
          } else {
            result.delta = results[upload].delta;
            result.adam_v = results[upload].adam_v;
          }
          if (!aggregator.Add(upload, std::move(result)).ok()) ++failed;
        }
      };
      const double cpu_start = ProcessCpuSeconds();
      const auto start = Clock::now();
      std::vector<std::thread> pool;
      for (int t = 1; t < threads; ++t) pool.emplace_back(add);
      add();
      for (std::thread& thread : pool) thread.join();
      *wall_ms = Millis(start);
      *cpu_ms = 1e3 * (ProcessCpuSeconds() - cpu_start);
      MetaState state;
      state.parameters = torch::zeros({numel});
      state.adam_v = torch::zeros({numel});
      if (failed.load() > 0 || !aggregator.Apply(1.0, 1, &state).ok()) return std::nullopt;
      return std::string(static_cast<const char*>(state.parameters.data_ptr()), 4 * numel);
    };
    // Thread counts interleaved round by round, so that the machine's drift
    // falls on all of them alike.
    std::vector<std::vector<double>> wall(max_threads + 1), cpu(max_threads + 1);
    std::string reference;
    for (int repetition = 0; repetition < 31; ++repetition)
      for (int threads = 1; threads <= max_threads; ++threads) {
        double wall_ms = 0, cpu_ms = 0;
        std::optional<std::string> bits = ingest(threads, &wall_ms, &cpu_ms);
        if (!bits.has_value() || (!reference.empty() && *bits != reference)) {
          std::fprintf(stderr, "ingest on %d threads refused an upload or changed the sums\n", threads);
          return 1;
        }
        reference = *bits;
        wall[threads].push_back(wall_ms);
        cpu[threads].push_back(cpu_ms);
      }
    for (int threads = 1; threads <= max_threads; ++threads) {
      std::sort(wall[threads].begin(), wall[threads].end());
      std::sort(cpu[threads].begin(), cpu[threads].end());
      const double wall_ms = wall[threads][15], cpu_ms = cpu[threads][15];
      std::printf("%-28s %8d %12.2f %14.3f %14.3f %9.2fx\n",
                  from_nodes ? "8 node sums of 8 (compact)" : "64 fp32 results", threads, wall_ms,
                  wall_ms / megabytes, cpu_ms / megabytes, wall[1][15] / wall_ms);
    }
  }
  return 0;
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
  return IngestOnThreads(results, numel, fp32_result);
}

}  // namespace
}  // namespace reptile

int main(int argc, char** argv) { return reptile::Main(argc > 1 ? std::atoi(argv[1]) : 300); }
