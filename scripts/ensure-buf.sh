#!/usr/bin/env bash
# Installs the pinned buf (npm package @bufbuild/buf, which carries the release binary) into
# .tools/ of this checkout when it is missing or another version; prints the path of the binary.
# `make lint` runs it to lint proto/ (buf.yaml: STANDARD).
set -euo pipefail
BUF_VERSION=1.75.0
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="$ROOT/.tools/buf"
BUF="$PREFIX/node_modules/.bin/buf"
if [ "$("$BUF" --version 2>/dev/null || true)" != "$BUF_VERSION" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "buf needs npm (Node.js) to install: apt-get install npm, or put buf $BUF_VERSION on" \
      "PATH and run 'buf lint proto'" >&2
    exit 1
  fi
  mkdir -p "$PREFIX"
  npm install --prefix "$PREFIX" --no-save --no-audit --no-fund --silent \
    "@bufbuild/buf@$BUF_VERSION" >&2
fi
echo "$BUF"
