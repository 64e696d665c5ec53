#!/usr/bin/env bash
# Makes the image debian:bookworm that deploy/docker/Dockerfile starts from,
# on a machine that can reach a Debian mirror but no container registry:
#
#   deploy/docker/base_image.sh [IMAGE]     # default debian:bookworm
#
# Does nothing if IMAGE exists. Otherwise debootstraps a minimal bookworm
# (variant minbase) from the mirror of this machine's apt sources (or
# $DEBIAN_MIRROR), gives it this machine's Debian sources (so the image
# installs the same package versions the host builds with), and imports it
# with `docker import`. Needs root, debootstrap and a running Docker engine;
# takes 2-3 minutes. With a registry at hand, `docker pull debian:bookworm`
# does the same job.
set -euo pipefail
image=${1:-debian:bookworm}
if docker image inspect "$image" > /dev/null 2>&1; then
  echo "base_image: $image exists"
  exit 0
fi
# The first Debian archive URI of the apt sources (deb822 or one-line style).
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2> /dev/null | sed -n -E 's#^URIs:[[:space:]]*([^[:space:]]*/debian)/?$#\1#p' | head -n 1)
fi
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2> /dev/null \
    | sed -n -E 's#^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]*/debian)/?[[:space:]]+bookworm[[:space:]].*#\2#p' | head -n 1)
fi
mirror=${mirror:-http://deb.debian.org/debian}
rootfs=$(mktemp -d /tmp/reptile-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "base_image: debootstrap --variant=minbase bookworm from $mirror (log in $rootfs.log)"
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$rootfs.log" 2>&1 || { tail -20 "$rootfs.log"; exit 1; }
# This machine's Debian sources (bookworm, -updates, -security) when it has
# the standard deb822 file; else debootstrap's one line stays.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/debian.sources"
  rm -f "$rootfs/etc/apt/sources.list"
fi
# No package files or lists in the image (every Dockerfile RUN fetches its own).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
rm -f "$rootfs.log"
tar -C "$rootfs" -c . | docker import - "$image" > /dev/null
echo "base_image: made $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
