#!/bin/sh
# The TorchScript path against the built-in network it copies, in one run:
# CONV_OMNIGLOT, and its twin scripted in Python (python/reptile_models.py)
# and initialised from the built-in network's theta at round 0 (exported with
# `reptile export`). Both train Omniglot 5-way 1-shot for ROUNDS rounds with
# 2 worker processes, REPEAT times in turn; the bench prints each run's
# median rounds/s after the warm-up, the ratio TorchScript/built-in, both
# parameter SHA-256s, the largest relative difference of any parameter
# tensor between the two (norm of the difference over norm of the
# built-in's), and both runs' accuracy over EPISODES evaluation episodes.
#
#   [REPEAT=N] bench/torchscript_bench.sh [ROUNDS] [EPISODES]   (defaults: 100 rounds, 1000 episodes, REPEAT=3)
set -eu
rounds=${1:-100}
episodes=${2:-1000}
repeat=${REPEAT:-3}
warmup=10
. "$(dirname "$0")/omniglot_runs.sh"
python=/usr/bin/python3
common="task.data_dir=$data outer.rounds=$rounds eval.every_rounds=0 eval.final_episodes=0 runtime.checkpoint_every_rounds=0"

echo "torchscript bench, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, omniglot_5w1s, $rounds rounds, 2 worker processes"
"$reptile" train --config "$config" --run_dir "$scratch/init" $common --stop_at_round 0 > /dev/null 2>&1
"$reptile" export --run_dir "$scratch/init" --out "$scratch/init.pt" --format state_dict > /dev/null
"$python" "$here/tests/torchscript/make_models.py" twin "$scratch/init.pt" "$scratch/twin.pt"

run() {
  name=$1
  shift
  rm -rf "$scratch/$name"
  "$reptile" train --config "$config" --run_dir "$scratch/$name" --workers 2 $common "$@" \
    > "$scratch/$name.out" 2> "$scratch/$name.err" || { echo "$name failed:"; tail -5 "$scratch/$name.err"; exit 1; }
}

for i in $(seq "$repeat"); do
  run builtin
  run twin model.arch=TORCHSCRIPT model.torchscript_file="$scratch/twin.pt"
  b=$(median_seconds "$scratch/builtin")
  t=$(median_seconds "$scratch/twin")
  printf 'repetition %d: built-in %6.1f rounds/s, TorchScript %6.1f rounds/s: %.2fx\n' "$i" \
    "$(awk "BEGIN { print 1 / $b }")" "$(awk "BEGIN { print 1 / $t }")" "$(awk "BEGIN { print $b / $t }")"
done
sha() { sed -n 's/.*parameters sha256 \([0-9a-f]*\).*/\1/p' "$scratch/$1.out"; }
echo "sha256 built-in    $(sha builtin)"
echo "sha256 TorchScript $(sha twin)"
"$reptile" export --run_dir "$scratch/builtin" --out "$scratch/builtin.pt" --format state_dict > /dev/null
"$reptile" export --run_dir "$scratch/twin" --out "$scratch/twin_theta.pt" --format state_dict > /dev/null
"$python" - "$scratch/builtin.pt" "$scratch/twin_theta.pt" << 'EOF'
import sys
import torch
a, b = torch.load(sys.argv[1]), torch.load(sys.argv[2])
relative = {k: ((a[k] - b[k]).norm() / a[k].norm()).item() for k in a}
print("relative difference per tensor, ||twin - built-in|| / ||built-in||:")
print("  " + ", ".join(f"{k} {v:.2g}" for k, v in relative.items()))
EOF
for name in builtin twin; do
  printf '%-10s %s\n' "$name" "$("$reptile" eval --run_dir "$scratch/$name" --episodes "$episodes" 2> /dev/null)"
done
