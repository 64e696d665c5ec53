// reptile: meta-train, evaluate, adapt and inspect Reptile models.
//
//   reptile train   --config configs/demo.textproto --run_dir runs/demo [field.path=value ...]
//   reptile eval    --run_dir runs/demo [--episodes 1000]
//   reptile adapt   --run_dir runs/demo --support_dir my/support --query_dir my/query
//   reptile inspect --checkpoint runs/demo/checkpoint.bin
//   reptile plot    --run_dir runs/carry --run_dir runs/reset --out curves.svg
//   reptile analyze --run_dir runs/demo [--episodes 200] [--out analysis.svg]
//   reptile coordinator --config configs/omniglot_5w1s.textproto --run_dir runs/o --listen 0.0.0.0:7070
//   reptile worker  --coordinator HOST:7070
//   mpirun -np 4 reptile mpi --config configs/omniglot_5w1s.textproto --run_dir runs/o
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "cli/commands.h"
#include "cli/signals.h"
#include "core/process_setup.h"

ABSL_FLAG(std::string, config, "", "experiment config (protobuf text format), e.g. configs/demo.textproto");
ABSL_FLAG(std::string, run_dir, "",
          "run directory: checkpoints, metrics.jsonl, config; train resumes from it; plot: repeat it to overlay runs");
ABSL_FLAG(std::string, checkpoint, "", "checkpoint file (default: <run_dir>/checkpoint.bin)");
ABSL_FLAG(int, workers, 0, "train: worker processes, or threads with runtime.local_workers=THREADS "
          "(default: runtime.workers from the config)");
ABSL_FLAG(int, episodes, 0,
          "eval: episodes (default: eval.final_episodes); analyze: episodes (default: eval.episodes)");
ABSL_FLAG(std::string, out, "", "plot, analyze: the SVG file to write (analyze default: analysis_<run>.svg)");
ABSL_FLAG(int64_t, stop_at_round, -1, "train: checkpoint and stop once this round is done");
ABSL_FLAG(std::string, support_dir, "", "adapt: folder with one subfolder of PNG images per label");
ABSL_FLAG(std::string, query_dir, "", "adapt: folder of PNG images to label");
ABSL_FLAG(std::string, listen, "127.0.0.1:7070",
          "coordinator: address to serve workers on (port 0: any free port); any address but loopback needs "
          "--tls_cert, --tls_key and --token_file, or --insecure_listen");
ABSL_FLAG(bool, insecure_listen, false,
          "coordinator: serve a non-loopback --listen address without TLS and a token (warned at every start)");
ABSL_FLAG(std::string, port_file, "", "coordinator: write the port it listens on to this file");
ABSL_FLAG(std::string, coordinator, "", "worker: the coordinator's HOST:PORT");
ABSL_FLAG(std::string, data_dir, "", "worker: where the dataset is on this node (overrides task.data_dir)");
ABSL_FLAG(std::string, token_file, "",
          "coordinator, worker: file holding the bearer token every RPC must carry (default: $REPTILE_TOKEN)");
ABSL_FLAG(std::string, tls_cert, "", "coordinator: its PEM certificate (enables TLS); worker: client certificate (mTLS)");
ABSL_FLAG(std::string, tls_key, "", "the PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_ca, "",
          "coordinator: require client certificates from this PEM authority (mTLS); worker: authority to trust");
ABSL_FLAG(std::string, tls_server_name, "", "worker: name to check the coordinator's certificate against");

namespace {

// Every value of a flag given more than once (absl keeps the last), as
// --name=value or --name value, before "--".
std::vector<std::string> RepeatedFlag(int argc, char** argv, const std::string& name) {
  std::vector<std::string> values;
  const std::string dashed = "--" + name, with_value = dashed + "=";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") break;
    if (arg.rfind(with_value, 0) == 0) {
      values.push_back(arg.substr(with_value.size()));
    } else if (arg == dashed && i + 1 < argc) {
      values.push_back(argv[++i]);
    }
  }
  return values;
}

constexpr char kUsage[] =
    "reptile COMMAND [flags] [field.path=value ...]\n"
    "commands:\n"
    "  train    meta-train (or resume) a run: --config, --run_dir\n"
    "  eval     few-shot accuracy of a checkpoint: --run_dir or --checkpoint, --episodes\n"
    "  adapt    label your own images: --run_dir or --checkpoint, --support_dir, --query_dir\n"
    "  inspect  round, config and parameter SHA-256 of a checkpoint: --checkpoint or --run_dir\n"
    "  plot     training curves as SVG: --run_dir (repeat to overlay runs), --out\n"
    "  analyze  per-layer change, last layer vs all layers, accuracy per step: --run_dir, --episodes, --out\n"
    "  coordinator  serve a run to worker processes over gRPC: --config, --run_dir, --listen\n"
    "  worker   join a coordinator and work for it: --coordinator HOST:PORT\n"
    "  mpi      under mpirun: rank 0 coordinates, the others work: --config, --run_dir\n"
    "Any config field can be overridden as field.path=value, e.g. outer.rounds=200.";

}  // namespace

int main(int argc, char** argv) {
  reptile::InstallStopSignals();
  absl::SetProgramUsageMessage(kUsage);
  const std::vector<std::string> run_dirs = RepeatedFlag(argc, argv, "run_dir");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::cerr << kUsage << std::endl;
    return 2;
  }
  const std::string command = args[1];
  reptile::CliOptions options;
  options.config_path = absl::GetFlag(FLAGS_config);
  options.run_dir = absl::GetFlag(FLAGS_run_dir);
  options.run_dirs = run_dirs;
  options.out = absl::GetFlag(FLAGS_out);
  options.checkpoint = absl::GetFlag(FLAGS_checkpoint);
  options.workers = absl::GetFlag(FLAGS_workers);
  options.episodes = absl::GetFlag(FLAGS_episodes);
  options.stop_at_round = absl::GetFlag(FLAGS_stop_at_round);
  options.support_dir = absl::GetFlag(FLAGS_support_dir);
  options.query_dir = absl::GetFlag(FLAGS_query_dir);
  options.listen = absl::GetFlag(FLAGS_listen);
  options.insecure_listen = absl::GetFlag(FLAGS_insecure_listen);
  options.port_file = absl::GetFlag(FLAGS_port_file);
  options.coordinator = absl::GetFlag(FLAGS_coordinator);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.token_file = absl::GetFlag(FLAGS_token_file);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
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
  } else if (command == "plot") {
    status = reptile::PlotCommand(options);
  } else if (command == "analyze") {
    status = reptile::AnalyzeCommand(options);
  } else if (command == "coordinator") {
    status = reptile::CoordinatorCommand(options);
  } else if (command == "worker") {
    status = reptile::WorkerCommand(options);
  } else if (command == "mpi") {
    status = reptile::MpiCommand(options);
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
