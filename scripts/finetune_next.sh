#!/usr/bin/env bash
# LLaVA-NeXT (v1.6, anyres) phases 1 and 2: configs/llava_next_{pretrain,finetune}.yaml on every GPU of this machine.
# Extra arguments are config overrides for both phases, e.g.: bash scripts/finetune_next.sh micro_batch_size=2
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_launch.sh
launch_train configs/llava_next_pretrain.yaml "$@"
launch_train configs/llava_next_finetune.yaml "$@"
