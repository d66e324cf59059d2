#!/usr/bin/env bash
# LLaVA-1.5 phase 1 (projector alignment), ZeRO-2, global batch 256, lr 1e-3, on every GPU of this machine.
# Extra arguments are config overrides, e.g.: bash scripts/pretrain.sh schedule.micro_batch_size=8 checkpoint.output_dir=runs/mine
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_launch.sh
launch_train configs/llava15_pretrain.yaml "$@"
