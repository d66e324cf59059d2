"""The `prefer` recipe's reference: every pair's reply log-probabilities under the initial model, computed once
before training (the ranks share the records), cached on disk by content key; training then holds no second model.

The key covers what the numbers depend on: the record files' sha256 and selection, tokenizer, template, image
tokens and max_length (as the length cache), the image roots, the initial weights (the `model.init_from` files by
path, size and mtime, else a hash of every weight), precision and whether features come from the feature cache.
With LoRA the reference is the model with its adapters disabled (peft's `disable_adapter`), which the pre-pass uses.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from conversation.errors import ImageLoadError
from instruct_data.length_cache import cache_key as length_key
from instruct_data.length_cache import gathered_blocks, key_digest, read_keyed_table
from instruct_data.preference import PairItem, PreferenceCollator
from train.errors import DataFailure
from train.feature_source import FeatureSource
from train.strategies.base import Strategy
from vlm.batch import Batch

FORMAT = 1
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- key
def weights_fingerprint(init_from: str | None, model: nn.Module, partitioned: bool) -> str | None:
    """The initial weights: `init_from`'s files by (path, size, mtime), else a hash of every tensor (None under
    ZeRO-3, whose parameters are partitioned: no cache then)."""
    digest = hashlib.sha256()
    if init_from:
        for path in sorted(p for p in Path(init_from).resolve().rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()
    if partitioned:
        return None
    from train.feature_cache import _hash_state_dict

    return _hash_state_dict(model)


def reference_key(dataset: Any, weights: str | None, precision: str, cached_features: bool) -> dict[str, Any] | None:
    """Everything the reference log-probabilities depend on; None when some part cannot be fingerprinted."""
    key = length_key(dataset)
    if key is None or weights is None:
        return None
    roots = [str(Path(r).resolve()) for r in dataset.extra_roots]
    sources = getattr(dataset.records, "sources", [dataset.records])
    roots += sorted({str(Path(r).resolve()) for src in sources for r in getattr(src, "roots", [])})
    key.update({"reference_format": FORMAT, "weights": weights, "precision": precision,
                "cached_features": cached_features, "image_roots": roots})
    return key


def cache_file(directory: str | Path, key: dict[str, Any]) -> Path:
    return Path(directory) / f"reference-{key_digest(key)[:20]}.npz"


def read_reference(path: Path, key: dict[str, Any]) -> np.ndarray | None:
    """The cached [N, 2] log-probabilities, or None when absent, unreadable or written for other inputs."""
    return read_keyed_table(path, key, "reference cache", lambda data: np.asarray(data["logps"]), np.float64)


def write_reference(path: Path, key: dict[str, Any], values: np.ndarray) -> None:
    """Atomically (a reader sees the old file or the new one, whole)."""
    from vlm.atomic import atomic_file

    values = np.ascontiguousarray(values, dtype=np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, binary=True) as fh:
        np.savez(fh, logps=values, sha256=np.array(hashlib.sha256(values.tobytes()).hexdigest()),
                 key=np.frombuffer(json.dumps(key, sort_keys=True).encode(), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------- compute
@contextlib.contextmanager
def reference_mode(vlm: nn.Module) -> Iterator[None]:
    """The reference network: eval mode (no dropout), no autograd, LoRA adapters disabled."""
    from train.lora import is_lora

    was_training = vlm.training
    vlm.eval()
    adapters = vlm.llm.disable_adapter() if is_lora(vlm) else contextlib.nullcontext()
    try:
        with torch.no_grad(), adapters:
            yield
    finally:
        vlm.train(was_training)


def reply_logps(vlm: nn.Module, batch: Batch, vision_features: torch.Tensor | None = None) -> torch.Tensor:
    """[B] float64: each row's summed reply log-probability (the chunked supervised-only head, as training)."""
    return -vlm.loss(batch, vision_features, per_row=True).per_row.double().cpu()


