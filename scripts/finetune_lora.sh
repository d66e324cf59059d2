#!/usr/bin/env bash
# LLaVA-1.5 phase 2 with LoRA r128/alpha256 (lr 2e-4, projector 2e-5), ZeRO-3, on every GPU of this machine.
# Extra arguments are config overrides, e.g.: bash scripts/finetune_lora.sh schedule.micro_batch_size=8 checkpoint.output_dir=runs/mine
# QLoRA (4-bit base, bitsandbytes) runs under ZeRO-2, not ZeRO-3 (refused at start: it cannot partition 4-bit weights):
#   bash scripts/finetune_lora.sh trainable.llm_mode=qlora engine.deepspeed_config=configs/deepspeed/zero2.json
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_launch.sh
launch_train configs/llava15_finetune_lora.yaml "$@"
