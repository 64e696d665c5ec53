#!/bin/sh
# What runtime.mpi_reduction buys on a model large enough for bandwidth to
# matter: the sine MLP widened to HIDDEN units (1-H-H-1, about H^2 weights;
# inner learning rate 0.001, as 0.02 diverges at that width),
# meta-batch of 8 tasks, under mpirun with 1 + RANKS ranks, once with every
# delta gathered to rank 0 (MPI_GATHER_IN_ORDER), once with per-rank exact
# sums combined by MPI_Reduce (MPI_REDUCE_SUM) and once by MPI_Allreduce
# (MPI_ALLREDUCE_SUM, no state broadcast). Prints rounds/s (median and best
# after a warm-up), the bytes rank 0 received and sent per round and each
# run's parameter SHA-256 (the same for all three).
#
#   bench/mpi_reduction_bench.sh [HIDDEN] [RANKS] [ROUNDS]   (defaults: 1024, 3, 60)
set -eu
hidden=${1:-1024}
ranks=${2:-3}
rounds=${3:-60}
warmup=5
here=$(cd "$(dirname "$0")/.." && pwd)
reptile=${REPTILE_BINARY:-$here/build/reptile}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none

field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p"; }

run() {
  mode=$1
  dir=$scratch/$mode
  mpirun --oversubscribe --bind-to none -np $((ranks + 1)) "$reptile" mpi --config "$here/configs/sine.textproto" \
    --run_dir "$dir" model.hidden_units="$hidden" inner.learning_rate=0.001 outer.meta_batch_size=8 outer.rounds="$rounds" \
    eval.every_rounds=0 eval.final_episodes=0 runtime.checkpoint_every_rounds=0 runtime.mpi_reduction="$mode" \
    > "$dir.out" 2> "$dir.err" || { echo "$mode failed:"; tail -5 "$dir.err"; exit 1; }
  rounds_file=$scratch/$mode.rounds
  grep '"kind":"round"' "$dir/metrics.jsonl" | tail -n +$((warmup + 1)) > "$rounds_file"
  rates=$(field seconds < "$rounds_file" | sort -g |
    awk '{ t[NR] = $1 } END { printf "%6.2f rounds/s median %6.2f best", 1 / t[int((NR + 1) / 2)], 1 / t[1] }')
  count=$(wc -l < "$rounds_file")
  per_round() {
    first=$(head -1 "$rounds_file" | field "$1")
    last=$(tail -1 "$rounds_file" | field "$1")
    awk -v a="$first" -v b="$last" -v n="$count" 'BEGIN { printf "%.1f", (b - a) / (n - 1) / 1e6 }'
  }
  printf '%-20s %s  MB per round: %6s in, %6s out  sha256 %.16s\n' "$mode" "$rates" "$(per_round bytes_in)" \
    "$(per_round bytes_out)" \
    "$(sed -n 's/.*parameters sha256 \([0-9a-f]*\).*/\1/p' "$dir.out")"
}

echo "mpi reduction bench, $(date -u +%Y-%m-%d), $(nproc) cores, sine MLP 1-$hidden-$hidden-1," \
  "meta-batch 8, 1+$ranks ranks, $rounds rounds"
run MPI_GATHER_IN_ORDER
run MPI_REDUCE_SUM
run MPI_ALLREDUCE_SUM
