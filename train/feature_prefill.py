"""Fill the feature cache before the engine starts (ZeRO-3): each rank encodes the images of its own micro-batches.

Under ZeRO-3 every parameter, the frozen encoder's too, is partitioned across ranks and gathered by collectives
when its module runs; a rank that met an uncached image during training would run the encoder alone and the
collectives would diverge (a hang). So before `deepspeed.initialize` (while each rank still holds the whole
encoder) every rank encodes the images its micro-batches of this run will use; during training no rank runs
the encoder, and an image the fill could not decode skips its records as usual.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from conversation.errors import ImageLoadError
from instruct_data.item import Item
from instruct_data.preference import PairItem
from train.config import TrainConfig
from train.feature_cache import FeatureCache
from train.feature_source import FeatureSource
from train.loop import TrainData
from train.runtime import grad_accum_steps
from train.strategies.base import Strategy
from vision_encoders.preprocess import ImageProcessor
from vlm.inputs import load_pixels


@dataclass
class PrefillReport:
    """What one rank's fill did: images encoded now, found cached, and undecodable (key -> reason)."""

    encoded: int = 0
    cached: int = 0
    bad: dict[str, str] = field(default_factory=dict)


def planned_micro_batches(cfg: TrainConfig, data: TrainData, world_size: int) -> Iterator[list[int]]:
    """This rank's micro-batches (index lists) the run will train on, in order, as `Trainer.fit` walks them
    (whole optimizer steps per epoch, `max_steps` or `epochs` of them)."""
    accum = grad_accum_steps(cfg.schedule.global_batch_size, cfg.schedule.micro_batch_size, world_size)
    steps_per_epoch = len(data.epoch_batches(0)) // accum
    if steps_per_epoch == 0:
        return
    schedule = cfg.schedule
    remaining = schedule.max_steps if schedule.max_steps > 0 else math.ceil(schedule.epochs * steps_per_epoch)
    epoch = 0
    while remaining > 0:
        steps = min(remaining, steps_per_epoch)
        yield from data.epoch_batches(epoch)[: steps * accum]
        remaining -= steps
        epoch += 1


def prefill_features(cache: FeatureCache, dataset: Any, micro_batches: Iterator[list[int]], encoder: nn.Module,
                     image_processor: ImageProcessor, batch_size: int = 32) -> PrefillReport:
    """Encode every image of `micro_batches` not yet cached (each once), `batch_size` at a time, and flush.

    Items come from `dataset[i]` exactly as training will see them (skipped records need no image); an image
    that cannot be decoded (or is too extreme for the processor) is recorded in `report.bad` rather than stopping
    the fill."""
    report = PrefillReport()
    keys: list[str] = []
    for batch in micro_batches:
        for index in batch:
            item = dataset[index]
            if isinstance(item, (Item, PairItem)):
                keys.extend(item.image_keys)
    unique = list(dict.fromkeys(keys))
    todo = cache.missing(unique)
    report.cached = len(unique) - len(todo)
    param = next(encoder.parameters())
    pending: list[tuple[str, torch.Tensor]] = []

    def encode(rows: list[tuple[str, torch.Tensor]]) -> None:
        pixels = torch.stack([p for _, p in rows]).to(device=param.device, dtype=param.dtype)
        with torch.no_grad():
            cache.put([k for k, _ in rows], encoder(pixels).float())
        report.encoded += len(rows)

    for key in todo:
        try:
            pending.append((key, load_pixels(key, image_processor).values[0]))
        except ImageLoadError as err:
            report.bad[key] = err.reason
            continue
        if len(pending) == batch_size:
            encode(pending)
            pending = []
    if pending:
        encode(pending)
    cache.flush()
    return report


def prefill(cfg: TrainConfig, model: nn.Module, data: TrainData, strategy: Strategy, source: FeatureSource) -> None:
    """Before the engine starts: every rank encodes the images of its own micro-batches (the encoder still whole
    on each rank), then all wait at a barrier; `source` then only reads, and skips what the fill could not
    decode (`source.bad`)."""
    model.vision_encoder.to(strategy.device)
    params = list(model.vision_encoder.parameters())
    whole = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):  # built under zero.Init: gather the frozen encoder to read it
        import deepspeed

        whole = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    batches, dataset = planned_micro_batches(cfg, data, strategy.world_size), data.dataset
    if data.packer is not None:  # packed micro-batches are lists of rows of indices
        batches, dataset = ([i for row in mb for i in row] for mb in batches), data.dataset.dataset
    with whole:
        report = prefill_features(source.cache, dataset, batches, model.vision_encoder, model.image_processor,
                                  batch_size=max(cfg.schedule.micro_batch_size, 32))
    source.bad.update(report.bad)
    strategy.barrier()
    if strategy.is_main:
        print(f"feature cache filled before training (parameters partitioned): rank 0 encoded {report.encoded} "
              f"image(s), found {report.cached} cached, {len(report.bad)} undecodable", flush=True)
