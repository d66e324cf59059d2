"""The strategies by exact name (`strategy:` in a training config), built from a TrainConfig."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry stays import-light: train.config reads its names
    from train.strategies.base import Strategy

# Strategy name -> "module:Class" (exact names); a module is imported only when its strategy is asked for.
#
# Loss contract: the loop scales each micro-batch's summed token loss by world_size / (supervised tokens
# of the whole accumulation window over all ranks), so a strategy that averages gradients over ranks
# (DDP, DeepSpeed, FSDP2) ends with d(sum of token losses)/d(theta) / global token count, same as one process.
STRATEGIES: dict[str, str] = {
    "single": "train.strategies.single:SingleProcessStrategy",
    "ddp": "train.strategies.ddp:DDPStrategy",
    "deepspeed": "train.strategies.deepspeed_zero:DeepSpeedStrategy",
    "fsdp": "train.strategies.fsdp:FSDPStrategy",
}


def build_strategy(name: str, config: object | None = None) -> Strategy:
    """The strategy registered under exactly `name`, built by `from_train_config(config)` (a TrainConfig)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    module_name, cls_name = STRATEGIES[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls.from_train_config(config) if config is not None else cls()
