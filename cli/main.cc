// reptile: meta-train, evaluate, adapt and inspect Reptile models.
//
//   reptile train   --config configs/demo.textproto --run_dir runs/demo [field.path=value ...]
//   reptile eval    --run_dir runs/demo [--episodes 1000]
//   reptile adapt   --run_dir runs/demo --support_dir my/support --query_dir my/query
//   reptile inspect --checkpoint runs/demo/checkpoint.bin
//   reptile export  --run_dir runs/demo --out model.pt [--format torchscript|state_dict]
//   reptile plot    --run_dir runs/carry --run_dir runs/reset --out curves.svg
//   reptile analyze --run_dir runs/demo [--episodes 200] [--out analysis.svg]
//   reptile coordinator --config configs/omniglot_5w1s.textproto --run_dir runs/o --listen 0.0.0.0:7070
//   reptile worker  --coordinator HOST:7070
//   mpirun -np 4 reptile mpi --config configs/omniglot_5w1s.textproto --run_dir runs/o
//   reptile help [COMMAND]            (or reptile [COMMAND] --help): usage and flags
#include <algorithm>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/signals.h"
#include "core/process_setup.h"

ABSL_FLAG(std::string, config, "",
          "experiment config (protobuf text format), e.g. configs/demo.textproto; worker: its own, checked "
          "against the coordinator's at join (default: the coordinator's)");
ABSL_FLAG(std::string, run_dir, "",
          "run directory: checkpoints, metrics.jsonl, config (train resumes from it); plot: a run to draw, "
          "repeated to overlay runs");
ABSL_FLAG(std::string, checkpoint, "", "checkpoint file (default: <run_dir>/checkpoint.bin)");
ABSL_FLAG(int, workers, 0, "train: worker processes, or threads with runtime.local_workers=THREADS "
          "(default: runtime.workers from the config); eval, analyze: threads (default: runtime.workers)");
ABSL_FLAG(int, episodes, 0,
          "eval: episodes (default: eval.final_episodes); analyze: episodes (default: eval.episodes)");
ABSL_FLAG(std::string, out, "",
          "plot, analyze: the SVG file to write; analyze: default analysis_<run>.svg; export: the model file to "
          "write; adapt: also write the adapted model to this file");
ABSL_FLAG(std::string, format, "",
          "export, adapt: torchscript (the run's TorchScript module, for torch.jit.load) or state_dict (for "
          "torch.load; default for built-in networks)");
ABSL_FLAG(int64_t, stop_at_round, -1, "train, coordinator, mpi: checkpoint and stop once this round is done");
ABSL_FLAG(std::string, support_dir, "", "adapt: folder with one subfolder of PNG images per label");
ABSL_FLAG(std::string, query_dir, "", "adapt: folder of PNG images to label");
ABSL_FLAG(std::string, listen, "127.0.0.1:7070",
          "coordinator: address to serve workers on (port 0: any free port); any address but loopback needs "
          "--tls_cert, --tls_key and --token_file, or --insecure_listen");
ABSL_FLAG(bool, insecure_listen, false,
          "coordinator: serve a non-loopback --listen address without TLS and a token (warned at every start)");
ABSL_FLAG(std::string, port_file, "", "coordinator: write the port it listens on to this file");
ABSL_FLAG(std::string, coordinator, "", "worker: the coordinator's HOST:PORT");
ABSL_FLAG(std::string, shared_memory, "",
          "worker: the shared board of a local `reptile train`, which starts its worker processes with it");
ABSL_FLAG(std::string, data_dir, "", "worker: where the dataset is on this node (overrides task.data_dir)");
ABSL_FLAG(int, learners, 1,
          "worker: learner threads, each taking tasks of its own (one per core); they share one connection, the "
          "dataset and one fetch of each round's state");
ABSL_FLAG(std::string, token_file, "",
          "coordinator, worker: file holding the bearer token every RPC must carry (default: $REPTILE_TOKEN)");
ABSL_FLAG(std::string, tls_cert, "", "coordinator: its PEM certificate (enables TLS); worker: client certificate (mTLS)");
ABSL_FLAG(std::string, tls_key, "", "the PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_ca, "",
          "coordinator: require client certificates from this PEM authority (mTLS); worker: authority to trust");
ABSL_FLAG(std::string, tls_server_name, "", "worker: name to check the coordinator's certificate against");
ABSL_FLAG(std::string, metrics_listen, "",
          "train, coordinator, mpi: serve Prometheus /metrics on PORT or IP:PORT (a bare port is on 127.0.0.1; "
          "default: runtime.metrics_listen, empty: off); worker: serve the worker's own Prometheus /metrics on "
          "PORT or IP:PORT (a bare port is on 127.0.0.1; empty: off)");

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

// What `reptile --help` and `reptile COMMAND --help` say.
struct Command {
  const char* name;
  const char* summary;
  const char* usage;                // after "reptile "
  std::vector<const char*> flags;   // the flags it reads, in the order shown
};

