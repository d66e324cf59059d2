#!/usr/bin/env bash
# Shared body of the per-benchmark scripts: one `vlm eval run --no-finalize` per GPU chunk, in parallel,
# then a final call that finds every chunk answered, merges them and scores. Usage: _run.sh BENCHMARK [extra vlm args...]
# Env: CKPT (required), DATA (default playground/data/eval/<benchmark>), OUT (default eval_results/<ckpt>/<benchmark>),
#      GPUS (comma list, default: the visible ones or CPU), BATCH (default 16), VLM (default: vlm).
set -euo pipefail
BENCH=$1; shift
: "${CKPT:?set CKPT to a checkpoint (or HF Llava) directory}"
DATA=${DATA:-playground/data/eval/$BENCH}
NAME=$(basename "$CKPT")
OUT=${OUT:-eval_results/$NAME/$BENCH}
BATCH=${BATCH:-16}
VLM=${VLM:-vlm}
if [[ -z "${GPUS:-}" ]]; then
  GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, - || true)
fi
IFS=',' read -ra GPU_LIST <<< "${GPUS:-cpu}"
CHUNKS=${#GPU_LIST[@]}
COMMON=(eval run --model "$CKPT" --benchmark "$BENCH" --data-root "$DATA" --out "$OUT" --batch-size "$BATCH"
        --num-chunks "$CHUNKS" --model-name "$NAME" "$@")
for IDX in "${!GPU_LIST[@]}"; do
  if [[ "${GPU_LIST[$IDX]}" == cpu ]]; then
    "$VLM" "${COMMON[@]}" --chunk-idx "$IDX" --device cpu --no-finalize &
  else
    CUDA_VISIBLE_DEVICES=${GPU_LIST[$IDX]} "$VLM" "${COMMON[@]}" --chunk-idx "$IDX" --no-finalize &
  fi
done
wait
# Every chunk is answered now: this call loads no model; it merges, writes the submission and scores.
"$VLM" "${COMMON[@]}" --chunk-idx 0 --no-progress
