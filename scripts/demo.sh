#!/usr/bin/env bash
# The main job for a new machine: installs the dependencies, builds, and runs a
# short local Omniglot meta-training run (configs/demo.textproto, a few minutes
# on 2 cores) ending with its few-shot evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
run_dir=${RUN_DIR:-runs/demo}
./build/reptile train --config configs/demo.textproto --run_dir "$run_dir" "$@"
./build/reptile inspect --run_dir "$run_dir"
