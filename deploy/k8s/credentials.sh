#!/bin/sh
# Makes the files of the Secret `reptile-credentials` that deploy/k8s mounts:
#
#   deploy/k8s/credentials.sh DIR
#   kubectl create secret generic reptile-credentials --from-file=DIR
#
# DIR/ca.crt   a new self-signed certificate authority (its key is not kept)
# DIR/tls.crt  the coordinator's certificate from that authority, for the
#              names reptile-coordinator (what workers check, through
#              --tls_server_name) and localhost
# DIR/tls.key  its private key
# DIR/token    a random bearer token (64 hex digits)
#
# Refuses to overwrite an existing DIR/tls.key. Needs openssl.
set -eu
if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
if [ -e "$dir/tls.key" ]; then
  echo "$0: $dir/tls.key exists; remove DIR first to make new credentials" >&2
  exit 1
fi
# Every file (the token and the key above all) and DIR itself: owner only.
umask 077
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=reptile CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$work/ca.key" -out "$dir/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=reptile-coordinator" \
  -keyout "$dir/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:reptile-coordinator,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' \
  > "$work/ext"
openssl x509 -req -in "$work/tls.csr" -CA "$dir/ca.crt" -CAkey "$work/ca.key" -set_serial "0x$(openssl rand -hex 8)" \
  -days 825 -extfile "$work/ext" -out "$dir/tls.crt" 2>/dev/null
openssl rand -hex 32 > "$dir/token"
echo "credentials in $dir: ca.crt tls.crt tls.key token"
