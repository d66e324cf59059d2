#!/usr/bin/env bash
# The main job on a fresh machine: set-up if needed, then the synthetic two-phase recipe, benchmarks and chat.
# Re-running reuses finished stages; `bash scripts/demo.sh --fresh` redoes everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/vlm demo "$@"
