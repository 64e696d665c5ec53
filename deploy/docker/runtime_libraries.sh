#!/bin/sh
# runtime_libraries.sh: copies the shared libraries BINARY loads (as ldd
# resolves them here) into OUT, at their paths, except those BASE_FILES lists
# (one path a line: what the runtime image already has).
#
#   deploy/docker/runtime_libraries.sh BINARY BASE_FILES OUT
#
# The image's build stage runs it on build/reptile with the file list of the
# runtime base (the pods' tools: Open MPI, OpenSSH, curl), so the runtime
# stage gets LibTorch and the rest as the very files the binary was linked
# against, without the packages' other contents and dependencies. /lib is
# /usr/lib (merged /usr); a library reached through a symbolic link (the BLAS
# alternatives, sonames) is copied as a file under the name ld.so looks for.
# Exit 1 if ldd cannot resolve a library.
set -eu
if [ $# -ne 3 ]; then
  echo "usage: $0 BINARY BASE_FILES OUT" >&2
  exit 2
fi
binary=$1 base=$2 out=$3
libraries=$(ldd "$binary")
if printf '%s\n' "$libraries" | grep -q 'not found'; then
  printf '%s\n' "$libraries" | grep 'not found' >&2
  exit 1
fi
count=0 bytes=0
for library in $(printf '%s\n' "$libraries" | sed -n -E 's#.*=> (/[^ ]+) \(0x[0-9a-f]+\)$#\1#p'); do
  case $library in
    /lib/* | /lib64/*) path=/usr$library ;;
    *) path=$library ;;
  esac
  if grep -qxF "$path" "$base"; then continue; fi
  mkdir -p "$out$(dirname "$path")"
  cp -L "$library" "$out$path"
  count=$((count + 1))
  bytes=$((bytes + $(stat -c %s "$out$path")))
done
echo "runtime_libraries: $count libraries, $((bytes / 1048576)) MiB, into $out"
