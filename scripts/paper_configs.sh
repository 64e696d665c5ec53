# Sourced by scripts/reproduce_paper.sh and scripts/paper_table.sh: the
# Reptile paper's Omniglot configs, in the order they are trained, and which
# of them train exactly as another (they differ only in task.eval_shots), so
# that they are that one's model evaluated with their own episodes.
paper_configs=(omniglot_5w1s omniglot_5w5s omniglot_20w1s omniglot_20w5s)
declare -A evaluated_from=([omniglot_20w5s]=omniglot_20w1s)

# The task.eval_shots of config $1.
eval_shots_of() { sed -n 's/^ *eval_shots: *\([0-9]*\).*/\1/p' "configs/$1.textproto"; }
