#!/bin/sh
# Launches an MPI training run: rank 0 runs the round engine, the other ranks
# work. Relaunching the same command resumes from the run's last checkpoint.
#
#   deploy/mpi/launch.sh HOSTFILE RANKS CONFIG RUN_DIR [field.path=value ...]
#   deploy/mpi/launch.sh deploy/mpi/hostfile.example 6 configs/omniglot_5w1s.textproto runs/o5w1s
#
# REPTILE_MPI_IF names the network the nodes share, as an interface name
# (eth0, ib0) or a subnet (10.0.0.0/24); MPI traffic and Open MPI's own then
# use it alone:
#   REPTILE_MPI_IF=10.0.0.0/24 deploy/mpi/launch.sh hosts 6 configs/omniglot_5w1s.textproto runs/o5w1s
# Without it Open MPI tries every interface that is up, and one the ranks
# cannot reach each other on (docker0, virbr0, a VPN) stalls the job until
# rank 0's deadline (runtime.mpi_connect_timeout_seconds, 60 s), when rank 0
# names the ranks it has not heard from and ends the job.
# OMPI_MCA_btl_tcp_if_include and OMPI_MCA_oob_tcp_if_include in the
# environment work too (mpirun passes them on), or exclude the bad interface
# instead, keeping lo in the list: OMPI_MCA_btl_tcp_if_exclude=lo,docker0.
set -eu
if [ $# -lt 4 ]; then
  echo "usage: $0 HOSTFILE RANKS CONFIG RUN_DIR [field.path=value ...]" >&2
  exit 2
fi
hostfile=$1 ranks=$2 config=$3 run_dir=$4
shift 4
here=$(cd "$(dirname "$0")/../.." && pwd)
reptile=${REPTILE_BINARY:-$here/build/reptile}
set -- "$reptile" mpi --config "$config" --run_dir "$run_dir" "$@"
if [ -n "${REPTILE_MPI_IF:-}" ]; then
  set -- --mca btl_tcp_if_include "$REPTILE_MPI_IF" --mca oob_tcp_if_include "$REPTILE_MPI_IF" "$@"
fi
# --bind-to none: each rank runs LibTorch with one intra-op thread of its own;
# binding would pin ranks of a node to the same core on some systems.
exec mpirun --hostfile "$hostfile" -np "$ranks" --bind-to none "$@"
