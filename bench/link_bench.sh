#!/bin/sh
# Rounds/s of the same Omniglot 5-way 1-shot training over links of different
# speeds: `reptile coordinator` in one network namespace, WORKERS `reptile
# worker` processes in another, joined by one veth pair shaped on both ends
# with `tc qdisc ... tbf` (both directions: results up, state down). Each
# case is a fresh run of ROUNDS rounds; the first WARMUP rounds (the workers
# loading the dataset, joining, gRPC warming up) are skipped. For each run it
# prints the median and best round time, the bytes the coordinator received
# and sent per round (metrics.jsonl bytes_in/bytes_out, over the measured
# rounds), how long those bytes take at the link's rate, the packets the
# shaper dropped and the parameters' SHA-256; then, per case, the medians
# over the repetitions of its rate and of its ratio to the same repetition's
# unlimited run. All SHA-256s must be equal (exit 1 otherwise).
#
#   bench/link_bench.sh [ROUNDS] [WORKERS]      (defaults: 300 rounds, 2 workers)
#
# Environment: REPEAT (default 3: every case is run that many times,
# interleaved, since this machine's speed drifts), LINKS (default
# "unlimited 10gbit 2500mbit 1gbit"), EXTRA, "TASKS_PER_ITEM@LINK" cases run
# after those (default "5@unlimited 5@1gbit": runtime.tasks_per_item=5, one
# exact sum per worker item), LINK_BENCH_TLS=1 to serve TLS (a fresh
# self-signed certificate) instead of plain text with --insecure_listen (a
# token is required either way), LAYOUTS (default "processes": WORKERS
# `reptile worker` processes; "node": one `reptile worker --learners WORKERS`
# process, one state fetch and one exact-sum upload per reply for all of
# them; "processes node" runs every case in both, interleaved), CONFIG
# (default configs/omniglot_5w1s.textproto) and OVERRIDES (default
# task.data_dir=REPTILE_OMNIGLOT_DIR; the 10M-parameter model of
# docs/performance.md is CONFIG=configs/sine.textproto
# OVERRIDES="model.hidden_units=3160 outer.meta_batch_size=2
# inner.learning_rate=0.0004", a rate at which the wide MLP does not
# diverge), WARMUP (default 50 rounds),
# REPTILE_BINARY, REPTILE_OMNIGLOT_DIR.
#
# Needs root and iproute2 (`ip netns`, `tc`); skips with a message (exit 0)
# without them. Every namespace, link and process it makes is removed on exit.
set -eu
rounds=${1:-300}
workers=${2:-2}
warmup=${WARMUP:-50}
repeat=${REPEAT:-3}
links=${LINKS:-unlimited 10gbit 2500mbit 1gbit}
extra=${EXTRA-5@unlimited 5@1gbit}
layouts=${LAYOUTS:-processes}
for layout in $layouts; do
  case $layout in processes|node) ;; *) echo "link bench: LAYOUTS: unknown layout $layout" >&2; exit 2 ;; esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
reptile=${REPTILE_BINARY:-$here/build/reptile}
config=${CONFIG:-$here/configs/omniglot_5w1s.textproto}
data=$(cd "${REPTILE_OMNIGLOT_DIR:-$here/../shared/data/omniglot}" && pwd)
overrides=${OVERRIDES-task.data_dir=$data}

PATH=$PATH:/usr/sbin:/sbin
if [ "$(id -u)" -ne 0 ]; then
  echo "link bench: skipped: needs root for network namespaces (running as uid $(id -u))"
  exit 0
fi
if ! command -v ip > /dev/null || ! command -v tc > /dev/null || ! ip netns list > /dev/null 2>&1; then
  echo "link bench: skipped: \`ip netns\` or \`tc\` (iproute2) is unavailable"
  exit 0
fi
[ "$rounds" -gt $((warmup + 10)) ] || { echo "link bench: ROUNDS must be more than $((warmup + 10))" >&2; exit 2; }

