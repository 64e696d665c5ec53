#!/usr/bin/env bash
# Trains the four Omniglot configs of the Reptile paper in the background, one
# after another (each uses both cores), in runs/paper/<config>/. Re-running it
# resumes unfinished runs from their checkpoints. Follow with
#   tail -f runs/paper/*.log
# and tabulate (partial runs included, labelled) with scripts/paper_table.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/reptile ] || bash scripts/build.sh
mkdir -p runs/paper
nohup bash -c '
  for c in omniglot_5w1s omniglot_5w5s omniglot_20w1s omniglot_20w5s; do
    ./build/reptile train --config configs/$c.textproto --run_dir runs/paper/$c "$@" >> runs/paper/$c.log 2>&1
  done' _ "$@" > /dev/null 2>&1 &
echo "started in the background (pid $!); logs in runs/paper/*.log"
