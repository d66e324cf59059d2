#!/usr/bin/env bash
# Shared by the launchers (source it): the project's .venv (set up if missing) and the CUDA devices torch sees,
# with the reason when it sees fewer than asked (CPU-only torch, or a driver older than torch's CUDA build).
# Env: VENV (default <repo>/.venv), PYTHON (for scripts/setup.sh), CUDA_VISIBLE_DEVICES (set and empty: no GPU).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "error: $*" >&2; exit 1; }

ensure_venv() {
    VENV=${VENV:-$ROOT/.venv}
    PY="$VENV/bin/python"
    if [[ ! -x "$PY" ]]; then
        echo "[launch] no Python environment at $VENV: running scripts/setup.sh" >&2
        VENV="$VENV" bash "$ROOT/scripts/setup.sh" || die "scripts/setup.sh failed to create $VENV"
        [[ -x "$PY" ]] || die "scripts/setup.sh did not create $PY"
    fi
}

cuda_hidden() { [[ -n "${CUDA_VISIBLE_DEVICES+set}" && -z "$CUDA_VISIBLE_DEVICES" ]]; }

# Sets TORCH_GPUS (devices torch can use) and TORCH_CUDA (torch.version.cuda, or "none" for a CPU build).
torch_cuda_info() {
    local out
    out=$("$PY" -c 'import torch; print(torch.cuda.device_count(), torch.version.cuda or "none")' 2>/dev/null | tail -n1) \
        || die "$PY cannot import torch (run scripts/setup.sh, or set VENV to a working environment)"
    read -r TORCH_GPUS TORCH_CUDA <<<"$out"
    [[ "$TORCH_GPUS" =~ ^[0-9]+$ ]] || die "unexpected answer from torch about CUDA devices: '$out'"
}

version_gt() { [[ "$1" != "$2" && "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -n1)" == "$1" ]]; }

# Why torch sees $TORCH_GPUS device(s): the visible set, torch's CUDA build and the driver's CUDA version.
why_cuda() {
    local msg="torch sees $TORCH_GPUS CUDA device(s)"
    [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]] && msg+=" with CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
    if [[ "$TORCH_CUDA" == none ]]; then
        msg+="; this torch is a CPU-only build (torch.version.cuda is None): install a CUDA build of torch"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        local listed driver cuda_max
        listed=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1)
        cuda_max=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n1)
        msg+="; nvidia-smi lists $listed GPU(s), driver ${driver:-?} (CUDA up to ${cuda_max:-?}); torch is built for CUDA $TORCH_CUDA"
        if [[ -n "$cuda_max" ]] && version_gt "$TORCH_CUDA" "$cuda_max"; then
            msg+=": the driver is too old for this torch. Update the NVIDIA driver, or install a torch built for CUDA <= $cuda_max"
        fi
    else
        msg+="; nvidia-smi is not installed (no NVIDIA driver on this machine?)"
    fi
    echo "$msg"
}
