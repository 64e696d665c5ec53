#!/bin/sh
# Installs the npm packages of tests/k8s/validate.cjs into PREFIX (default
# build/k8s-validate) exactly as tests/k8s/package-lock.json pins them
# (npm ci), unless PREFIX already holds that lockfile's install.
#
#   tests/k8s/install.sh [PREFIX]
#
# The deploy tests run validate.cjs with NODE_PATH=PREFIX/node_modules.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=${1:-$here/../../build/k8s-validate}
mkdir -p "$prefix"
if [ -d "$prefix/node_modules" ] && cmp -s "$here/package-lock.json" "$prefix/package-lock.json"; then
  echo "k8s validator: up to date in $prefix"
  exit 0
fi
cp "$here/package.json" "$here/package-lock.json" "$prefix/"
npm ci --prefix "$prefix" --no-audit --no-fund --loglevel=error
echo "k8s validator: installed in $prefix"
