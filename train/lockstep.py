"""Debug mode (`VLM_LOCKSTEP=1`): every rank must run the same passes and collectives in a step, or the run stops.

DDP and ZeRO pair the collectives of all ranks in call order: a rank that runs one forward, backward or
all-reduce more than another (an empty micro-batch skipped, a text-only batch that leaves a module out, a
check that runs on one rank only) makes the ranks wait on each other forever, or silently pairs mismatched
data. In this mode each rank counts, between two checks, its training passes and every `torch.distributed`
collective it calls (wrapped before DeepSpeed caches them), and after every optimizer step the counts are
compared across ranks: a mismatch stops every rank with the counter and each rank's value, so a divergence fails
a CPU test instead of hanging a cluster. The distributed tests run with it on."""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from train.strategies.base import Strategy

ENV = "VLM_LOCKSTEP"
# torch.distributed entry points that communicate (a call on one rank waits for the same call on the others)
COLLECTIVES = ("all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_into_tensor", "all_gather_object",
               "reduce_scatter", "reduce_scatter_tensor", "broadcast", "broadcast_object_list", "reduce", "gather",
               "scatter", "all_to_all", "all_to_all_single", "barrier")
COUNTERS = ("passes", "collectives")

_collective_calls = [0]


class LockstepError(RuntimeError):
    """Ranks ran different numbers of passes or collectives in a step (they would hang or mis-pair data)."""


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0", "false")


def count_collectives() -> None:
    """Wrap torch.distributed's collectives so that each call is counted. Must run before a library keeps a
    reference to one (DeepSpeed caches its all-gather and reduce-scatter functions when it starts)."""
    for name in COLLECTIVES:
        original = getattr(dist, name, None)
        if original is None or getattr(original, "_lockstep_counted", False):
            continue
        setattr(dist, name, _counted(original))


def _counted(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _collective_calls[0] += 1
        return function(*args, **kwargs)

    wrapper._lockstep_counted = True  # type: ignore[attr-defined]
    return wrapper


class LockstepCheck:
    """Compares, after each step, this rank's passes and collectives since the last check with every rank's."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self._collectives_at_last_check = _collective_calls[0]

    def after_step(self, step: int, passes: int) -> None:
        """Raise LockstepError on every rank when any counter differs between ranks (`passes`: the forward and
        backward passes this rank's step ran)."""
        mine = [passes, _collective_calls[0] - self._collectives_at_last_check]
        world, rank = self.strategy.world_size, self.strategy.rank
        table = torch.zeros(world, len(COUNTERS), dtype=torch.float64, device=self.strategy.device)
        table[rank] = torch.tensor(mine, dtype=torch.float64)
        self.strategy.all_reduce_sum(table)  # a collective too: run by every rank, after the counts were taken
        self._collectives_at_last_check = _collective_calls[0]
        per_rank = table.long().tolist()
        for column, name in enumerate(COUNTERS):
            values = [row[column] for row in per_rank]
            if len(set(values)) > 1:
                raise LockstepError(
                    f"step {step}: ranks ran different numbers of {name} ("
                    + ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
                    + f"); every rank must run the same forward/backward passes and collectives in a step "
                    f"({ENV}=1 checks this after every step)")
