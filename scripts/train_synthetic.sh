#!/usr/bin/env bash
# The synthetic world on CPU: build it (if missing), then phase 1 and phase 2 on the shipped backbones.
# Extra arguments are overrides applied to both phases, e.g.: bash scripts/train_synthetic.sh schedule.max_steps=50
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
WORLD=runs/synthetic/world
VLM=${VLM:-.venv/bin/vlm}
[[ -f "$WORLD/align.json" ]] || "$VLM" synth --out "$WORLD"
"$VLM" train configs/synthetic_align.yaml "$@"
"$VLM" train configs/synthetic_instruct.yaml "$@"