const std::vector<Command>& Commands() {
  static const std::vector<Command> commands = {
      {"train", "meta-train (or resume) a run, with worker processes on loopback",
       "train --config FILE --run_dir DIR [flags] [field.path=value ...]",
       {"config", "run_dir", "workers", "stop_at_round", "metrics_listen"}},
      {"eval", "few-shot accuracy of a checkpoint on held-out classes",
       "eval --run_dir DIR | --checkpoint FILE [--episodes N] [field.path=value ...]",
       {"run_dir", "checkpoint", "episodes", "workers"}},
      {"adapt", "label your own images with a trained model",
       "adapt --run_dir DIR | --checkpoint FILE --support_dir DIR --query_dir DIR [--out FILE [--format F]]",
       {"run_dir", "checkpoint", "support_dir", "query_dir", "out", "format"}},
      {"inspect", "round, config and parameter SHA-256 of a checkpoint",
       "inspect --run_dir DIR | --checkpoint FILE", {"run_dir", "checkpoint"}},
      {"export", "write a checkpoint's model as a file PyTorch loads",
       "export --run_dir DIR | --checkpoint FILE --out FILE [--format torchscript|state_dict]",
       {"run_dir", "checkpoint", "out", "format"}},
      {"plot", "training curves of one or more runs as an SVG (overlaid, one colour each)",
       "plot --run_dir DIR [--run_dir DIR ...] --out FILE.svg", {"run_dir", "out"}},
      {"analyze", "what adaptation changes: each layer, last layer only against all, accuracy per step",
       "analyze --run_dir DIR | --checkpoint FILE [--episodes N] [--out FILE.svg] [field.path=value ...]",
       {"run_dir", "checkpoint", "episodes", "workers", "out"}},
      {"coordinator", "serve a run to worker processes over gRPC",
       "coordinator --config FILE --run_dir DIR [--listen HOST:PORT] [flags] [field.path=value ...]",
       {"config", "run_dir", "stop_at_round", "listen", "insecure_listen", "port_file", "token_file", "tls_cert",
        "tls_key", "tls_ca", "metrics_listen"}},
      {"worker", "join a coordinator and work for it",
       "worker --coordinator HOST:PORT [flags] [field.path=value ...]",
       {"coordinator", "shared_memory", "config", "data_dir", "learners", "token_file", "tls_cert", "tls_key", "tls_ca",
        "tls_server_name", "metrics_listen"}},
      {"mpi", "under mpirun: rank 0 coordinates, the other ranks work",
       "mpi --config FILE --run_dir DIR [flags] [field.path=value ...]   (mpirun -np N reptile mpi ...)",
       {"config", "run_dir", "stop_at_round", "metrics_listen"}},
      {"help", "this text, or a command's flags", "help [COMMAND]", {}},
  };
  return commands;
}

const Command* FindCommand(const std::string& name) {
  for (const Command& command : Commands())
    if (name == command.name) return &command;
  return nullptr;
}

std::string CommandNames() {
  std::vector<std::string> names;
  for (const Command& command : Commands()) names.push_back(command.name);
  return absl::StrJoin(names, ", ");
}

std::string GeneralHelp() {
  std::string text =
      "reptile: distributed Reptile meta-learning (train, evaluate, adapt, serve)\n"
      "usage: reptile COMMAND [flags] [field.path=value ...]\n\ncommands:\n";
  for (const Command& command : Commands()) absl::StrAppendFormat(&text, "  %-12s %s\n", command.name, command.summary);
  text +=
      "\n`reptile help COMMAND` or `reptile COMMAND --help` lists a command's flags.\n"
      "Any config field can be overridden as field.path=value, e.g. outer.rounds=200.\n";
  return text;
}

// A flag's help may have parts for several commands, each starting with
// "cmd[, cmd]: "; parts without such a prefix continue the one before.
// Returns the parts for `command` without their prefixes, or the whole text
// if none is for it.
std::string HelpFor(const std::string& help, const std::string& command) {
  std::vector<std::string> mine;
  bool any_prefix = false, in_mine = true;
  for (absl::string_view part : absl::StrSplit(help, "; ")) {
    const size_t colon = part.find(": ");
    bool prefixed = colon != absl::string_view::npos;
    std::vector<std::string> roles;
    if (prefixed) {
      roles = absl::StrSplit(part.substr(0, colon), ", ");
      for (const std::string& role : roles) prefixed = prefixed && FindCommand(role) != nullptr;
    }
    if (prefixed) {
      any_prefix = true;
      in_mine = std::find(roles.begin(), roles.end(), command) != roles.end();
      if (in_mine) mine.emplace_back(part.substr(colon + 2));
    } else if (in_mine) {
      mine.emplace_back(part);
    }
  }
  return any_prefix && !mine.empty() ? absl::StrJoin(mine, "; ") : help;
}

