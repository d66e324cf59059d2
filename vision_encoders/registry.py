"""Spec parsing and the backend registry: `hf:`, `timm:`, `open_clip:` prefixes mapped to loader functions."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from vision_encoders.base import VisionEncoder
from vision_encoders.config import VisionEncoderConfig

Loader = Callable[[VisionEncoderConfig, str, "str | None"], VisionEncoder]


def _load_hf(config: VisionEncoderConfig, name: str, checkpoint: str | None) -> VisionEncoder:
    from vision_encoders.hf_encoder import HFVisionEncoder

    return HFVisionEncoder(config, name)


def _load_timm(config: VisionEncoderConfig, name: str, checkpoint: str | None) -> VisionEncoder:
    from vision_encoders.timm_encoder import TimmVisionEncoder

    return TimmVisionEncoder(config, name, checkpoint)


def _load_open_clip(config: VisionEncoderConfig, name: str, checkpoint: str | None) -> VisionEncoder:
    from vision_encoders.open_clip_encoder import OpenClipVisionEncoder

    return OpenClipVisionEncoder(config, name, checkpoint)


# Backends are imported lazily so that e.g. an hf-only user never imports open_clip.
BACKENDS: dict[str, Loader] = {"hf": _load_hf, "timm": _load_timm, "open_clip": _load_open_clip}
# Backends whose spec may carry `@<checkpoint>`; an hf id/path is taken whole.
_TAKES_CHECKPOINT = {"timm", "open_clip"}


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """`backend:name[@checkpoint]` -> (backend, name, checkpoint or None). Exact backend names only."""
    backend, sep, rest = spec.partition(":")
    if not sep or backend not in BACKENDS:
        raise ValueError(f"vision encoder spec {spec!r}: unknown backend {backend!r}; known: {sorted(BACKENDS)}")
    if not rest:
        raise ValueError(f"vision encoder spec {spec!r}: empty model name after '{backend}:'")
    if backend not in _TAKES_CHECKPOINT:
        return backend, rest, None
    name, at, checkpoint = rest.partition("@")
    if not name or (at and not checkpoint):
        raise ValueError(f"vision encoder spec {spec!r}: expected '{backend}:<name>[@<checkpoint>]'")
    return backend, name, checkpoint or None


def resolve_path(value: str | None, base_dir: Path | None) -> str | None:
    """A `./`-relative path is taken relative to `base_dir` (the checkpoint directory); others are unchanged."""
    if value is None or not value.startswith("./"):
        return value
    if base_dir is None:
        raise ValueError(f"relative path {value!r} in a vision encoder spec needs base_dir (the checkpoint dir)")
    return str(Path(base_dir) / value[2:])


def load_vision_encoder(config: VisionEncoderConfig, base_dir: Path | None = None) -> VisionEncoder:
    """Build the encoder named by `config.spec` (frozen except the last `config.unfreeze_last_n` blocks)."""
    backend, name, checkpoint = parse_spec(config.spec)
    return BACKENDS[backend](config, resolve_path(name, base_dir), resolve_path(checkpoint, base_dir))
