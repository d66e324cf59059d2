#!/usr/bin/env bash
# LLaVA-1.5 phase 2 (full LLM instruction tuning), ZeRO-3, global batch 128, lr 2e-5, on every GPU of this machine.
# Extra arguments are config overrides, e.g.: bash scripts/finetune.sh schedule.micro_batch_size=8 checkpoint.output_dir=runs/mine
# FSDP2 instead of ZeRO-3: bash scripts/finetune.sh strategy=fsdp (or configs/llava15_finetune_fsdp.yaml itself)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_launch.sh
launch_train configs/llava15_finetune.yaml "$@"
