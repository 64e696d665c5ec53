#!/bin/sh
# How rounds/s grows with workers W and meta-batch B on this machine: the same
# Omniglot 5-way 1-shot training (its paper settings but B) with W worker
# threads in one process, for every W up to the cores and every B in the list.
# Prints rounds/s, tasks/s and the per-core efficiency measured, beside its
# bound B / (W·⌈B/W⌉): a round waits for its busiest worker. Measured
# per-core efficiency is (tasks/s on W workers) / (W · tasks/s of the W = 1
# run with the same B): one worker computing B tasks back to back sets the
# pace of a fully used core, round overheads included. Every run of one B
# ends with the same parameters whatever W (their SHA-256 is printed); runs
# of different B are different trainings. Larger W than this machine has
# cores: build/bench/cluster_bench --workers=... --meta_batch=... simulates
# them against the real coordinator.
#
#   bench/scaling_bench.sh [ROUNDS] [META_BATCHES] [WORKERS]
#   (defaults: 300 rounds; B = "1 2 3 4 5 6 8 10"; W = 1 .. cores)
set -eu
rounds=${1:-300}
meta_batches=${2:-1 2 3 4 5 6 8 10}
workers=${3:-$(seq 1 "$(nproc)")}
warmup=30
. "$(dirname "$0")/omniglot_runs.sh"

echo "scaling bench, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load avg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "omniglot_5w1s, $rounds rounds per run (median round time of the last $((rounds - warmup))), worker threads in one process"
printf '%4s %4s %10s %9s %10s %14s  %s\n' B W "rounds/s" "tasks/s" "per-core" "B/(W*ceil(B/W))" "parameters sha256"
for b in $meta_batches; do
  for w in $workers; do
    run=$scratch/b${b}_w$w
    "$reptile" train --config "$config" --run_dir "$run" --workers "$w" runtime.local_workers=THREADS \
      task.data_dir="$data" outer.meta_batch_size="$b" outer.rounds="$rounds" eval.every_rounds=0 \
      eval.final_episodes=0 runtime.checkpoint_every_rounds=0 > "$run.out" 2> "$run.err" ||
      { echo "B=$b W=$w failed:"; tail -5 "$run.err"; exit 1; }
    median=$(median_seconds "$run")
    [ "$w" != 1 ] || one_worker=$median
    sha=$(sed -n 's/.*parameters sha256 \([0-9a-f]*\).*/\1/p' "$run.out")
    awk -v b="$b" -v w="$w" -v m="$median" -v one="${one_worker:-0}" -v sha="$sha" 'BEGIN {
      ceil = int((b + w - 1) / w)
      measured = one > 0 ? sprintf("%9.0f%%", 100 * one / (w * m)) : "        -"
      printf "%4d %4d %10.1f %9.1f %s %13.0f%%   %.16s\n", b, w, 1 / m, b / m, measured, 100 * b / (w * ceil), sha }'
  done
done
