#!/usr/bin/env bash
# text_qa with LLaVA-1.5's prompt: CKPT=path/to/checkpoint bash scripts/eval/text_qa.sh [extra vlm eval run args]
set -euo pipefail
exec bash "$(dirname "$0")/_run.sh" text_qa "$@"
