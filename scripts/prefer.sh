#!/usr/bin/env bash
# Phase 3: DPO preference tuning (LoRA, ZeRO-3) of a phase-2 LLaVA-1.5 model on RLAIF-V-style pairs, on every GPU.
# Extra arguments are config overrides, e.g.: bash scripts/prefer.sh prefer.beta=0.2 prefer.loss=ipo
# The synthetic world's phase 3 on CPU: vlm train configs/synthetic_prefer.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_launch.sh
launch_train configs/llava15_prefer.yaml "$@"
