#!/bin/sh
# Where the threads of a training run spend their CPU and how often they are
# switched out, per round: threads in one process against worker processes
# on shared memory (`reptile train --workers N`, the default) and over gRPC
# (runtime.local_workers=GRPC_PROCESSES). Reads each thread's
# voluntary and involuntary context switches and CPU time from /proc at
# round WARMUP and again ROUNDS rounds later, and prints them per round,
# summed by process (coordinator, workers) and thread name, with the median
# round time of the window. Threads that start and end inside the window are
# not seen (gRPC keeps its threads; none did in the runs README quotes).
#
#   bench/thread_census.sh [ROUNDS] [WORKERS]     (defaults: 300 rounds, 2 workers)
set -eu
export LC_ALL=C
rounds=${1:-300}
workers=${2:-2}
warmup=100
. "$(dirname "$0")/omniglot_runs.sh"
common="task.data_dir=$data outer.rounds=$((warmup + rounds + 50)) eval.every_rounds=0 eval.final_episodes=0 runtime.checkpoint_every_rounds=0"

rounds_done() { grep -c '"kind":"round"' "$1/metrics.jsonl" 2>/dev/null || true; }

# One line per thread of process $1 and its children: role/tid name voluntary involuntary cpu_ticks.
snapshot() {
  for pid in "$1" $(pgrep -P "$1"); do
    role=worker
    [ "$pid" = "$1" ] && role=coordinator
    for task in /proc/"$pid"/task/*; do
      name=$(tr ' ' _ < "$task/comm" 2> /dev/null) || continue
      switches=$(awk '/^voluntary_ctxt/ { v = $2 } /^nonvoluntary_ctxt/ { n = $2 } END { print v, n }' "$task/status" 2> /dev/null) || continue
      ticks=$(awk '{ print $14 + $15 }' "$task/stat" 2> /dev/null) || continue
      echo "$role/${task##*/} $name $switches $ticks"
    done
  done | sort
}

census() {
  name=$1
  shift
  "$@" --run_dir "$scratch/$name" > "$scratch/$name.out" 2>&1 &
  pid=$!
  until [ "$(rounds_done "$scratch/$name")" -ge $warmup ] 2> /dev/null; do sleep 0.05; done
  first=$(rounds_done "$scratch/$name")
  snapshot $pid > "$scratch/before"
  until [ "$(rounds_done "$scratch/$name")" -ge $((warmup + rounds)) ] 2> /dev/null; do sleep 0.05; done
  last=$(rounds_done "$scratch/$name")
  snapshot $pid > "$scratch/after"
  wait $pid || { echo "$name failed:"; tail -5 "$scratch/$name.out"; exit 1; }
  window=$((last - first))
  median_ms=$(grep '"kind":"round"' "$scratch/$name/metrics.jsonl" | sed -n "$((first + 1)),${last}p" |
    sed 's/.*"seconds":\([0-9.e+-]*\).*/\1/' | sort -g | awk '{ t[NR] = $1 } END { printf "%.1f", 1000 * t[int((NR + 1) / 2)] }')
  echo "$name: $window rounds, median round $median_ms ms, sha256 $(sed -n 's/.*parameters sha256 \([0-9a-f]\{16\}\).*/\1/p' "$scratch/$name.out")"
  join "$scratch/before" "$scratch/after" | awk -v n=$window -v hz="$(getconf CLK_TCK)" '
    { split($1, key, "/"); k = key[1] " " $2; vol[k] += $7 - $3; invol[k] += $8 - $4; cpu[k] += $9 - $5 }
    END {
      for (k in vol) if (vol[k] + invol[k] + cpu[k] > 0) {
        printf "  %-34s %7.1f voluntary %7.1f involuntary switches  %6.2f ms CPU  per round\n", k, vol[k] / n, invol[k] / n, 1000 * cpu[k] / hz / n
        tv += vol[k]; ti += invol[k]; tc += cpu[k]
      }
      printf "  %-34s %7.1f voluntary %7.1f involuntary switches  %6.2f ms CPU  per round\n", "all", tv / n, ti / n, 1000 * tc / hz / n
    }' | sort
}

echo "thread census, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, omniglot_5w1s, rounds $warmup-$((warmup + rounds)), $workers workers"
census threads "$reptile" train --config "$config" --workers "$workers" runtime.local_workers=THREADS $common
census processes "$reptile" train --config "$config" --workers "$workers" $common
census grpc_processes "$reptile" train --config "$config" --workers "$workers" \
  runtime.local_workers=GRPC_PROCESSES $common
