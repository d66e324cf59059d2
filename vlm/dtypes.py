"""Torch dtypes by name: what a checkpoint loads in (`resolve_dtype`) and what eval and chat load in (`inference_dtype`)."""
from __future__ import annotations

import warnings

import torch

from vlm.config import DTYPE_ALIASES

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype name to a torch dtype; half precision without a GPU degrades to float32 with a warning."""
    if name is None:
        return None
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        key = name.removeprefix("torch.")
        if key not in DTYPES:
            raise ValueError(f"unknown torch_dtype {name!r}; known: {sorted(DTYPES)}")
        dtype = DTYPES[key]
    if dtype != torch.float32 and not torch.cuda.is_available():
        warnings.warn(f"torch_dtype {dtype} needs a GPU (this CPU is far too slow at it); using float32", stacklevel=3)
        return torch.float32
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def inference_dtype(requested: str | None, device: str | torch.device) -> str:
    """The dtype eval and chat load in: `auto` (or None) is bfloat16 on a CUDA GPU that supports it, else
    float32; half precision asked for on a CPU falls back to float32 with a warning saying why."""
    device = torch.device(device)
    name = (requested or "auto").removeprefix("torch.")
    name = DTYPE_ALIASES.get(name, name)
    if name == "auto":
        on_gpu = device.type == "cuda" and torch.cuda.is_available()
        return "bfloat16" if on_gpu and torch.cuda.is_bf16_supported() else "float32"
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {requested!r}; known: auto, {', '.join(sorted(DTYPES))} (or bf16, fp16, fp32)")
    if name != "float32" and device.type == "cpu":
        warnings.warn(f"dtype {name} on a CPU runs at under 1 GFLOP/s; loading in float32 instead", stacklevel=2)
        return "float32"
    return name
