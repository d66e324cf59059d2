"""The recipes by exact name: one row each says what trains, the defaults and the rules (config choices come from here)."""
from __future__ import annotations

from dataclasses import dataclass

from train.errors import ConfigError

LLM_MODES = ("full", "lora", "qlora", "frozen")


@dataclass(frozen=True)
class Recipe:
    """One training phase.

    `trains`: the parts that may train (named as `train.optim.part_of` names them); the LLM then trains as `llm_mode` says and the vision encoder's last
    `unfreeze_vision_last_n` blocks. A part not listed stays frozen, and asking it to train is an error.
    `default_template`: the template when the config names none (None: the checkpoint's own, and a new model
    must name one). `chat_template_required`: a `plain` template inherited from the checkpoint (phase 1's) is
    an error, since the recipe trains on conversations. `feature_cache_auto`: `feature_cache: null` turns the
    cache on when the encoder is frozen.
    """

    name: str
    summary: str
    trains: frozenset[str]
    default_template: str | None
    chat_template_required: bool
    feature_cache_auto: bool

    def llm_mode(self, requested: str) -> str:
        """The LLM mode this recipe runs with, given the config's `llm_mode` (ConfigError when it cannot)."""
        if requested not in LLM_MODES:
            raise ConfigError(f"unknown llm_mode {requested!r}; known: {list(LLM_MODES)}")
        if "llm" in self.trains:
            return requested
        if requested not in ("frozen", "full"):  # "full" is the config's default: read as "the recipe's default"
            raise ConfigError(f"recipe={self.name} keeps the LLM frozen; llm_mode={requested!r} needs a recipe "
                             f"that trains it ({', '.join(n for n, r in RECIPES.items() if 'llm' in r.trains)})")
        return "frozen"


RECIPES: dict[str, Recipe] = {
    "align": Recipe(
        "align", "phase 1: the projector learns on image-caption pairs; encoder and LLM frozen",
        trains=frozenset({"projector"}), default_template="plain", chat_template_required=False,
        feature_cache_auto=True,
    ),
    "instruct": Recipe(
        "instruct", "phase 2: projector + LLM (full, lora, qlora or frozen) + optionally the last vision blocks",
        trains=frozenset({"projector", "llm", "vision"}), default_template=None, chat_template_required=True,
        feature_cache_auto=False,
    ),
    "prefer": Recipe(
        "prefer", "phase 3: preference tuning (DPO / IPO) of the LLM (full, lora, qlora) + projector against a "
        "cached reference",
        trains=frozenset({"projector", "llm", "vision"}), default_template=None, chat_template_required=True,
        feature_cache_auto=False,
    ),
}


def get_recipe(name: str) -> Recipe:
    """The recipe registered under exactly `name`."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]
