"""Typed configs for stage 0 and the cache key that decides whether a backbone must be retrained."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from synthetic.corpus import LESSONS
from vlm.atomic import atomic_file

CACHE_FILE = "stage0.json"


@dataclass
class LLMPretrainConfig:
    """A tiny Llama trained by next-token prediction on the world's text corpus (`synthetic.corpus`).

    Each record is a row of its own (no attention across records: a record's answers must come from its own sheet,
    not from another record of the same scene); rows of similar length are batched up to `batch_tokens`.
    """

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 1024
    batch_tokens: int = 8192  # padded tokens per batch
    # Records sorted by length together into batches (0: the whole corpus). 256 mixes the kinds in every batch;
    # measured against 0: gate 71 vs 72 % (colour 99 vs 71, where 54 vs 72), text-only 28 vs 19 % (README).
    length_window: int = 0
    # Lookup warm-up before the corpus, one lesson (`synthetic.corpus.LESSONS`) at a time: each adds its records to
    # the pool for `lesson_steps` steps of `lookup_batch` records whose loss is on the looked-up words only (an
    # inventory's values, a one-question chat's answer), constant lr, no clipping (`synthetic.stage0.llm` says why).
    lookup_lessons: tuple[str, ...] = LESSONS
    lesson_steps: int = 300  # 0: no warm-up; 150: gate 83 % instead of 97 % (README)
    lookup_batch: int = 64
    steps: int = 2500
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    val_fraction: float = 0.02
    replies_only: bool = True  # loss on the replies (chats) and captions only: the skills, not the prompts
    gate_scenes: int = 300  # unseen scenes of the text gate scored after training (0: skip it)
    seed: int = 0


@dataclass
class ViTPretrainConfig:
    """A tiny CLIP (ViT + text tower) trained contrastively on image/caption pairs; only the ViT is reused.

    `patch_size` None makes one patch per grid cell (image side / 3: 24 pixels on the default 72-pixel world). `dense_weight` scales the
    per-cell caption term (0 turns it off: whole-image CLIP only); `dense_layer` is the hidden state it trains,
    the one the VLM configs select (`select_layer: -2`).
    """

    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    patch_size: int | None = None
    text_hidden_size: int = 64
    text_layers: int = 2
    projection_dim: int = 64
    max_caption_tokens: int = 48
    batch_size: int = 64
    steps: int = 1500
    lr: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.1
    dense_weight: float = 1.0
    position_init_std: float = 0.5
    dense_layer: int = -2
    seed: int = 0


def world_fingerprint(world: Path) -> str:
    """Hash of the world's manifest, which pins every generator setting (hence every byte of the world)."""
    manifest = world / "world.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: {world} is not a synthetic world (run `vlm synth --out {world}`)")
    return hashlib.sha256(manifest.read_bytes()).hexdigest()


def cache_key(config: LLMPretrainConfig | ViTPretrainConfig, world: Path) -> str:
    payload = json.dumps({"kind": type(config).__name__, "config": asdict(config),
                          "world": world_fingerprint(world)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def cached_metrics(out: Path, key: str, weights: str = "model.safetensors") -> dict | None:
    """The metrics of a finished run with the same key, or None when it must (re)train."""
    record = out / CACHE_FILE
    if not record.is_file() or not (out / weights).is_file():
        return None
    data = json.loads(record.read_text())
    return data.get("metrics") if data.get("key") == key else None


def write_cache(out: Path, key: str, config: LLMPretrainConfig | ViTPretrainConfig, metrics: dict) -> None:
    """Record a finished run (written last and atomically: it is what marks the run finished)."""
    with atomic_file(out / CACHE_FILE) as f:
        f.write(json.dumps({"key": key, "config": asdict(config), "metrics": metrics}, indent=2) + "\n")
