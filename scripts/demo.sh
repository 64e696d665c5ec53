#!/usr/bin/env bash
# A first result on a new machine: installs the packages that build and run
# the binary (REPTILE_DEPS=build: not the test suite's tools), builds the
# `reptile` target alone, and meta-trains configs/demo.textproto (Omniglot
# from ../shared/data/omniglot, 2 worker processes), ending with its few-shot
# evaluation and `reptile inspect`. Arguments go to `reptile train`
# (field.path=value overrides). scripts/test.sh installs and builds the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
REPTILE_DEPS=build bash scripts/install_deps.sh
bash scripts/build.sh reptile
run_dir=${RUN_DIR:-runs/demo}
./build/reptile train --config configs/demo.textproto --run_dir "$run_dir" "$@"
./build/reptile inspect --run_dir "$run_dir"