# Namespaces and addresses of this run (its pid keeps parallel runs apart).
cns=rlb$$c
wns=rlb$$w
caddr=10.79.0.1
waddr=10.79.0.2
scratch=$(mktemp -d)
pids=""
cleanup() {
  for pid in $pids; do kill -KILL "$pid" 2> /dev/null || true; done
  for ns in $cns $wns; do
    for pid in $(ip netns pids "$ns" 2> /dev/null); do kill -KILL "$pid" 2> /dev/null || true; done
    ip netns del "$ns" 2> /dev/null || true
  done
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Namespaces left by a run that was SIGKILLed (its pid gone) are removed.
for ns in $(ip netns list | sed -n 's/^\(rlb[0-9]*[cw]\)\b.*/\1/p'); do
  owner=${ns#rlb}
  owner=${owner%?}
  kill -0 "$owner" 2> /dev/null && continue
  for pid in $(ip netns pids "$ns" 2> /dev/null); do kill -KILL "$pid" 2> /dev/null || true; done
  ip netns del "$ns" 2> /dev/null || true
done
ip netns add "$cns"
ip netns add "$wns"
ip -n "$cns" link set lo up
ip -n "$wns" link set lo up
ip -n "$cns" link add lbc type veth peer name lbw netns "$wns"
ip -n "$cns" addr add $caddr/30 dev lbc
ip -n "$wns" addr add $waddr/30 dev lbw
ip -n "$cns" link set lbc up
ip -n "$wns" link set lbw up

# The token every RPC carries, its file its owner's only.
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$scratch/token")
security="--insecure_listen"
worker_security=""
mode="plain text (--insecure_listen) + token"
if [ "${LINK_BENCH_TLS:-0}" = 1 ]; then
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=link-bench -addext "subjectAltName=IP:$caddr" \
    -keyout "$scratch/server.key" -out "$scratch/server.pem" 2> "$scratch/openssl.err") ||
    { cat "$scratch/openssl.err" >&2; exit 1; }
  security="--tls_cert $scratch/server.pem --tls_key $scratch/server.key"
  worker_security="--tls_ca $scratch/server.pem"
  mode="TLS (self-signed P-256 certificate) + token"
fi

# Shapes both ends of the link to $1 (a tc rate such as 1gbit), or removes
# the shaping for "unlimited". The bucket holds 1 ms at the rate (at least
# 64 KiB, so veth's 64 KiB GSO packets pass whole); packets wait at most
# 20 ms in the queue.
shape() {
  for end in "$cns lbc" "$wns lbw"; do
    set -- "$1" $end
    if [ "$1" = unlimited ]; then
      tc -n "$2" qdisc del dev "$3" root 2> /dev/null || true
    else
      bits=$(rate_bits "$1")
      burst=$((bits / 8 / 1000))
      [ $burst -ge 65536 ] || burst=65536
      tc -n "$2" qdisc del dev "$3" root 2> /dev/null || true  # fresh counters
      tc -n "$2" qdisc add dev "$3" root tbf rate "$1" burst "$burst" latency 20ms
    fi
  done
}

# Packets the tbf queues dropped, both ends together ("-" without them).
drops() {
  [ "$1" != unlimited ] || { echo -; return; }
  { tc -s -n "$cns" qdisc show dev lbc; tc -s -n "$wns" qdisc show dev lbw; } |
    sed -n 's/.*dropped \([0-9]*\).*/\1/p' | awk '{ n += $1 } END { print n + 0 }'
}

# A tc rate ("1gbit", "2500mbit", "10gbit") in bits/s.
rate_bits() {
  echo "$1" | awk '{ n = $0 + 0; u = $0; sub(/^[0-9.]+/, "", u)
    m = (u == "gbit") ? 1e9 : (u == "mbit") ? 1e6 : (u == "kbit") ? 1e3 : (u == "bit") ? 1 : -1
    if (m < 0) { print "unknown rate " $0 > "/dev/stderr"; exit 1 }
    printf "%.0f\n", n * m }'
}

# Round lines after the warm-up: "seconds bytes_in bytes_out" each.
round_lines() {
  grep '"kind":"round"' "$1/metrics.jsonl" |
    sed 's/.*"seconds":\([0-9.e+-]*\).*"bytes_in":\([0-9]*\),"bytes_out":\([0-9]*\).*/\1 \2 \3/' |
    tail -n +"$warmup"
}

