# Sourced by the benchmark scripts that train Omniglot 5-way 1-shot with the
# reptile binary and read their round times back from metrics.jsonl: where
# the binary, config and data are, a scratch folder removed at exit, and the
# round times after the first $warmup rounds (the caller sets warmup).
here=$(cd "$(dirname "$0")/.." && pwd)
reptile=${REPTILE_BINARY:-$here/build/reptile}
config=$here/configs/omniglot_5w1s.textproto
data=${REPTILE_OMNIGLOT_DIR:-$here/../shared/data/omniglot}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# The "seconds" of run directory $1's round records after the warm-up, sorted.
round_seconds() {
  grep '"kind":"round"' "$1/metrics.jsonl" | sed 's/.*"seconds":\([0-9.e+-]*\).*/\1/' |
    tail -n +$((warmup + 1)) | sort -g
}

median_seconds() {
  round_seconds "$1" | awk '{ t[NR] = $1 } END { printf "%.9f", t[int((NR + 1) / 2)] }'
}
