"""AdamW parameter groups (projector / LLM / vision lrs, no decay on norms and biases) and the lr schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import get_scheduler

from train.config import OptimConfig

# Top-level submodule name of VisionLanguageModel -> parameter group name.
PART_OF_PREFIX: dict[str, str] = {"projector": "projector", "llm": "llm", "vision_encoder": "vision"}


@dataclass
class GroupSummary:
    """What one optimizer group holds, for the run log."""

    name: str
    lr: float
    weight_decay: float
    num_params: int


def part_of(param_name: str) -> str:
    """Which group (`projector`, `llm`, `vision`) a parameter name of the VLM belongs to."""
    head = param_name.split(".", 1)[0]
    if head not in PART_OF_PREFIX:
        raise ValueError(f"parameter {param_name!r} is outside {sorted(PART_OF_PREFIX)}; cannot assign an lr")
    return PART_OF_PREFIX[head]


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Biases and norm gains are 1-D; embeddings and linear weights are 2-D and decay.
    return param.ndim < 2


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """AdamW groups over trainable parameters only, named `<part>` / `<part>_no_decay`."""
    lr_of = {"projector": cfg.projector_lr if cfg.projector_lr is not None else cfg.lr,
             "llm": cfg.lr,
             "vision": cfg.vision_lr if cfg.vision_lr is not None else cfg.lr}
    buckets: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = part_of(name) + ("_no_decay" if _no_decay(name, param) else "")
        buckets.setdefault(key, []).append(param)
    if not buckets:
        raise ValueError("no trainable parameters: check llm_mode / recipe freezing")
    groups = []
    for key in sorted(buckets):
        part = key.removesuffix("_no_decay")
        decay = 0.0 if key.endswith("_no_decay") else cfg.weight_decay
        groups.append({"params": buckets[key], "lr": lr_of[part], "weight_decay": decay, "name": key})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, cfg)` (`train.rules` checked that `betas` holds two numbers)."""
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps,
                             weight_decay=cfg.weight_decay)


def summarize(optimizer: torch.optim.Optimizer) -> list[GroupSummary]:
    """Each parameter group's name, lr, weight decay and parameter count (read before an engine such as DeepSpeed
    swaps the groups' parameters for its flat partitions; a ZeRO-3 parameter counts its full size)."""
    return [GroupSummary(g.get("name", str(i)), g["lr"], g["weight_decay"],
                         sum(int(getattr(p, "ds_numel", p.numel())) for p in g["params"]))
            for i, g in enumerate(optimizer.param_groups)]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):  # noqa: ANN201
    """transformers' scheduler `cfg.scheduler` with ceil(warmup_ratio * total_steps) warmup steps."""
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    return get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
