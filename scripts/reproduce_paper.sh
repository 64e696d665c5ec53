#!/usr/bin/env bash
# Trains the Reptile paper's Omniglot configs (all four unless named), one
# after another, into models/<name>/,
# the way a run of many hours has to go on a shared 2-core machine: niced, on
# worker threads, resumed bitwise from the run directory's checkpoint when
# started again, one metrics line per 100 rounds (so that the directory stays
# small), and committed to git every COMMIT_MINUTES so that the run survives
# the machine. SIGTERM stops it after checkpointing (and commits).
#
#   nohup bash scripts/reproduce_paper.sh [omniglot_5w1s ...] > /tmp/paper.log 2>&1 &
#
# Each commit also records, in models/<name>/recorded_eval.txt, what a short
# evaluation (100 episodes) of the committed checkpoint gives; the trainer is
# paused meanwhile, so that the two match. tests/shipped_models_test checks it.
# scripts/paper_table.sh then prints the measured table beside the paper's.
# REPTILE names the binary (default build/reptile); point it at a copy so that
# rebuilding the tree does not change the binary under a running job.
set -uo pipefail
cd "$(dirname "$0")/.."
reptile=${REPTILE:-build/reptile}
commit_minutes=${COMMIT_MINUTES:-15}

# Commits models/<name> alone (other staged work is left as it is), with the
# recorded evaluation of its checkpoint; retries while another git command
# holds the index.
commit_run() {
  local name=$1 dir=models/$1 round
  if [ -n "$trainer" ]; then kill -STOP "$trainer" 2> /dev/null; fi
  if "$reptile" eval --run_dir "$dir" --episodes 100 --workers 2 > "$dir/recorded_eval.txt.tmp" 2> /dev/null; then
    mv "$dir/recorded_eval.txt.tmp" "$dir/recorded_eval.txt"
  else
    rm -f "$dir/recorded_eval.txt.tmp"
  fi
  round=$(grep -o '"round":[0-9]*' "$dir/metrics.jsonl" 2> /dev/null | tail -1 | cut -d: -f2)
  for _ in 1 2 3 4 5 6; do
    git add "$dir" 2> /dev/null &&
      { git diff --cached --quiet -- "$dir" || git commit -q -m "models/$name: round ${round:-0}" -- "$dir"; } &&
      return 0
    sleep 5
  done
  echo "paper_runs: could not commit $dir" >&2
}
resume_trainer() { if [ -n "$trainer" ]; then kill -CONT "$trainer" 2> /dev/null; fi; }

[ $# -gt 0 ] || set -- omniglot_5w1s omniglot_5w5s omniglot_20w1s omniglot_20w5s
[ -x "$reptile" ] || bash scripts/build.sh
trainer=
trap 'if [ -n "$trainer" ]; then kill -TERM "$trainer"; kill -CONT "$trainer"; fi' TERM INT
for name in "$@"; do
  dir=models/$name
  mkdir -p "$dir"
  nice -n 19 "$reptile" train --config "configs/$name.textproto" --run_dir "$dir" \
    runtime.local_workers=THREADS runtime.metrics_every_rounds=100 >> "$dir/train.log" 2>&1 &
  trainer=$!
  while kill -0 "$trainer" 2> /dev/null; do
    for _ in $(seq $((commit_minutes * 6))); do
      kill -0 "$trainer" 2> /dev/null || break
      sleep 10
    done
    commit_run "$name"
    resume_trainer
  done
  wait "$trainer"
  status=$?
  trainer=
  commit_run "$name"
  grep -q '"kind":"final_eval"' "$dir/metrics.jsonl" 2> /dev/null || exit "$status"
done
