#!/usr/bin/env bash
# seed with LLaVA-1.5's prompt: CKPT=path/to/checkpoint bash scripts/eval/seed.sh [extra vlm eval run args]
set -euo pipefail
exec bash "$(dirname "$0")/_run.sh" seed "$@"