def compute_block(vlm: nn.Module, dataset: Any, indices: list[int], micro_batch: int, passes: int,
                  pad_token_id: int, features: FeatureSource | None = None,
                  autocast: Callable[[], Any] = contextlib.nullcontext) -> np.ndarray:
    """[len(indices), 2] (chosen, rejected) reference log-probabilities of `indices` (NaN for a record that is
    skipped), `micro_batch` pairs per forward, in exactly `passes` forwards (empty ones after the last batch: under
    ZeRO-3 every rank must run the same forwards)."""
    out = np.full((len(indices), 2), np.nan)
    collate = PreferenceCollator(pad_token_id)
    chunks = [list(range(a, min(a + micro_batch, len(indices)))) for a in range(0, len(indices), micro_batch)]
    assert len(chunks) <= passes
    with reference_mode(vlm):
        for chunk in chunks + [[]] * (passes - len(chunks)):
            pairs = [(k, item) for k in chunk if isinstance(item := dataset[indices[k]], PairItem)]
            batch, vision = Batch.empty(pad_token_id), None
            while pairs:
                batch = collate([item for _, item in pairs])
                try:
                    vision = features.features(batch) if features is not None else None
                    break
                except ImageLoadError as err:  # that record is skipped when training meets it too
                    kept = [(k, item) for k, item in pairs if err.path not in item.image_keys]
                    if len(kept) == len(pairs):
                        raise
                    pairs, batch = kept, Batch.empty(pad_token_id)
            with autocast():
                logps = reply_logps(vlm, batch, vision)
            n = len(pairs)
            for row, (k, _) in enumerate(pairs):
                out[k] = (float(logps[row]), float(logps[n + row]))
    return out


def reference_logps(cfg: Any, vlm: nn.Module, dataset: Any, strategy: Strategy, precision: str,
                    features: FeatureSource | None = None) -> np.ndarray:
    """[N, 2] reference (chosen, rejected) reply log-probabilities of every record (NaN: skipped), read from the
    cache when written for these inputs, else computed (each rank a contiguous block) and written; the dataset's
    items carry them from now on. DataFailure (exit 4) when no pair is usable."""
    t0 = time.perf_counter()
    setting = cfg.prefer.reference_cache
    directory = None if setting == "off" else (
        Path(cfg.checkpoint.output_dir) / "reference_logps" if setting == "auto" else Path(setting))
    key = path = values = None
    if directory is not None:
        weights = weights_fingerprint(cfg.model.init_from, vlm, strategy.partitions_parameters)
        key = reference_key(dataset, weights, precision, features is not None)
        path = cache_file(directory, key) if key is not None else None
        values = read_reference(path, key) if path is not None else None
    world = strategy.world_size
    if world > 1:  # all ranks agree on hit or miss, or their collectives would not pair up
        hit = torch.tensor([int(values is not None)], dtype=torch.int64, device=strategy.device)
        if int(strategy.all_reduce_sum(hit).item()) != world:
            values = None
    how = f"read from {path}"
    if values is None:
        n, rank, size = len(dataset), strategy.rank, cfg.schedule.micro_batch_size
        start, stop = n * rank // world, n * (rank + 1) // world
        passes = math.ceil(math.ceil(n / world) / size)  # the largest block's forwards, on every rank
        autocast = lambda: strategy.autocast(precision)  # noqa: E731
        pad = int(vlm.config.pad_token_id)
        values = gathered_blocks(
            strategy, n, start,
            lambda: compute_block(vlm, dataset, list(range(start, stop)), size, passes, pad, features, autocast),
            np.float64, "another rank failed in the reference pre-pass (its log has the error)")
        if path is not None and key is not None and strategy.is_main:
            write_reference(path, key, values)
        how = f"computed in {time.perf_counter() - t0:.1f}s ({world} rank(s))"
    strategy.barrier()
    usable = int(np.isfinite(values).all(axis=1).sum())
    if usable == 0:
        raise DataFailure(f"no usable preference pair among {len(dataset)} record(s): every one was skipped "
                          "(`vlm data audit` names the bad records)")
    if strategy.is_main:
        print(f"reference log-probabilities of {usable} of {len(dataset)} pair(s) {how}", flush=True)
    dataset.reference = values
    return values

