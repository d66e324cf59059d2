#!/usr/bin/env bash
# Creates .venv with the pinned stack (requirements-lock.txt) and installs this project into it.
# Idempotent: re-running with an unchanged lock file does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.lock-installed"
want="$(sha256sum requirements-lock.txt requirements-lmms.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating $VENV and installing the pinned stack (first run: a few minutes)"
[ -d "$VENV" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements-lock.txt
# lmms-eval (the `lmms` extra) without its ~80 declared dependencies: see requirements-lmms.txt
"$VENV/bin/python" -m pip install -q --no-deps -r requirements-lmms.txt
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "[setup] done"
