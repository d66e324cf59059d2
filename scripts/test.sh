#!/usr/bin/env bash
# Sets up the environment if needed, then runs the whole test suite (slow end-to-end tests included) and lists the
# 20 slowest tests. Arguments go to pytest:
#   bash scripts/test.sh                                    # everything, as CI runs it
#   bash scripts/test.sh -m "not slow and not distributed"  # the fast lane: no end-to-end run, no torchrun
#   bash scripts/test.sh tests/train -k resume              # one folder, selected tests
# Each test fails after 900 s (pyproject.toml, pytest-timeout); `--timeout N` changes it for a run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/python -m pytest -q --durations=20 "$@"
