#!/bin/sh
# Rounds/s of the same Omniglot 5-way 1-shot training under each runtime, in
# one run on this machine: threads in one process, worker processes on shared
# memory (`reptile train --workers N`, the default), worker processes over
# gRPC (Unix socket), and MPI ranks under mpirun, over shared memory without the
# single-copy mechanism (as in containers) and over TCP only (as between
# nodes). Prints the ratio of each median to threads', the median and best round
# time over the measured rounds (the first WARMUP rounds, which include the
# workers loading the dataset, are skipped) and each run's parameter SHA-256:
# all must be equal.
#
# This machine's speed drifts from minute to minute, so REPEAT=N runs every
# runtime N times in turn, each ratio against the threads of its own
# repetition.
#
#   [REPEAT=N] bench/runtimes_bench.sh [ROUNDS] [WORKERS]     (defaults: 400 rounds, 2 workers, REPEAT=1)
set -eu
rounds=${1:-400}
workers=${2:-2}
warmup=50
. "$(dirname "$0")/omniglot_runs.sh"
common="task.data_dir=$data outer.rounds=$rounds eval.every_rounds=0 eval.final_episodes=0 runtime.checkpoint_every_rounds=0"

# Median and best of the "seconds" of round records after the warm-up.
summarize() {
  round_seconds "$1" |
    awk '{ t[NR] = $1 } END { m = t[int((NR + 1) / 2)]; printf "%7.1f rounds/s median  %7.1f best  (%d rounds, median %.1f ms)", 1 / m, 1 / t[1], NR, 1000 * m }'
}

run() {
  name=$1
  shift
  "$@" > "$scratch/$name.out" 2> "$scratch/$name.err" || { echo "$name failed:"; tail -5 "$scratch/$name.err"; exit 1; }
  median=$(median_seconds "$scratch/$name")
  [ "$name" != threads ] || threads_median=$median
  printf '%-28s %sx threads  %s  sha256 %.16s\n' "$name" "$(awk "BEGIN { printf \"%5.2f\", $threads_median / $median }")" \
    "$(summarize "$scratch/$name")" "$(sed -n 's/.*parameters sha256 \([0-9a-f]*\).*/\1/p' "$scratch/$name.out")"
}

echo "runtimes bench, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, omniglot_5w1s, $rounds rounds, $workers workers"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for repetition in $(seq "${REPEAT:-1}"); do
  rm -rf "$scratch"/*
  run "threads" "$reptile" train --config "$config" --run_dir "$scratch/threads" --workers "$workers" \
    runtime.local_workers=THREADS $common
  run "processes" "$reptile" train --config "$config" --run_dir "$scratch/processes" \
    --workers "$workers" $common
  run "grpc_processes" "$reptile" train --config "$config" --run_dir "$scratch/grpc_processes" \
    --workers "$workers" runtime.local_workers=GRPC_PROCESSES $common
  run "mpi_1+${workers}_ranks" env OMPI_MCA_btl_vader_single_copy_mechanism=none \
    mpirun --oversubscribe --bind-to none -np $((workers + 1)) \
    "$reptile" mpi --config "$config" --run_dir "$scratch/mpi_1+${workers}_ranks" $common
  run "mpi_tcp_1+${workers}_ranks" mpirun --oversubscribe --bind-to none --mca btl tcp,self \
    --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo -np $((workers + 1)) \
    "$reptile" mpi --config "$config" --run_dir "$scratch/mpi_tcp_1+${workers}_ranks" $common
done
