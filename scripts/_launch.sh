#!/usr/bin/env bash
# Shared launcher for the real-model scripts: `vlm train` under torchrun from the project's .venv, one process per GPU.
# Usage (from another script): source scripts/_launch.sh; launch_train CONFIG [key=value overrides...]
#        (`strategy=fsdp` stands for engine.strategy=fsdp: FSDP2 in place of the config's DeepSpeed ZeRO)
# Env: NUM_GPUS (processes per node; default: every CUDA device torch sees), CUDA_VISIBLE_DEVICES (which ones; set and
#      empty: no GPU, a CPU run of NUM_PROCS processes, default 1), multi-node: NNODES, NODE_RANK, MASTER_ADDR,
#      MASTER_PORT (default 29500), the same on every node but NODE_RANK. VENV (default .venv), VLM (a `vlm` executable
#      to run instead of `python -m app.cli`), OMP_NUM_THREADS (default: this node's cores / processes, at least 1;
#      torchrun would set 1, leaving DeepSpeed's CPU Adam one core per rank).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

launch_train() {
    local config=$1; shift
    ensure_venv
    local nproc
    if cuda_hidden; then
        [[ -z "${NUM_GPUS:-}" || "${NUM_GPUS}" == 0 ]] || die "NUM_GPUS=$NUM_GPUS but CUDA_VISIBLE_DEVICES is empty (no GPU visible)"
        nproc=${NUM_PROCS:-1}
        echo "[launch] CUDA_VISIBLE_DEVICES is empty: a CPU run of $nproc process(es) (gloo, fp32: add engine.precision=fp32)" >&2
    else
        torch_cuda_info
        if [[ "$TORCH_GPUS" -lt 1 ]]; then
            die "no CUDA device for torch: $(why_cuda). To run on the CPU anyway set CUDA_VISIBLE_DEVICES= (empty); on a CPU, scripts/train_synthetic.sh is the tested path"
        fi
        nproc=${NUM_GPUS:-$TORCH_GPUS}
        [[ "$nproc" =~ ^[1-9][0-9]*$ ]] || die "NUM_GPUS=$nproc is not a positive integer"
        if [[ "$nproc" -gt "$TORCH_GPUS" ]]; then
            die "NUM_GPUS=$nproc is more than the CUDA devices torch sees: $(why_cuda)"
        fi
    fi
    [[ "$nproc" =~ ^[1-9][0-9]*$ ]] || die "NUM_PROCS=$nproc is not a positive integer"
    local nnodes=${NNODES:-1} node_rank=${NODE_RANK:-0}
    [[ "$nnodes" =~ ^[1-9][0-9]*$ && "$node_rank" =~ ^[0-9]+$ && "$node_rank" -lt "$nnodes" ]] \
        || die "NNODES=$nnodes NODE_RANK=$node_rank: need NNODES >= 1 and 0 <= NODE_RANK < NNODES"
    local rendezvous=(--standalone)
    if [[ "$nnodes" -gt 1 ]]; then
        [[ -n "${MASTER_ADDR:-}" ]] || die "NNODES=$nnodes needs MASTER_ADDR (node 0's address, the same on every node)"
        rendezvous=(--nnodes="$nnodes" --node_rank="$node_rank" --master_addr="$MASTER_ADDR"
                    --master_port="${MASTER_PORT:-29500}")
    fi
    local cores
    cores=$(nproc 2>/dev/null || echo 1)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / nproc > 0 ? cores / nproc : 1 ))}
    local program=(-m app.cli)
    [[ -z "${VLM:-}" ]] || program=(--no-python "$VLM")  # every worker runs that executable itself
    echo "[launch] $config: $nnodes node(s) x $nproc process(es), node rank $node_rank" >&2
    # `strategy=NAME` (single, ddp, deepspeed, fsdp) is the scripts' short form of the override engine.strategy=NAME
    local overrides=() arg
    for arg in "$@"; do
        if [[ "$arg" == strategy=* ]]; then overrides+=("engine.$arg"); else overrides+=("$arg"); fi
    done
    exec "$PY" -m torch.distributed.run "${rendezvous[@]}" --nproc_per_node="$nproc" "${program[@]}" train "$config" \
        ${overrides[@]+"${overrides[@]}"}
}
