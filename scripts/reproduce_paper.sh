#!/usr/bin/env bash
# Trains the Reptile paper's Omniglot configs (all four unless named), one
# after another, into models/<name>/, the way a run of many hours has to go
# on a shared 2-core machine: at the lowest priority (below), on worker
# threads, resumed bitwise from the run directory's checkpoint when started
# again, one metrics line per 100 rounds (so that the directory stays small),
# and committed to git every COMMIT_MINUTES so that the run survives the
# machine. SIGTERM stops it after checkpointing (and commits).
#
#   nohup bash scripts/reproduce_paper.sh [omniglot_5w1s ...] > /tmp/paper.log 2>&1 &
#
# Each commit also records, in models/<name>/recorded_eval.txt, what a short
# evaluation (100 episodes) of the committed checkpoint gives; the trainer is
# paused meanwhile, so that the two match. tests/shipped_models_test checks it.
# scripts/paper_table.sh then prints the measured table beside the paper's.
# A config that trains exactly as another (evaluated_from in paper_configs.sh: it differs
# only in task.eval_shots) is not trained again: once its sibling has
# finished, the sibling's checkpoint is evaluated with its episodes, 10,000
# of them, into models/<sibling>/final_eval_<name>.txt.
# REPTILE names the binary (default build/reptile); point it at a copy so that
# rebuilding the tree does not change the binary under a running job.
set -uo pipefail
cd "$(dirname "$0")/.."
reptile=${REPTILE:-build/reptile}
commit_minutes=${COMMIT_MINUTES:-15}
# Runs a command at the lowest priority, in a session of its own. Under the
# kernel's autogroup scheduling (on in Debian's kernels) nice ranks a process
# only against those of its own session: a nice-19 build still took half the
# cores from a nice-0 training run in another session (measured 2026-12-06:
# 478 -> 250 rounds/min) until the build's session was given nice 19 as well.
lowest=(setsid bash -c 'echo 19 > /proc/self/autogroup 2> /dev/null; exec nice -n 19 "$@"' lowest)

# Commits models/<name> alone (other staged work is left as it is), with the
# recorded evaluation of its checkpoint; retries while another git command
# holds the index.
commit_run() {
  local name=$1 dir=models/$1 round
  if [ -n "$trainer" ]; then kill -STOP "$trainer" 2> /dev/null; fi
  if "${lowest[@]}" "$reptile" eval --run_dir "$dir" --episodes 100 --workers 2 > "$dir/recorded_eval.txt.tmp" 2> /dev/null; then
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

. scripts/paper_configs.sh

# Evaluates the finished sibling's checkpoint with config $1's eval shots.
evaluate_from_sibling() {
  local name=$1 sibling=${evaluated_from[$1]} shots out
  out=models/$sibling/final_eval_$name.txt
  [ -f "$out" ] && return 0
  if ! grep -q '"kind":"final_eval"' "models/$sibling/metrics.jsonl" 2> /dev/null; then
    echo "paper_runs: $name is $sibling's training evaluated with other episodes; train $sibling to its end first" >&2
    return 1
  fi
  shots=$(eval_shots_of "$name")
  "${lowest[@]}" "$reptile" eval --run_dir "models/$sibling" --episodes 10000 "task.eval_shots=$shots" > "$out.tmp" &&
    mv "$out.tmp" "$out" || { rm -f "$out.tmp"; return 1; }
  git add "$out" && git commit -q -m "models/$sibling: evaluated as $name" -- "$out"
}

[ $# -gt 0 ] || set -- "${paper_configs[@]}"
[ -x "$reptile" ] || bash scripts/build.sh
trainer=
trap 'if [ -n "$trainer" ]; then kill -TERM "$trainer"; kill -CONT "$trainer"; fi' TERM INT
for name in "$@"; do
  if [ -n "${evaluated_from[$name]:-}" ]; then
    evaluate_from_sibling "$name" || exit 1
    continue
  fi
  dir=models/$name
  mkdir -p "$dir"
  "${lowest[@]}" "$reptile" train --config "configs/$name.textproto" --run_dir "$dir" \
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
