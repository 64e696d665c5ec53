// The `reptile` subcommands. Each returns a status; main() prints a failure
// as one line and exits non-zero.
#ifndef REPTILE_CLI_COMMANDS_H_
#define REPTILE_CLI_COMMANDS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace reptile {

// Command-line options, read once from flags in main().
struct CliOptions {
  std::string config_path;
  std::vector<std::string> overrides;  // "field.path=value"
  std::string run_dir;
  std::vector<std::string> run_dirs;  // plot: every --run_dir given, in order
  std::string out;                    // plot, analyze: the SVG to write; export, adapt: the model file
  std::string format;                 // export, adapt: torchscript or state_dict ("": by the model)
  std::string checkpoint;
  int workers = 0;  // 0: runtime.workers from the config
  int episodes = 0; // 0: eval.final_episodes
  int64_t stop_at_round = -1;
  std::string support_dir;
  std::string query_dir;
  // gRPC runtime.
  std::string listen = "127.0.0.1:7070";  // coordinator
  bool insecure_listen = false;           // coordinator: no TLS or token off loopback
  std::string port_file;                // coordinator: write the port here once listening
  std::string coordinator;              // worker: host:port
  std::string shared_memory;            // worker: a local coordinator's shared board
  std::string data_dir;                 // worker: this node's dataset location
  int learners = 1;                     // worker: learner threads
  std::string token_file;
  std::string tls_cert, tls_key, tls_ca, tls_server_name;
  // /metrics: the coordinator's (train, coordinator, mpi; default
  // runtime.metrics_listen) or a worker's own. Empty: none.
  std::string metrics_listen;
};

absl::Status TrainCommand(const CliOptions& options);
absl::Status CoordinatorCommand(const CliOptions& options);
absl::Status WorkerCommand(const CliOptions& options);
// Under mpirun: rank 0 coordinates, the other ranks work.
absl::Status MpiCommand(const CliOptions& options);
absl::Status EvalCommand(const CliOptions& options);
absl::Status AdaptCommand(const CliOptions& options);
absl::Status InspectCommand(const CliOptions& options);
// A checkpoint's theta as a TorchScript module or a state dict PyTorch loads.
absl::Status ExportCommand(const CliOptions& options);
// Training curves of one or more run directories as an SVG.
absl::Status PlotCommand(const CliOptions& options);
// Per-layer change, last-layer-only against all-layer adaptation and
// accuracy per adaptation step on meta-test episodes: a table and an SVG.
absl::Status AnalyzeCommand(const CliOptions& options);

}  // namespace reptile

#endif  // REPTILE_CLI_COMMANDS_H_
