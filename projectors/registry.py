"""Exact-name projector registry: fixed names plus full-match name families such as `mlp{N}x_gelu`."""
from __future__ import annotations

import re
from typing import Callable

from projectors.base import Projector
from projectors.expanding import ExpandingProjector
from projectors.mlp import IdentityProjector, LinearProjector, MLPProjector
from projectors.reducing import AvgPoolProjector, PixelShuffleProjector

Factory = Callable[[str, int, int], Projector]

FIXED: dict[str, Factory] = {
    "linear": LinearProjector,
    "identity": IdentityProjector,
}

_POSITIVE = r"([1-9][0-9]*)"
# Each family is matched with re.fullmatch over the whole name: `mlp2x_gelu_foo` matches nothing.
FAMILIES: dict[str, tuple[re.Pattern[str], Callable[[str, int, int, int], Projector]]] = {
    "mlp{N}x_gelu": (re.compile(rf"mlp{_POSITIVE}x_gelu"), lambda n, dv, dl, k: MLPProjector(n, dv, dl, depth=k)),
    "pixel_shuffle{F}x_mlp2x_gelu": (
        re.compile(rf"pixel_shuffle{_POSITIVE}x_mlp2x_gelu"),
        lambda n, dv, dl, f: PixelShuffleProjector(n, dv, dl, factor=f),
    ),
    "expand{M}x_mlp2x_gelu": (
        re.compile(rf"expand{_POSITIVE}x_mlp2x_gelu"),
        lambda n, dv, dl, m: ExpandingProjector(n, dv, dl, factor=m),
    ),
    "avgpool{F}x_mlp2x_gelu": (
        re.compile(rf"avgpool{_POSITIVE}x_mlp2x_gelu"),
        lambda n, dv, dl, f: AvgPoolProjector(n, dv, dl, factor=f),
    ),
}


def known_projectors() -> list[str]:
    """Every fixed name and every name pattern, for error messages and `--help`."""
    return sorted(FIXED) + list(FAMILIES)


def _factory(name: str) -> Callable[[int, int], Projector]:
    """The constructor for exactly `name`; ValueError listing the known names and patterns otherwise."""
    if name in FIXED:
        return lambda dv, dl: FIXED[name](name, dv, dl)
    for pattern, factory in FAMILIES.values():
        match = pattern.fullmatch(name)
        if match:
            return lambda dv, dl: factory(name, dv, dl, int(match.group(1)))
    raise ValueError(f"unknown projector {name!r}; known: {', '.join(known_projectors())}")


def known_projector_check(name: str) -> None:
    """Raise the same ValueError as `build_projector` for an unknown name, without building anything."""
    _factory(name)


def build_projector(name: str, vision_hidden_size: int, llm_hidden_size: int) -> Projector:
    """Build the projector called exactly `name` mapping width `vision_hidden_size` to `llm_hidden_size`."""
    return _factory(name)(vision_hidden_size, llm_hidden_size)
