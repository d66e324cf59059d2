#!/usr/bin/env bash
# mmbench with LLaVA-1.5's prompt: CKPT=path/to/checkpoint bash scripts/eval/mmbench.sh [extra vlm eval run args]
set -euo pipefail
exec bash "$(dirname "$0")/_run.sh" mmbench "$@"
