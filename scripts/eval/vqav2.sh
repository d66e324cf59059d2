#!/usr/bin/env bash
# vqav2 with LLaVA-1.5's prompt: CKPT=path/to/checkpoint bash scripts/eval/vqav2.sh [extra vlm eval run args]
set -euo pipefail
exec bash "$(dirname "$0")/_run.sh" vqav2 "$@"
