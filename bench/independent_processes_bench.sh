#!/bin/sh
# Is a worker process slower at computing than a worker thread? Tasks/s of
# Omniglot 5-way 1-shot training on WORKERS threads of one process (meta-batch
# WORKERS: one task per thread per round) against WORKERS processes that each
# train on their own with one thread (meta-batch WORKERS too, run one after
# another), started together and coordinating with nobody. Equal or better
# figures for the processes mean that what the distributed runtimes lose
# against threads is the coordination between processes, not the computing in
# them. Each figure is the medians of the round times after the first 50
# rounds; REPEAT pairs, interleaved, since this machine's speed drifts.
#
#   bench/independent_processes_bench.sh [ROUNDS] [WORKERS]   (defaults: 300 rounds, 2 workers; REPEAT=3)
set -eu
rounds=${1:-300}
workers=${2:-2}
repeat=${REPEAT:-3}
warmup=50
. "$(dirname "$0")/omniglot_runs.sh"
common="task.data_dir=$data outer.meta_batch_size=$workers eval.every_rounds=0 eval.final_episodes=0
runtime.checkpoint_every_rounds=0 runtime.local_workers=THREADS"

echo "independent processes bench, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, omniglot_5w1s, $workers workers"
for rep in $(seq "$repeat"); do
  rm -rf "${scratch:?}"/*
  "$reptile" train --config "$config" --run_dir "$scratch/threads" --workers "$workers" $common \
    outer.rounds="$rounds" > /dev/null 2>&1 || { echo "the threads run failed"; exit 1; }
  threads=$(awk -v n="$workers" -v s="$(median_seconds "$scratch/threads")" 'BEGIN { printf "%.1f", n / s }')
  pids=
  for p in $(seq "$workers"); do
    "$reptile" train --config "$config" --run_dir "$scratch/process$p" --workers 1 $common \
      outer.rounds="$rounds" > /dev/null 2>&1 &
    pids="$pids $!"
  done
  for pid in $pids; do wait "$pid" || { echo "a process run failed"; exit 1; }; done
  processes=0
  for p in $(seq "$workers"); do
    processes=$(awk -v sum="$processes" -v n="$workers" -v s="$(median_seconds "$scratch/process$p")" \
      'BEGIN { printf "%.1f", sum + n / s }')
  done
  echo "pair $rep: $workers threads of one process $threads tasks/s; $workers independent processes $processes tasks/s;" \
    "ratio $(awk "BEGIN { printf \"%.2f\", $processes / $threads }")"
done
