#!/usr/bin/env bash
# LLaVA-NeXT (v1.6, anyres) phase 1: configs/llava_next_pretrain.yaml (projector + image_newline), ZeRO-2, global
# batch 256, lr 1e-3, on every GPU of this machine. Extra arguments are config overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_launch.sh
launch_train configs/llava_next_pretrain.yaml "$@"
