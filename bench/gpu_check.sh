#!/usr/bin/env bash
# The GPU acceptance matrix (bench/gpu_check.py): one JSON line per step on stdout and in OUT/results.jsonl, logs in
# OUT/logs. On one GPU under 9 minutes (--budget 540 s); without CUDA a CPU rehearsal that refuses GPU-only steps.
# Usage: bash bench/gpu_check.sh [--out DIR] [--steps a,b] [--budget SECONDS]; PY picks the interpreter (default:
# the project's .venv when there is one, else python3). Exit status 1 when a step failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PY:-}" ]]; then
    PY=python3
    [[ -x .venv/bin/python ]] && PY=.venv/bin/python
fi
exec "$PY" bench/gpu_check.py "$@"
