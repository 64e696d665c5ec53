#!/usr/bin/env bash
# Prints measured few-shot accuracy of models/* next to the Reptile paper's
# Table (Nichol et al. 2018, Omniglot, transductive and not). A finished run
# reports its final evaluation (eval.final_episodes); an unfinished one is
# evaluated now from its latest checkpoint with EPISODES episodes (default
# 1000) and labelled partial, with the rounds it has done. 20-way 5-shot
# trains exactly as 20-way 1-shot (scripts/reproduce_paper.sh): its row is
# 20-way 1-shot's checkpoint evaluated with 5-shot episodes.
set -euo pipefail
cd "$(dirname "$0")/.."
episodes=${EPISODES:-1000}
declare -A paper=(
  [omniglot_5w1s]="95.39 ± 0.09 | 97.68 ± 0.04"
  [omniglot_5w5s]="98.90 ± 0.10 | 99.48 ± 0.06"
  [omniglot_20w1s]="88.14 ± 0.15 | 89.43 ± 0.14"
  [omniglot_20w5s]="96.65 ± 0.33 | 97.12 ± 0.32"
)
. scripts/paper_configs.sh
# "ROUND (LABEL) | non-transductive | transductive" from `reptile eval` output.
eval_columns() {
  sed -E "s/^round ([0-9]+): accuracy ([0-9.]+)% ± ([0-9.]+) \(transductive\), ([0-9.]+)% ± ([0-9.]+) .*/\1 ($1) | \4 ± \5 | \2 ± \3/"
}
printf '| config | rounds | measured non-transductive | measured transductive | paper non-transductive | paper transductive |\n'
printf '|---|---|---|---|---|---|\n'
for c in "${paper_configs[@]}"; do
  sibling=${evaluated_from[$c]:-}
  if [ -n "$sibling" ]; then
    dir=models/$sibling
    shots=$(eval_shots_of "$c")
    if [ -f "$dir/final_eval_$c.txt" ]; then
      line=$(eval_columns "$sibling's model" < "$dir/final_eval_$c.txt")
    elif [ -f "$dir/checkpoint.bin" ]; then
      line=$(./build/reptile eval --run_dir "$dir" --episodes "$episodes" "task.eval_shots=$shots" |
        eval_columns "partial, $sibling's model")
    else
      line="not started | |"
    fi
    printf '| %s | %s | %s |\n' "$c" "$line" "${paper[$c]}"
    continue
  fi
  dir=models/$c
  [ -f "$dir/checkpoint.bin" ] || { printf '| %s | not started | | | %s |\n' "$c" "${paper[$c]}"; continue; }
  final=$(grep '"kind":"final_eval"' "$dir/metrics.jsonl" | tail -1 || true)
  if [ -n "$final" ]; then
    field() { echo "$final" | sed -E "s/.*\"$1\":([-0-9.e+]+).*/\1/"; }
    pct() { awk -v v="$1" 'BEGIN { printf "%.2f", 100 * v }'; }
    line="$(field round) | $(pct "$(field accuracy_inductive)") ± $(pct "$(field accuracy_inductive_ci95)") | $(pct "$(field accuracy)") ± $(pct "$(field accuracy_ci95)")"
  else
    line=$(./build/reptile eval --run_dir "$dir" --episodes "$episodes" | eval_columns partial)
  fi
  printf '| %s | %s | %s |\n' "$c" "$line" "${paper[$c]}"
done
