#!/bin/sh
# An rsh agent for Open MPI that makes network namespaces on this machine look
# like cluster nodes (tests/mpi_test's multi-node test). With
#   mpirun --mca plm_rsh_agent tests/mpi_netns_rsh.sh --hostfile HOSTS ...
# Open MPI calls it as it would call ssh: `AGENT [options] HOST WORD...`, where
# the words are the orted command line, quoted for a remote shell. The agent
# runs them with sh -c inside the namespace that REPTILE_NETNS_HOSTS maps HOST
# to, in a UTS namespace of its own whose hostname is the namespace's name, so
# every "node" has its own hostname (and Open MPI session directory):
#   REPTILE_NETNS_HOSTS="10.78.0.11=nodea 10.78.0.12=nodeb"
# If REPTILE_NETNS_RSH_LOG names a file, each launch adds a line to it.
set -eu
PATH=$PATH:/usr/sbin:/sbin
# ssh-style options before the host (plm_rsh_args); none by default.
while [ $# -gt 0 ]; do
  case $1 in
    -[bcDEeFIiJLlmOopQRSWw])
      [ $# -ge 2 ] || break
      shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
if [ $# -lt 2 ]; then
  echo "usage: $0 [options] HOST COMMAND..." >&2
  exit 255
fi
host=${1#*@}
shift
ns=
for pair in ${REPTILE_NETNS_HOSTS:-}; do
  if [ "${pair%%=*}" = "$host" ]; then ns=${pair#*=}; fi
done
if [ -z "$ns" ]; then
  echo "$0: host $host is not in REPTILE_NETNS_HOSTS (\"${REPTILE_NETNS_HOSTS:-}\")" >&2
  exit 255
fi
if [ -n "${REPTILE_NETNS_RSH_LOG:-}" ]; then echo "$host $ns $*" >>"$REPTILE_NETNS_RSH_LOG"; fi
# "$*" joins the words with spaces, as ssh does before the remote shell parses them.
exec ip netns exec "$ns" unshare --uts sh -c 'hostname "$1" && exec sh -c "$2"' sh "$ns" "$*"
