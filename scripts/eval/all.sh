#!/usr/bin/env bash
# Every benchmark in turn for CKPT, then one markdown results table from the scores JSONs.
# CKPT=path bash scripts/eval/all.sh [benchmarks...]   (default: the LLaVA-1.5 table's nine + captions)
set -euo pipefail
: "${CKPT:?set CKPT to a checkpoint (or HF Llava) directory}"
HERE=$(dirname "$0")
NAME=$(basename "$CKPT")
BENCHES=("$@")
[[ ${#BENCHES[@]} -gt 0 ]] || BENCHES=(vqav2 gqa vizwiz scienceqa_img textvqa pope mme mmbench seed coco_captions)
for B in "${BENCHES[@]}"; do
  echo "== $B"
  bash "$HERE/$B.sh" || echo "!! $B failed; continuing" >&2
done
${VLM:-vlm} eval table "eval_results/$NAME" --out "eval_results/$NAME/results.md"
