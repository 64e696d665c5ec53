// Inner-loop and round throughput on an Omniglot config, beside this
// machine's single-core fp32 matrix-product peak measured in the same run.
//
//   build/bench/inner_loop_bench [config] [rounds]   (default: configs/omniglot_5w1s.textproto, 600)
//
// Prints: peak GFLOP/s (2048^3 sgemm, one thread), dataset load time, inner
// steps/s and achieved GFLOP/s of one learner, rounds/s of the real round
// engine with 1 and 2 worker threads, the process's peak RSS, and forward +
// backward of the fused batch norm + ReLU against LibTorch's ops on the
// Omniglot network's four activation shapes.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include "coordinator/round_engine.h"
#include "core/config.h"
#include "core/models/batch_norm_relu.h"
#include "core/process_setup.h"
#include "transport/local/local_transport.h"

namespace reptile {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

double PeakGflops() {
  torch::Tensor a = torch::rand({2048, 2048}), b = torch::rand({2048, 2048});
  torch::mm(a, b);
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const auto start = Clock::now();
    torch::mm(a, b);
    best = std::max(best, 2.0 * 2048 * 2048 * 2048 / Seconds(start) / 1e9);
  }
  return best;
}

// Multiply-adds x2 of one forward pass of the classifier on one example;
// a training step costs about 3x that (forward, input and weight gradients).
double ForwardFlopsPerExample(const ExperimentConfig& config) {
  const bool pool = config.model().arch() == CONV_MINIIMAGENET;
  const int filters = pool ? 32 : 64;
  int size = config.task().image_size(), in = InputChannels(config.task());
  double flops = 0;
  for (int layer = 0; layer < 4; ++layer) {
    const int out_size = pool ? size : (size + 1) / 2;
    flops += 2.0 * in * 9 * filters * out_size * out_size;
    size = pool ? out_size / 2 : out_size;
    in = filters;
  }
  return flops + 2.0 * filters * size * size * config.task().ways();
}

// Best time of forward + backward over the four blocks' activations of the
// Omniglot network (batch 10, 64 channels, 14x14 down to 2x2), fused or not.
double BatchNormReluMicros(bool fused) {
  double total = 0;
  for (int64_t size : {14, 7, 4, 2}) {
    const torch::Tensor input = torch::randn({10, 64, size, size}), upstream = torch::randn_like(input);
    const torch::Tensor weight = torch::ones({64}).requires_grad_(), bias = torch::zeros({64}).requires_grad_();
    double best = 1e9;
    for (int block = 0; block < 5; ++block) {
      const auto start = Clock::now();
      for (int i = 0; i < 100; ++i) {
        torch::Tensor x = input.clone().requires_grad_();
        torch::Tensor y = fused ? BatchNormRelu(x, weight, bias, 1e-5)
                                : torch::relu(torch::batch_norm(x, weight, bias, {}, {}, true, 0.1, 1e-5, false));
        y.backward(upstream);
      }
      best = std::min(best, Seconds(start) / 100);
    }
    total += best;
  }
  return total * 1e6;
}

double PeakRssMb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;
}

int Main(int argc, char** argv) {
  ConfigureProcessForTraining();
  const std::string path = argc > 1 ? argv[1] : std::string(REPTILE_SOURCE_DIR) + "/configs/omniglot_5w1s.textproto";
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 600;
  auto config = LoadConfig(path, {absl::StrCat("outer.rounds=", rounds), "eval.every_rounds=0",
                                  "eval.final_episodes=0"});
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  if (config->task().family() == OMNIGLOT && config->task().data_dir().rfind("../", 0) == 0)
    config->mutable_task()->set_data_dir(std::string(REPTILE_SOURCE_DIR) + "/" + config->task().data_dir());

  std::printf("config                      %s\n", ConfigSummary(*config).c_str());
  std::printf("peak sgemm, 1 thread        %.1f GFLOP/s\n", PeakGflops());

  auto start = Clock::now();
  auto tasks = TaskSource::Create(config->task());
  if (!tasks.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tasks.status().message()).c_str());
    return 1;
  }
  std::printf("dataset load                %.2f s, %.1f MB held\n", Seconds(start), (*tasks)->memory_bytes() / 1e6);

  // This machine's speed drifts by up to 2x from minute to minute, so each
  // figure is the best of three blocks of rounds, with the median beside it.
  constexpr int kBlocks = 3;
  for (int workers : {1, 2}) {
    auto transport = LocalTransport::Create(*config, *tasks, workers);
    auto engine = RoundEngine::Create(*config, **tasks, transport->get(), {});
    (*engine)->Run(5).IgnoreError();  // warm-up
    std::vector<double> rates;
    for (int block = 1; block <= kBlocks; ++block) {
      const int64_t from = (*engine)->round();
      start = Clock::now();
      absl::Status status = (*engine)->Run(5 + (rounds - 5) * block / kBlocks);
      if (!status.ok()) {
        std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
        return 1;
      }
      rates.push_back(((*engine)->round() - from) / Seconds(start));
    }
    std::sort(rates.begin(), rates.end());
    const double rate = rates.back();
    std::printf("round engine, %d worker%s    %.2f rounds/s (%.1f ms/round), median %.2f\n", workers,
                workers > 1 ? "s" : " ", rate, 1e3 / rate, rates[kBlocks / 2]);
    if (workers == 1) {
      const InnerLoopConfig& in = config->inner();
      const double steps = rate * config->outer().meta_batch_size() * in.iterations();
      const double flops = steps * in.batch_size() * 3 * ForwardFlopsPerExample(*config);
      std::printf("inner steps, 1 worker       %.1f steps/s (batch %d), %.1f GFLOP/s achieved\n", steps,
                  in.batch_size(), flops / 1e9);
    }
  }
  std::printf("peak RSS                    %.0f MB\n", PeakRssMb());
  std::printf("batch norm + ReLU, 4 blocks  %.0f us fused, %.0f us LibTorch (forward + backward)\n",
              BatchNormReluMicros(true), BatchNormReluMicros(false));
  return 0;
}

}  // namespace
}  // namespace reptile

int main(int argc, char** argv) { return reptile::Main(argc, argv); }
