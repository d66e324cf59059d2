"""Which parts of the VLM train in a recipe (the rules are the recipe's row): requires_grad flags, and a summary."""
from __future__ import annotations

from collections import Counter

from torch import nn

from train.optim import part_of
from train.recipe_registry import Recipe


def set_trainable(model: nn.Module, *, recipe: Recipe, llm_mode: str, unfreeze_vision_last_n: int = 0) -> None:
    """Apply `recipe`'s freezing to a VisionLanguageModel (before LoRA wrapping, which sets its own flags).

    Every part outside `recipe.trains` is frozen. The projector trains when listed; the LLM when listed and
    `llm_mode` is `full` (lora/qlora: frozen here, the adapters train); the last `unfreeze_vision_last_n`
    vision blocks (`train.rules` allows them only when the vision encoder is listed).
    """
    llm_mode = recipe.llm_mode(llm_mode)
    model.requires_grad_(False)
    if "projector" in recipe.trains:
        model.projector.requires_grad_(True)
    if llm_mode == "full":
        model.llm.requires_grad_(True)
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
