#!/usr/bin/env bash
# Shared launcher for the real-model scripts: counts GPUs, then runs `vlm train` under torchrun (one process per GPU).
# Usage (from another script): source scripts/_launch.sh; launch_train CONFIG [key=value overrides...]
set -euo pipefail

count_gpus() {
    if [[ -n "${NUM_GPUS:-}" ]]; then echo "$NUM_GPUS"; return; fi
    if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        awk -F, '{print NF}' <<<"$CUDA_VISIBLE_DEVICES"; return
    fi
    if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L | grep -c '^GPU' || true; return; fi
    echo 0
}

launch_train() {
    local config=$1; shift
    local gpus; gpus=$(count_gpus)
    if [[ "$gpus" -lt 1 ]]; then
        echo "no GPU found (set NUM_GPUS or CUDA_VISIBLE_DEVICES); on a CPU run scripts/train_synthetic.sh" >&2
        exit 1
    fi
    echo "launching $config on $gpus GPU(s)" >&2
    # --no-python: every worker runs the `vlm` console script itself, with torchrun's RANK/WORLD_SIZE env.
    exec torchrun --standalone --nproc_per_node="$gpus" --no-python "${VLM:-vlm}" train "$config" "$@"
}
