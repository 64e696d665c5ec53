#!/usr/bin/env bash
# Installs the dependencies, builds, and runs the whole test suite with ctest.
# The container image built from deploy/docker/Dockerfile as it is (ctest
# label docker_build, about 20 minutes more from nothing) is left out unless
# REPTILE_TEST_DOCKER_BUILD=1; the image made from this build's binary (label
# docker) is in.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
bash tests/k8s/install.sh build/k8s-validate   # npm packages of the deploy tests
exclude=(-LE docker_build)
if [ "${REPTILE_TEST_DOCKER_BUILD:-0}" = 1 ]; then exclude=(); fi
cd build
ctest --output-on-failure --timeout 900 -j 2 "${exclude[@]}" "$@"
