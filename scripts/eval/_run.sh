#!/usr/bin/env bash
# Shared body of the per-benchmark scripts: one `vlm eval run --no-finalize` per GPU chunk, in parallel,
# then a final call that finds every chunk answered, merges them and scores. Usage: _run.sh BENCHMARK [extra vlm args...]
# Env: CKPT (required), DATA (default playground/data/eval/<benchmark>), OUT (default eval_results/<ckpt>/<benchmark>),
#      GPUS (comma list of device indices as torch numbers them, default: every one torch sees; `cpu`: the CPU),
#      CUDA_VISIBLE_DEVICES (honoured; set and empty: the CPU), BATCH (default 16), VENV (default .venv),
#      VLM (a `vlm` executable to run instead of the .venv's `python -m app.cli`).
set -euo pipefail
source "$(dirname "$0")/../_env.sh"
BENCH=$1; shift
: "${CKPT:?set CKPT to a checkpoint (or HF Llava) directory}"
DATA=${DATA:-playground/data/eval/$BENCH}
NAME=$(basename "$CKPT")
OUT=${OUT:-eval_results/$NAME/$BENCH}
BATCH=${BATCH:-16}
ensure_venv
if [[ -n "${VLM:-}" ]]; then VLM_CMD=("$VLM"); else VLM_CMD=("$PY" -m app.cli); fi

if [[ -z "${GPUS:-}" ]]; then
  if cuda_hidden; then
    GPUS=cpu
  else
    torch_cuda_info
    if [[ "$TORCH_GPUS" -gt 0 ]]; then
      GPUS=$(seq -s, 0 $((TORCH_GPUS - 1)))
    # (grep -c, not grep -q: an early exit of grep would SIGPIPE nvidia-smi and fail the pipe under pipefail)
    elif command -v nvidia-smi >/dev/null 2>&1 && [[ $(nvidia-smi -L 2>/dev/null | grep -c '^GPU') -gt 0 ]]; then
      die "GPUs are installed but torch cannot use them: $(why_cuda). GPUS=cpu runs on the CPU"
    else
      echo "[eval] no CUDA device: running on the CPU" >&2
      GPUS=cpu
    fi
  fi
elif [[ "$GPUS" != cpu ]]; then
  cuda_hidden && die "GPUS=$GPUS but CUDA_VISIBLE_DEVICES is empty (no GPU visible); GPUS=cpu runs on the CPU"
  torch_cuda_info
  for IDX in ${GPUS//,/ }; do
    [[ "$IDX" =~ ^[0-9]+$ ]] || die "GPUS=$GPUS: '$IDX' is not a device index (use indices as torch numbers them, or cpu)"
    [[ "$IDX" -lt "$TORCH_GPUS" ]] || die "GPUS=$GPUS asks for device $IDX: $(why_cuda)"
  done
fi
IFS=',' read -ra GPU_LIST <<< "$GPUS"
VISIBLE=()
[[ -n "${CUDA_VISIBLE_DEVICES:-}" ]] && IFS=',' read -ra VISIBLE <<< "$CUDA_VISIBLE_DEVICES"
CHUNKS=${#GPU_LIST[@]}
COMMON=(eval run --model "$CKPT" --benchmark "$BENCH" --data-root "$DATA" --out "$OUT" --batch-size "$BATCH"
        --num-chunks "$CHUNKS" --model-name "$NAME" "$@")
for IDX in "${!GPU_LIST[@]}"; do
  if [[ "${GPU_LIST[$IDX]}" == cpu ]]; then
    CUDA_VISIBLE_DEVICES= "${VLM_CMD[@]}" "${COMMON[@]}" --chunk-idx "$IDX" --device cpu --no-finalize &
  else
    # torch's device N is the N-th entry of an inherited CUDA_VISIBLE_DEVICES (a chunk sees only its own GPU)
    DEVICE=${GPU_LIST[$IDX]}
    [[ ${#VISIBLE[@]} -gt 0 ]] && DEVICE=${VISIBLE[$DEVICE]}
    CUDA_VISIBLE_DEVICES=$DEVICE "${VLM_CMD[@]}" "${COMMON[@]}" --chunk-idx "$IDX" --no-finalize &
  fi
done
wait
# Every chunk is answered now: this call loads no model; it merges, writes the submission and scores.
"${VLM_CMD[@]}" "${COMMON[@]}" --chunk-idx 0 --no-progress
