#!/usr/bin/env bash
# LLaVA-NeXT (v1.6, anyres) phase 2: configs/llava_next_finetune.yaml (LLM, projector and the vision tower at 2e-6),
# ZeRO-3, global batch 128, lr 1e-5, on every GPU of this machine; run scripts/pretrain_next.sh first.
# Extra arguments are config overrides, e.g.: bash scripts/finetune_next.sh schedule.micro_batch_size=2
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_launch.sh
launch_train configs/llava_next_finetune.yaml "$@"