# One run over link $1 with tasks_per_item $2 (repetition $3) in layout $4;
# prints its row and appends "rep layout tpi link rate MB_in MB_out bits sha"
# to $scratch/results.
run() {
  link=$1
  tpi=$2
  rep=$3
  layout=$4
  name="$layout $tpi@$link"
  dir=$scratch/run_${rep}_${layout}_${tpi}_$link
  rm -f "$scratch/port"
  shape "$link"
  ip netns exec "$cns" "$reptile" coordinator --config "$config" --run_dir "$dir" \
    --listen $caddr:0 --port_file "$scratch/port" --token_file "$scratch/token" $security \
    $overrides outer.rounds="$rounds" eval.every_rounds=0 eval.final_episodes=0 \
    runtime.checkpoint_every_rounds=0 runtime.tasks_per_item="$tpi" \
    > "$dir.out" 2> "$dir.err" &
  coordinator=$!
  pids="$pids $coordinator"
  waited=0
  until [ -s "$scratch/port" ]; do
    kill -0 $coordinator 2> /dev/null || { echo "$name: the coordinator exited:"; tail -5 "$dir.err"; exit 1; }
    [ $waited -lt 600 ] || { echo "$name: no port file after 60 s"; exit 1; }
    sleep 0.1
    waited=$((waited + 1))
  done
  port=$(cat "$scratch/port")
  worker_pids=""
  processes=$workers
  learners=1
  if [ "$layout" = node ]; then processes=1; learners=$workers; fi
  k=1
  while [ $k -le "$processes" ]; do
    ip netns exec "$wns" "$reptile" worker --coordinator $caddr:"$port" --token_file "$scratch/token" \
      --learners $learners $worker_security > "$dir.worker$k.out" 2> "$dir.worker$k.err" &
    worker_pids="$worker_pids $!"
    k=$((k + 1))
  done
  pids="$pids $worker_pids"
  wait $coordinator || { echo "$name: the coordinator failed:"; tail -5 "$dir.err"; exit 1; }
  for pid in $worker_pids; do wait "$pid" || echo "$name: a worker exited with $?"; done
  pids=""
  bits=unlimited
  [ "$link" = unlimited ] || bits=$(rate_bits "$link")
  dropped=$(drops "$link")
  sha=$(sed -n 's/.*parameters sha256 \([0-9a-f]*\).*/\1/p' "$dir.out")
  # The first line (the last warm-up round) gives the byte counters' start.
  round_lines "$dir" | awk -v name="$name" -v rep="$rep" -v layout="$layout" -v tpi="$tpi" -v link="$link" -v bits="$bits" \
    -v sha="$sha" -v dropped="$dropped" -v results="$scratch/results" '
    NR == 1 { in0 = $2; out0 = $3; next }
    { t[NR - 1] = $1; in1 = $2; out1 = $3 }
    END {
      n = NR - 1
      # sort the round times (insertion sort: a few hundred values)
      for (i = 2; i <= n; ++i) { v = t[i]; for (j = i - 1; j >= 1 && t[j] > v; --j) t[j + 1] = t[j]; t[j + 1] = v }
      m = t[int((n + 1) / 2)]
      rin = (in1 - in0) / n; rout = (out1 - out0) / n
      wire = (bits == "unlimited") ? "-" : sprintf("%.1f/%.1f", 1000 * rin * 8 / bits, 1000 * rout * 8 / bits)
      printf "%3d %-22s %6.1f %6.1f %6.1f %7.2f %7.2f %12s %6s  %.16s\n", rep, name, 1 / m, 1 / t[1], 1000 * m,
        rin / 1e6, rout / 1e6, wire, dropped, sha
      printf "%d %s %d %s %.4f %.4f %.4f %s %s\n", rep, layout, tpi, link, 1 / m, rin / 1e6, rout / 1e6, bits, sha >> results
    }'
}

