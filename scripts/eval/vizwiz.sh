#!/usr/bin/env bash
# vizwiz with LLaVA-1.5's prompt: CKPT=path/to/checkpoint bash scripts/eval/vizwiz.sh [extra vlm eval run args]
set -euo pipefail
exec bash "$(dirname "$0")/_run.sh" vizwiz "$@"
