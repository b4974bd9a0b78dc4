#!/usr/bin/env bash
# Installs Debian's redis-server when it is missing (the Redis session-store tests need it).
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# The package starts a system-wide server on 6379; the tests start their own on free ports.
(command -v service >/dev/null && $SUDO service redis-server stop) >/dev/null 2>&1 || true
redis-server --version
