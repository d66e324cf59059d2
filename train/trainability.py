"""What trains is checked, not assumed: each part of the VLM trains, is frozen or is gradient-checkpointed as the
recipe says, at start and again after the first optimizer step (frozen parts bit-identical)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from train.errors import TrainError
from train.optim import part_of
from train.recipe_registry import Recipe
from train.strategies.base import Strategy

GROUPS = ("vision", "projector", "image_newline", "llm", "lora")
SAMPLE = 1024  # elements per parameter compared before and after the first step (its first ones, or its partition's)


class TrainabilityError(TrainError):
    """A part of the model trains (or stays frozen) against the recipe: the run stops naming it."""

    exit_code = 2


def group_of(name: str) -> str:
    """The part a VLM parameter belongs to: LoRA adapters and anyres' `image_newline` apart from their hosts."""
    if ".lora_" in name:
        return "lora"
    if name.startswith("projector.image_newline"):
        return "image_newline"
    return part_of(name)


@dataclass
class GroupState:
    """One part's parameters (elements), how many of them train, and whether its activations are recomputed."""

    params: int = 0
    trainable: int = 0
    checkpointed: bool = False

    @property
    def state(self) -> str:
        if self.trainable == 0:
            return "frozen"
        return "trains" if self.trainable == self.params else "partly trains"


def audit(model: nn.Module) -> dict[str, GroupState]:
    """Every part present in `model` (a VisionLanguageModel, unwrapped), counted from its parameters."""
    groups: dict[str, GroupState] = {}
    for name, param in model.named_parameters():
        numel = int(getattr(param, "ds_numel", param.numel()))  # ZeRO-3 partitions hold 0 elements locally
        group = groups.setdefault(group_of(name), GroupState())
        group.params += numel
        group.trainable += numel if param.requires_grad else 0
    llm = groups.get("llm")
    if llm is not None:
        llm.checkpointed = bool(getattr(model.llm, "is_gradient_checkpointing", False))
    if "vision" in groups:
        groups["vision"].checkpointed = bool(getattr(model.vision_encoder, "is_gradient_checkpointing", False))
    return {name: groups[name] for name in GROUPS if name in groups}


def intended(recipe: Recipe, llm_mode: str, unfreeze_vision_last_n: int) -> dict[str, set[str]]:
    """The states each part may be in under the recipe's row and the config (see `train.freezing`)."""
    projector = {"trains"} if "projector" in recipe.trains else {"frozen"}
    return {
        "vision": {"trains", "partly trains"} if unfreeze_vision_last_n > 0 else {"frozen"},
        "projector": projector,
        "image_newline": projector,
        "llm": {"trains"} if llm_mode == "full" else {"frozen"},
        "lora": {"trains"} if llm_mode in ("lora", "qlora") else {"frozen"},
    }


def describe(groups: dict[str, GroupState]) -> str:
    return "; ".join(f"{name} {g.state}" + (f" ({g.trainable:,} of {g.params:,})" if g.state == "partly trains" else "")
                     + (", checkpointed" if g.checkpointed else "") for name, g in groups.items())


class TrainabilityCheck:
    """At start: each part's state against the recipe's intent. Around the first optimizer step: a sample of every
    parameter is kept, and afterwards a frozen part that changed stops the run; a training part that did not change
    is reported (a step without images leaves the projector's gradient at zero, and a bf16 weight may not move)."""

    def __init__(self, model: nn.Module, recipe: Recipe, llm_mode: str, unfreeze_vision_last_n: int) -> None:
        self.model = model
        self.groups = audit(model)
        self.intent = intended(recipe, recipe.llm_mode(llm_mode), unfreeze_vision_last_n)
        self._before: dict[str, torch.Tensor] | None = None

    def check_start(self) -> str:
        """One line of what trains; TrainabilityError naming the first part whose state is not the intended one."""
        if self.intent["lora"] == {"trains"} and "lora" not in self.groups:
            raise TrainabilityError("trainable.llm_mode asks for LoRA adapters but the model has none "
                                    "(trainable.lora.target_modules matched no layer?)")
        for name, group in self.groups.items():
            if group.state not in self.intent[name]:
                raise TrainabilityError(
                    f"the {name} part {group.state} ({group.trainable:,} of {group.params:,} elements trainable), "
                    f"but this recipe and config want it {' or '.join(sorted(self.intent[name]))}: {describe(self.groups)}")
        return f"what trains: {describe(self.groups)}"

    def before_first_step(self) -> None:
        self._before = {name: _sample(p) for name, p in self.model.named_parameters()}

    def after_first_step(self, strategy: Strategy) -> str | None:
        """Stops on a frozen part that changed (same verdict on every rank); returns a note naming training parts
        that did not change, or None."""
        assert self._before is not None, "before_first_step() first"
        changed = torch.zeros(len(GROUPS), dtype=torch.float64, device=strategy.device)
        for name, param in self.model.named_parameters():
            if not torch.equal(self._before[name], _sample(param)):
                changed[GROUPS.index(group_of(name))] += 1
        strategy.all_reduce_sum(changed)  # over ranks: ZeRO-3 samples each rank's own partition
        self._before = None
        moved = {group: int(changed[GROUPS.index(group)]) for group in self.groups}
        for group, count in moved.items():
            if count and self.groups[group].state == "frozen":
                raise TrainabilityError(f"the frozen {group} part changed in the first optimizer step ({count} "
                                        "parameter(s)): something updates weights the recipe keeps frozen")
        still = [g for g, count in moved.items() if not count and self.groups[g].state != "frozen"]
        if still:
            return (f"after step 1: {', '.join(still)} did not change (no gradient reached it, e.g. a step without "
                    "images, or updates below its dtype's resolution); the frozen parts are bit-identical")
        return None


def _sample(param: torch.Tensor) -> torch.Tensor:
    local = getattr(param, "ds_tensor", None)  # ZeRO-3: this rank's partition; the full tensor is empty here
    if local is None and hasattr(param, "to_local"):  # FSDP2: a DTensor, of which this rank holds a shard
        local = param.to_local()
    values = param if local is None else local
    return values.detach().reshape(-1)[:SAMPLE].clone()
