#!/usr/bin/env bash
# coco_captions with LLaVA-1.5's prompt: CKPT=path/to/checkpoint bash scripts/eval/coco_captions.sh [extra vlm eval run args]
set -euo pipefail
exec bash "$(dirname "$0")/_run.sh" coco_captions "$@"
