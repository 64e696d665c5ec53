#!/usr/bin/env bash
# Installs the dependencies, builds, and runs the whole test suite with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
bash tests/k8s/install.sh build/k8s-validate   # npm packages of the deploy tests
cd build
ctest --output-on-failure --timeout 900 -j 2 "$@"
