#!/usr/bin/env bash
# Installs what the tasks need beyond Rust, Node and Python, only where it is missing.
# Idempotent: a second run installs nothing.
set -euo pipefail

say() { printf 'install-deps: %s\n' "$*"; }

if ! command -v task >/dev/null 2>&1; then
  say "installing the task runner (PyPI go-task-bin)"
  python3 -m pip install --quiet --disable-pip-version-check go-task-bin
fi
