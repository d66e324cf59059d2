#!/usr/bin/env bash
# scienceqa_img with LLaVA-1.5's prompt: CKPT=path/to/checkpoint bash scripts/eval/scienceqa_img.sh [extra vlm eval run args]
set -euo pipefail
exec bash "$(dirname "$0")/_run.sh" scienceqa_img "$@"