# Cases: "LAYOUT/TASKS_PER_ITEM@LINK".
cases=""
for layout in $layouts; do
  for link in $links; do cases="$cases $layout/1@$link"; done
  for case in $extra; do cases="$cases $layout/$case"; done
done

echo "link bench, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)," \
  "$(basename "$config" .textproto) $overrides, $rounds rounds ($warmup warm-up), $workers workers" \
  "(layouts: $layouts; node = one process, --learners $workers), $repeat repetitions, $mode"
echo "tbf on both ends of one veth pair: burst 1 ms at the rate (>= 64 KiB), latency 20 ms"
echo "each run: median and best rounds/s, median ms per round, MB in/out per round at the coordinator,"
echo "those bytes' time at the link's rate (ms in/out), packets the tbf queues dropped, parameters' SHA-256"
printf "%3s %-22s %6s %6s %6s %7s %7s %12s %6s  %s\n" "rep" "layout tpi@link" "r/s" "best" "ms" "MB in" "MB out" \
  "wire ms i/o" "drops" "sha256"
: > "$scratch/results"
rep=1
while [ $rep -le "$repeat" ]; do
  for case in $cases; do
    spec=${case#*/}
    run "${spec#*@}" "${spec%@*}" $rep "${case%%/*}"
  done
  rep=$((rep + 1))
done

# Per case: the median over repetitions of the rate, and of its ratio to
# the same repetition's unlimited run in the same layout with the same
# tasks_per_item, and to that with one task per item.
echo
echo "summary (medians over $repeat repetitions; ratios against the same repetition's unlimited runs):"
awk '
  function median(list,   a, n, i, j, v) {
    n = split(list, a, " ")
    for (i = 2; i <= n; ++i) { v = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > v; --j) a[j + 1] = a[j]; a[j + 1] = v }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { rep[NR] = $1; layout[NR] = $2; tpi[NR] = $3; link[NR] = $4; rate[NR] = $5; rin[NR] = $6; rout[NR] = $7
    bits[NR] = $8
    if ($4 == "unlimited") base[$1 "/" $2 "/" $3] = $5
    c = $2 " " $3 "@" $4
    if (!(c in seen)) { seen[c] = 1; order[++cases] = c }
    key[NR] = c; shas[$9] = 1 }
  END {
    printf "%-22s %6s %13s %8s %8s %7s %7s %12s\n", "layout tpi@link", "r/s", "(min-max)", "ratio", "vs tpi=1", "MB in", "MB out", "wire ms i/o"
    for (k = 1; k <= cases; ++k) {
      c = order[k]; rates = ""; ratios = ""; ratios1 = ""; lo = 1e9; hi = 0
      for (i = 1; i <= NR; ++i) {
        if (key[i] != c) continue
        rates = rates " " rate[i]; lo = (rate[i] < lo) ? rate[i] : lo; hi = (rate[i] > hi) ? rate[i] : hi
        if ((rep[i] "/" layout[i] "/" tpi[i]) in base) ratios = ratios " " rate[i] / base[rep[i] "/" layout[i] "/" tpi[i]]
        if ((rep[i] "/" layout[i] "/1") in base) ratios1 = ratios1 " " rate[i] / base[rep[i] "/" layout[i] "/1"]
        mi = rin[i]; mo = rout[i]; b = bits[i]
      }
      wire = (b == "unlimited") ? "-" : sprintf("%.1f/%.1f", 1000 * mi * 1e6 * 8 / b, 1000 * mo * 1e6 * 8 / b)
      printf "%-22s %6.1f %13s %8s %8s %7.2f %7.2f %12s\n", c, median(rates), sprintf("(%.1f-%.1f)", lo, hi),
        ratios == "" ? "-" : sprintf("%.2f", median(ratios)), ratios1 == "" ? "-" : sprintf("%.2f", median(ratios1)),
        mi, mo, wire
    }
    n = 0; for (s in shas) { ++n; one = s }
    if (n == 1) printf "parameters: the same SHA-256 in all %d runs: %s\n", NR, one
    else { printf "parameters DIFFER between runs: %d SHA-256s\n", n; exit 1 }
  }' "$scratch/results"
