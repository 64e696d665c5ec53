// reptile: meta-train, evaluate, adapt and inspect Reptile models.
//
//   reptile train   --config configs/demo.textproto --run_dir runs/demo [field.path=value ...]
//   reptile eval    --run_dir runs/demo [--episodes 1000]
//   reptile adapt   --run_dir runs/demo --support_dir my/support --query_dir my/query
//   reptile inspect --checkpoint runs/demo/checkpoint.bin
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "cli/commands.h"
#include "core/process_setup.h"

ABSL_FLAG(std::string, config, "", "experiment config (protobuf text format), e.g. configs/demo.textproto");
ABSL_FLAG(std::string, run_dir, "", "run directory: checkpoints, metrics.jsonl, config; train resumes from it");
ABSL_FLAG(std::string, checkpoint, "", "checkpoint file (default: <run_dir>/checkpoint.bin)");
ABSL_FLAG(int, workers, 0, "worker threads (default: runtime.workers from the config)");
ABSL_FLAG(int, episodes, 0, "eval: episodes (default: eval.final_episodes)");
ABSL_FLAG(int64_t, stop_at_round, -1, "train: checkpoint and stop once this round is done");
ABSL_FLAG(std::string, support_dir, "", "adapt: folder with one subfolder of PNG images per label");
ABSL_FLAG(std::string, query_dir, "", "adapt: folder of PNG images to label");

namespace {

constexpr char kUsage[] =
    "reptile COMMAND [flags] [field.path=value ...]\n"
    "commands:\n"
    "  train    meta-train (or resume) a run: --config, --run_dir\n"
    "  eval     few-shot accuracy of a checkpoint: --run_dir or --checkpoint, --episodes\n"
    "  adapt    label your own images: --run_dir or --checkpoint, --support_dir, --query_dir\n"
    "  inspect  round, config and parameter SHA-256 of a checkpoint: --checkpoint or --run_dir\n"
    "Any config field can be overridden as field.path=value, e.g. outer.rounds=200.";

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::cerr << kUsage << std::endl;
    return 2;
  }
  const std::string command = args[1];
  reptile::CliOptions options;
  options.config_path = absl::GetFlag(FLAGS_config);
  options.run_dir = absl::GetFlag(FLAGS_run_dir);
  options.checkpoint = absl::GetFlag(FLAGS_checkpoint);
  options.workers = absl::GetFlag(FLAGS_workers);
  options.episodes = absl::GetFlag(FLAGS_episodes);
  options.stop_at_round = absl::GetFlag(FLAGS_stop_at_round);
  options.support_dir = absl::GetFlag(FLAGS_support_dir);
  options.query_dir = absl::GetFlag(FLAGS_query_dir);
  options.overrides.assign(args.begin() + 2, args.end());

  reptile::ConfigureProcessForTraining();
  absl::Status status;
  if (command == "train") {
    status = reptile::TrainCommand(options);
  } else if (command == "eval") {
    status = reptile::EvalCommand(options);
  } else if (command == "adapt") {
    status = reptile::AdaptCommand(options);
  } else if (command == "inspect") {
    status = reptile::InspectCommand(options);
  } else {
    std::cerr << "reptile: unknown command '" << command << "'\n" << kUsage << std::endl;
    return 2;
  }
  if (!status.ok()) {
    std::cerr << "reptile " << command << ": error: " << status.message() << std::endl;
    return 1;
  }
  return 0;
}
