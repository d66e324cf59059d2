"""One optimizer step of a stage-0 run, shared by the LLM and ViT pretraining loops."""
from __future__ import annotations

import math

import torch
from torch import nn


def optimizer_step(loss: torch.Tensor, model: nn.Module, optim: torch.optim.Optimizer, sched, what: str, step: int) -> float:
    """Backward, clip to norm 1, step optimizer and schedule; a non-finite loss stops the run naming `what`."""
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"stage-0 {what}: non-finite loss at step {step}")
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optim.param_groups for p in group["params"]], 1.0)
    optim.step()
    sched.step()
    optim.zero_grad(set_to_none=True)
    return value


def log_progress(what: str, step: int, total: int, losses: list[float], every: int) -> None:
    if every and (step + 1) % every == 0:
        print(f"[stage0 {what}] step {step + 1}/{total} loss {sum(losses[-every:]) / every:.3f}", flush=True)
