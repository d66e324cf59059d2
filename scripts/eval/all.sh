#!/usr/bin/env bash
# Every benchmark in turn for CKPT, then one markdown results table from the scores JSONs.
# CKPT=path bash scripts/eval/all.sh [benchmarks...]   (default: the LLaVA-1.5 table's nine + captions)
set -euo pipefail
: "${CKPT:?set CKPT to a checkpoint (or HF Llava) directory}"
HERE=$(dirname "$0")
source "$HERE/../_env.sh"
ensure_venv
NAME=$(basename "$CKPT")
BENCHES=("$@")
[[ ${#BENCHES[@]} -gt 0 ]] || BENCHES=(vqav2 gqa vizwiz scienceqa_img textvqa pope mme mmbench seed coco_captions)
for B in "${BENCHES[@]}"; do
  echo "== $B"
  bash "$HERE/$B.sh" || echo "!! $B failed; continuing" >&2
done
if [[ -n "${VLM:-}" ]]; then VLM_CMD=("$VLM"); else VLM_CMD=("$PY" -m app.cli); fi
"${VLM_CMD[@]}" eval table "eval_results/$NAME" --out "eval_results/$NAME/results.md"