std::string CommandHelp(const Command& command) {
  std::string text = absl::StrFormat("reptile %s: %s\nusage: reptile %s\n", command.name, command.summary,
                                     command.usage);
  if (command.name == std::string("help")) return text + "\n" + GeneralHelp();
  std::vector<std::pair<std::string, std::string>> rows;
  size_t width = 0;
  for (const char* name : command.flags) {
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) continue;
    const std::string value = flag->DefaultValue();
    rows.emplace_back(absl::StrCat("--", name, "=", flag->IsOfType<std::string>() ? absl::StrCat("\"", value, "\"") : value),
                      HelpFor(flag->Help(), command.name));
    width = std::max(width, rows.back().first.size());
  }
  text += "\nflags (--name=default):\n";
  for (const auto& [flag, help] : rows) absl::StrAppendFormat(&text, "  %-*s  %s\n", width, flag, help);
  if (command.name != std::string("inspect") && command.name != std::string("adapt") &&
      command.name != std::string("plot") && command.name != std::string("export"))
    text += "\nAny config field can be overridden as field.path=value, e.g. outer.rounds=200.\n";
  return text;
}

bool IsHelpFlag(const std::string& arg) {
  return arg == "--help" || arg == "-help" || arg == "-h" || arg == "--helpshort" || arg == "-helpshort";
}

// Answers `reptile --help`, `reptile help [COMMAND]` and `reptile COMMAND
// --help` before abseil parses the flags (its own --help lists flags by
// source file, which says nothing useful here). Returns the exit code, or
// none if this is not a request for help.
std::optional<int> MaybeHelp(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  const auto end = std::find(args.begin(), args.end(), "--");  // flags end there
  const bool help_flag = std::any_of(args.begin(), end, IsHelpFlag);
  const bool help_command = !args.empty() && args[0] == "help";
  if (!help_flag && !help_command) return std::nullopt;
  // The command asked about: after `help`, else the first known command.
  const Command* command = nullptr;
  if (help_command && args.size() > 1 && !IsHelpFlag(args[1])) {
    command = FindCommand(args[1]);
    if (command == nullptr) {
      std::cerr << "reptile help: unknown command '" << args[1] << "' (commands: " << CommandNames() << ")"
                << std::endl;
      return 2;
    }
  } else if (!help_command) {
    for (auto it = args.begin(); it != end && command == nullptr; ++it) command = FindCommand(*it);
  }
  std::cout << (command != nullptr ? CommandHelp(*command) : GeneralHelp()) << std::flush;
  return 0;
}

// The flags parsed into the options every command takes; `args` are what
// flag parsing left: the program, the command and the config overrides.
reptile::CliOptions OptionsFromFlags(const std::vector<char*>& args, std::vector<std::string> run_dirs) {
  reptile::CliOptions options;
  options.config_path = absl::GetFlag(FLAGS_config);
  options.run_dir = absl::GetFlag(FLAGS_run_dir);
  options.run_dirs = std::move(run_dirs);
  options.out = absl::GetFlag(FLAGS_out);
  options.format = absl::GetFlag(FLAGS_format);
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
  options.shared_memory = absl::GetFlag(FLAGS_shared_memory);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.learners = absl::GetFlag(FLAGS_learners);
  options.token_file = absl::GetFlag(FLAGS_token_file);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  options.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.overrides.assign(args.begin() + 2, args.end());
  return options;
}

// Runs `command`, one FindCommand knows ("help" is answered before the
// flags are parsed).
absl::Status RunCommand(const std::string& command, const reptile::CliOptions& options) {
  if (command == "train") return reptile::TrainCommand(options);
  if (command == "eval") return reptile::EvalCommand(options);
  if (command == "adapt") return reptile::AdaptCommand(options);
  if (command == "inspect") return reptile::InspectCommand(options);
  if (command == "export") return reptile::ExportCommand(options);
  if (command == "plot") return reptile::PlotCommand(options);
  if (command == "analyze") return reptile::AnalyzeCommand(options);
  if (command == "coordinator") return reptile::CoordinatorCommand(options);
  if (command == "worker") return reptile::WorkerCommand(options);
  if (command == "mpi") return reptile::MpiCommand(options);
  return absl::InvalidArgumentError(absl::StrCat("no command '", command, "'"));
}

}  // namespace

int main(int argc, char** argv) {
  reptile::InstallStopSignals();
  if (std::optional<int> code = MaybeHelp(argc, argv)) return *code;
  absl::SetProgramUsageMessage(GeneralHelp());
  std::vector<std::string> run_dirs = RepeatedFlag(argc, argv, "run_dir");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::cerr << GeneralHelp() << std::flush;
    return 2;
  }
  const std::string command = args[1];
  if (FindCommand(command) == nullptr) {
    std::cerr << "reptile: unknown command '" << command << "' (commands: " << CommandNames()
              << "; reptile --help)" << std::endl;
    return 2;
  }
  const reptile::CliOptions options = OptionsFromFlags(args, std::move(run_dirs));
  reptile::ConfigureProcessForTraining();
  if (absl::Status status = RunCommand(command, options); !status.ok()) {
    std::cerr << "reptile " << command << ": error: " << status.message() << std::endl;
    return 1;
  }
  return 0;
}
