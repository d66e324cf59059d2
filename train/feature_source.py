"""`FeatureSource`: the vision features of training batches, read from the feature cache (and filled on a miss)."""
from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

from conversation.errors import ImageLoadError
from train.config import TrainConfig
from train.feature_cache import FeatureCache, FeatureCacheError, encoder_fingerprint
from train.freezing import vision_is_frozen
from train.recipe_registry import get_recipe
from train.strategies.base import Strategy
from vlm.batch import Batch
from vlm.inputs import load_pixels, stack_pixels


class FeatureSource:
    """Features of a batch's images from `cache`, in order.

    With `encode_on_miss` the images not cached yet are encoded once (from the batch's pixels, or decoded from
    their files when the dataset only resolved paths) and stored. Without it (ZeRO-3: the cache is filled before
    training by `train.feature_prefill`, and no rank may run the partitioned encoder alone) a miss is an error,
    and an image the fill could not decode (`bad`) raises ImageLoadError, so the step skips its records."""

    def __init__(self, cache: FeatureCache, encoder: nn.Module, image_processor: Any, *,
                 encode_on_miss: bool = True) -> None:
        self.cache = cache
        self.encoder = encoder
        self.image_processor = image_processor
        self.encode_on_miss = encode_on_miss
        self.bad: dict[str, str] = {}  # image key -> why the fill before training could not decode it

    def features(self, batch: Batch) -> torch.Tensor | None:
        """Float32 [N, T, D] features of the batch's images (None for a batch without images)."""
        keys = batch.image_keys
        if not keys:
            return None
        if not self.encode_on_miss:
            for key in keys:
                if key in self.bad:
                    raise ImageLoadError(key, self.bad[key])
            cached = self.cache.get(keys)
            if cached is None:
                raise FeatureCacheError(
                    f"images {self.cache.missing(keys)[:3]} are not in the feature cache filled before training; "
                    "under ZeRO-3 no rank may run the partitioned encoder alone. Did an image change on disk "
                    "during the run?")
            return cached
        return self.cache.get_or_compute(keys, lambda missing: self._encode(batch, missing))

    def _encode(self, batch: Batch, missing: list[str]) -> torch.Tensor:
        if batch.pixel_values is not None:
            index = {key: i for i, key in enumerate(batch.image_keys)}
            pixels = batch.pixel_values[[index[key] for key in missing]]
        else:
            # The dataset only resolved the paths (load_pixels=False), so a broken file surfaces here, as an
            # ImageLoadError naming the key: the step drops the records using it (or stops if strict).
            pixels = stack_pixels([load_pixels(key, self.image_processor) for key in missing])
        with torch.no_grad():
            param = next(self.encoder.parameters())
            return self.encoder(pixels.to(param.device, param.dtype))

    def flush(self) -> None:
        """Rows buffered by `get_or_compute` reach disk."""
        self.cache.flush()


def gathered_fingerprint(encoder: nn.Module, image_processor: Any) -> str:
    """`encoder_fingerprint` over the encoder's full weights. An encoder built under ZeRO-3's `zero.Init` holds empty
    partitions, so it is gathered first (a collective: every rank calls this); the key is then the same under
    every strategy."""
    params = list(encoder.parameters())
    whole = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        whole = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with whole:
        return encoder_fingerprint(encoder, image_processor)


def feature_source(cfg: TrainConfig, model: nn.Module, strategy: Strategy) -> FeatureSource | None:
    """The run's feature source when the feature cache is on (`feature_cache.enabled`, auto: on for a recipe that
    asks for it with a frozen encoder, off for anyres; the combinations that cannot work are refused by
    `train.rules`), else None. On a strategy that partitions every parameter the source never encodes: the cache
    is filled before training (`train.feature_prefill.prefill`)."""
    wanted = cfg.feature_cache.enabled
    if wanted is None:  # auto (off for anyres: tiles are not cached)
        anyres = model.config.vision.anyres
        wanted = get_recipe(cfg.recipe).feature_cache_auto and vision_is_frozen(model) and not anyres
    if not wanted:
        return None
    directory = cfg.feature_cache.dir or os.path.join(cfg.checkpoint.output_dir, "feature_cache")
    cache = FeatureCache(directory, gathered_fingerprint(model.vision_encoder, model.image_processor))
    return FeatureSource(cache, model.vision_encoder, model.image_processor,
                         encode_on_miss=not strategy.partitions_parameters)
