#!/bin/sh
# Launches an MPI training run: rank 0 runs the round engine, the other ranks
# work. Relaunching the same command resumes from the run's last checkpoint.
#
#   deploy/mpi/launch.sh HOSTFILE RANKS CONFIG RUN_DIR [field.path=value ...]
#   deploy/mpi/launch.sh deploy/mpi/hostfile.example 6 configs/omniglot_5w1s.textproto runs/o5w1s
set -eu
if [ $# -lt 4 ]; then
  echo "usage: $0 HOSTFILE RANKS CONFIG RUN_DIR [field.path=value ...]" >&2
  exit 2
fi
hostfile=$1 ranks=$2 config=$3 run_dir=$4
shift 4
here=$(cd "$(dirname "$0")/../.." && pwd)
reptile=${REPTILE_BINARY:-$here/build/reptile}
# --bind-to none: each rank runs LibTorch with one intra-op thread of its own;
# binding would pin ranks of a node to the same core on some systems.
exec mpirun --hostfile "$hostfile" -np "$ranks" --bind-to none \
  "$reptile" mpi --config "$config" --run_dir "$run_dir" "$@"
