#!/usr/bin/env bash
# Installs every Debian bookworm package this project needs to build, test and run.
# Idempotent: packages already present are left alone. Must run as root (or via sudo).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git ca-certificates openssl
  libtorch-dev libopenblas0-openmp
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev
  libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev
  libzip-dev libpng-dev zlib1g-dev libssl-dev
  dataset-fashion-mnist
  iproute2 nftables procps
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install_deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
