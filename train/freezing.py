"""Which parts of the VLM train in each recipe: requires_grad flags, and a summary that proves it."""
from __future__ import annotations

from collections import Counter

from torch import nn

from train.optim import part_of


def set_trainable(model: nn.Module, *, recipe: str, llm_mode: str, unfreeze_vision_last_n: int = 0) -> None:
    """Apply the recipe's freezing to a VisionLanguageModel (before LoRA wrapping, which sets its own flags).

    align: projector only. instruct: projector, the LLM unless `llm_mode` is `frozen` (lora/qlora: frozen here,
    the adapters train), and the last `unfreeze_vision_last_n` vision blocks.
    """
    if recipe not in ("align", "instruct"):
        raise ValueError(f"unknown recipe {recipe!r}; known: ['align', 'instruct']")
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    if recipe == "align":
        if unfreeze_vision_last_n:
            raise ValueError("align trains the projector only; unfreeze_vision_last_n needs recipe=instruct")
        return
    if llm_mode == "full":
        model.llm.requires_grad_(True)
    elif llm_mode not in ("frozen", "lora", "qlora"):
        raise ValueError(f"unknown llm_mode {llm_mode!r}; known: ['full', 'lora', 'qlora', 'frozen']")
    if unfreeze_vision_last_n > 0:
        model.vision_encoder.freeze(unfreeze_vision_last_n)


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts per part (`projector`, `llm`, `vision`) plus `total` and `all`."""
    counts: Counter[str] = Counter()
    for name, param in model.named_parameters():
        numel = int(getattr(param, "ds_numel", param.numel()))  # ZeRO-3 partitions hold 0 elements locally
        counts["all"] += numel
        if param.requires_grad:
            counts[part_of(name)] += numel
            counts["total"] += numel
    return dict(counts)


def vision_is_frozen(model: nn.Module) -> bool:
    return not any(p.requires_grad for p in model.vision_encoder.parameters())
