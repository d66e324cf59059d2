"""DeepSpeed's CPU Adam (vectorised C++) in place of torch AdamW when ZeRO offloads the optimizer to the CPU."""
from __future__ import annotations

import warnings
from typing import Any

import torch


def offloads_optimizer(config: dict[str, Any]) -> bool:
    """Whether a resolved DeepSpeed config offloads the optimizer state (to cpu or nvme)."""
    offload = config.get("zero_optimization", {}).get("offload_optimizer")
    return isinstance(offload, dict) and offload.get("device", "none") not in ("none", None)


def cpu_adam_like(optimizer: torch.optim.Optimizer, cpu_adam_cls: Any = None) -> torch.optim.Optimizer:
    """A `DeepSpeedCPUAdam` over the same parameter groups (names, per-group lr and weight decay kept) and
    hyperparameters as the torch AdamW `optimizer`. When the op cannot be built here (no compiler), the torch
    optimizer is kept, with a one-line warning: ZeRO-Offload steps it too, only more slowly."""
    if cpu_adam_cls is None:
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam as cpu_adam_cls
        except ImportError as err:  # pragma: no cover - deepspeed always ships it
            warnings.warn(f"DeepSpeedCPUAdam unavailable ({err}); the offloaded optimizer stays torch AdamW",
                          stacklevel=2)
            return optimizer
    defaults = optimizer.defaults
    groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": list(group["params"])}
              for group in optimizer.param_groups]
    try:
        return cpu_adam_cls(groups, lr=defaults["lr"], betas=tuple(defaults["betas"]), eps=defaults["eps"],
                            weight_decay=defaults["weight_decay"], adamw_mode=True)
    except Exception as err:  # the C++ op is compiled on first use; a machine without a toolchain fails here
        warnings.warn(f"DeepSpeedCPUAdam could not be built ({type(err).__name__}: {str(err)[:200]}); the "
                      "offloaded optimizer stays torch AdamW", stacklevel=2)
        return optimizer
