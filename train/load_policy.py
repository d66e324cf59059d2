"""In which dtype a training run loads its model, and the fp32 master weights plain AdamW needs.

With `precision: bf16` the weights load in bf16 (no fp32 copy of the LLM in host memory) whenever nothing that
trains would lose its fp32 master weights: always under DeepSpeed (its bf16 optimizer keeps fp32 masters), and
under one process or DDP when the LLM is frozen (phase 1, LoRA, QLoRA) — the trainable parts (projector,
adapters, unfrozen vision blocks) are then cast back to fp32 for torch AdamW under autocast. A fully trained
LLM under one process or DDP still loads in fp32."""
from __future__ import annotations

import torch
from torch import nn

from train.recipe_registry import get_recipe

BF16 = "bfloat16"
FP32 = "float32"


def llm_trains(cfg) -> bool:  # noqa: ANN001 - a TrainConfig
    """Whether the whole LLM trains (its recipe row trains it and llm_mode is full)."""
    return get_recipe(cfg.recipe).llm_mode(cfg.trainable.llm_mode) == "full"


def load_dtype(cfg, precision: str, deepspeed: bool) -> str:  # noqa: ANN001 - a TrainConfig
    """`bfloat16` or `float32` for a run whose resolved precision is `precision` (see the module docstring)."""
    if precision != "bf16":
        return FP32
    return BF16 if deepspeed or not llm_trains(cfg) else FP32


def upcast_trainable(model: nn.Module) -> int:
    """Trainable half-precision parameters to fp32 in place (optimizer masters under autocast); returns how many
    elements were cast."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += param.numel()
    return cast
