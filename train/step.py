"""One optimizer step over one accumulation window of micro-batches: counts, fail-loud guard, backward, step."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from conversation.errors import ImageLoadError
from train.errors import NonFiniteLossError
from train.feature_source import FeatureSource
from train.guards import DataGuard
from train.preference import STAT_NAMES, PreferenceObjective, preference_loss
from train.strategies.base import Strategy
from vlm.batch import Batch


@dataclass
class SkipTally:
    """Records skipped by this process: counts by kind (the trainer state's, saved in checkpoints) and their log."""

    counts: dict[str, int]
    log: list[tuple[str, str]] = field(default_factory=list)  # (record id, reason), since this process started

    def add(self, record_id: object, reason: object) -> None:
        kind = str(reason).split(":", 1)[0]  # the data layer's reasons start with their kind
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.log.append((str(record_id), str(reason)))


@dataclass
class StepInputs:
    """What a step needs besides its micro-batches."""

    model: nn.Module  # the strategy's wrapped model: called with a Batch, it returns the VLM's `TokenLoss`
    strategy: Strategy
    precision: str  # resolved: fp32 | bf16
    guard: DataGuard
    skips: SkipTally
    pad_token_id: int
    max_grad_norm: float
    strict: bool = False  # data.guards.strict: an image that cannot be decoded stops the run instead of skipping
    features: FeatureSource | None = None  # feature cache on: vision features instead of pixels
    preference: PreferenceObjective | None = None  # recipe `prefer`: the loss is over the batches' pairs


@dataclass
class StepOutcome:
    """What one step did, summed over all processes except `batches` and `encoder_ran` (this process's)."""

    loss: float  # mean next-token loss per supervised token (prefer: per pair); NaN when nothing stepped
    grad_norm: float  # before clipping; NaN when nothing stepped
    supervised_tokens: float
    tokens: float
    records: float
    rows: float
    batches: list[Batch]  # this process's micro-batches that reached the model
    encoder_ran: list[bool]  # per batch: whether the vision tower ran (False: features from the cache)
    passes: int  # forward + backward passes this process ran (the same on every rank: `train.lockstep`)
    extra: dict[str, float] = field(default_factory=dict)  # prefer: reward accuracy and margins (per pair)


def summed_token_loss(vlm: nn.Module, batch: Batch, device: torch.device,
                      vision_features: torch.Tensor | None = None) -> torch.Tensor:
    """Sum (not mean) of fp32 next-token cross-entropy over the supervised positions of one micro-batch, from the
    (unwrapped) VLM; the LM head sees supervised positions only (`vlm.lm_loss`), never [B, T, V] logits."""
    return vlm.loss(batch.to(device), vision_features).loss


def train_step(inputs: StepInputs, window: list[Batch | None]) -> StepOutcome:
    """One optimizer step of `window` (this process's micro-batches; None or an empty batch where every record
    was skipped).

    The gradient is d(sum of token losses)/d(theta) / (supervised tokens of all processes), whatever the
    accumulation and world size. Every process runs one forward and backward per micro-batch, an empty one as a
    zero-loss pass, so DDP / ZeRO see the same passes and collectives on every rank; when no process has a
    supervised token, no process runs any and nothing steps. The guard judges the step (same verdict on every
    rank) before any forward; a non-finite loss or gradient norm stops before the optimizer steps."""
    strategy, device = inputs.strategy, inputs.strategy.device
    skips_before = len(inputs.skips.log)
    for batch in window:
        for record_id, reason in batch.skipped if batch is not None else []:
            inputs.skips.add(record_id, reason)
    features: list[torch.Tensor | None] = []
    with strategy.autocast(inputs.precision):
        for index, batch in enumerate(window):
            window[index], batch_features = _cached_features(inputs, batch)
            features.append(batch_features)
    window = [b if b is not None and b.num_rows > 0 else None for b in window]
    kept = [b for b in window if b is not None]
    counts = torch.tensor([float(sum(b.supervised_tokens() for b in kept)),
                           float(sum(int(b.attention_mask.sum()) for b in kept)),
                           float(sum(b.num_records for b in kept)),
                           float(sum(b.num_rows for b in kept))], dtype=torch.float64, device=device)
    strategy.all_reduce_sum(counts)
    supervised, tokens, records, rows = (float(x) for x in counts.tolist())
    inputs.guard.after_step(strategy, len(window), records, supervised, len(inputs.skips.log) - skips_before,
                            inputs.skips.log)
    # what the loss is a mean over: supervised tokens, or (prefer) pairs, which have supervised tokens on both sides
    units = (records if supervised > 0 else 0.0) if inputs.preference is not None else supervised
    loss_sum, passes = _accumulate_gradients(inputs, window, features, units)
    strategy.all_reduce_sum(loss_sum)
    loss = float(loss_sum[0]) / units if units > 0 else float("nan")
    extra = {name: float(value) / units for name, value in zip(STAT_NAMES, loss_sum[1:].tolist())} \
        if inputs.preference is not None and units > 0 else {}
    grad_norm = float("nan")
    if supervised > 0:
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"non-finite loss ({loss}); the run stopped before the optimizer step.")
        grad_norm = strategy.clip_and_step(inputs.max_grad_norm)
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(f"non-finite gradient norm ({grad_norm}); the run stopped.")
    strategy.zero_grad()
    encoder_ran = [f is None and b.pixel_values is not None for b, f in zip(window, features) if b is not None]
    return StepOutcome(loss, grad_norm, supervised, tokens, records, rows, kept, encoder_ran, passes, extra)


def _accumulate_gradients(inputs: StepInputs, window: list[Batch | None], features: list[torch.Tensor | None],
                          units: float) -> tuple[torch.Tensor, int]:
    """Forward and backward of every micro-batch (none at all when no process has a supervised token); returns
    this process's summed loss (prefer: then the sums of `STAT_NAMES`) and the passes run. The loss is divided by
    `units` (all processes' supervised tokens, or pairs), x world_size: DDP / DeepSpeed average gradients over
    ranks."""
    strategy, device = inputs.strategy, inputs.strategy.device
    loss_sum = torch.zeros(1 + (len(STAT_NAMES) if inputs.preference is not None else 0), dtype=torch.float64,
                           device=device)
    if units == 0:
        return loss_sum, 0
    scale = strategy.world_size / units
    autocast = strategy.autocast(inputs.precision)
    last = len(window) - 1
    for index, batch in enumerate(window):
        # Gradients are reduced across ranks by the backward outside no_sync, which every rank runs.
        sync = contextlib.nullcontext() if index == last else strategy.no_sync(inputs.model)
        with sync:
            if batch is None:
                strategy.backward(_zero_loss(inputs, autocast))
                continue
            with autocast:
                # the host batch: `VisionLanguageModel.loss` reads its bookkeeping there, then moves it
                if inputs.preference is not None:
                    token_loss, stats = preference_loss(inputs.preference, inputs.model, batch, features[index])
                    loss_sum[1:] += stats.to(device)
                else:
                    token_loss = inputs.model(batch, vision_features=features[index]).loss
            if not token_loss.requires_grad:  # e.g. a text-only batch in align: nothing trainable was used
                token_loss = token_loss + _zero_link(inputs.model, device)
            strategy.backward(token_loss * scale)
        loss_sum[0] += token_loss.detach().double()
    return loss_sum, 2 * len(window)


def _cached_features(inputs: StepInputs, batch: Batch | None) -> tuple[Batch | None, torch.Tensor | None]:
    """The feature source's features for `batch`, before any token is counted: with the cache on, images are
    decoded on first use, so a record whose image cannot be decoded is dropped here (skipped and counted like the
    data layer's skips), or stops the run when `data.guards.strict` is set."""
    if inputs.features is None or batch is None or batch.num_rows == 0:
        return batch, None
    while True:
        try:
            return batch, inputs.features.features(batch)
        except ImageLoadError as err:
            bad = sorted({owner for owner, key in zip(batch.record_image_owners(), batch.image_keys)
                          if key == err.path})
            if not bad:
                raise
            if inputs.strict:
                raise ImageLoadError(err.path, f"{err.reason} (records {[batch.ids[i] for i in bad]}; "
                                     "data.guards.strict stops on a bad image)") from None
            for i in bad:
                inputs.skips.add(batch.ids[i], f"image: {err}")
            batch = batch.without_records(bad, inputs.pad_token_id)
            if batch.num_rows == 0:
                return batch, None


def _zero_loss(inputs: StepInputs, autocast: contextlib.AbstractContextManager) -> torch.Tensor:
    """0 from a forward of the wrapped model on one unsupervised pad token, so that DDP / ZeRO see a real forward
    and backward (their gradient hooks and unused-branch touches run as for any text-only batch)."""
    device = inputs.strategy.device
    with autocast:
        loss = inputs.model(Batch.empty(inputs.pad_token_id)).loss  # a sum over no positions: 0
    if not loss.requires_grad:
        loss = loss + _zero_link(inputs.model, device)
    return loss * 0.0


def _zero_link(model: nn.Module, device: torch.device) -> torch.Tensor:
    """0 attached to every trainable parameter, so backward runs (and DDP syncs zeros) on every rank."""
    params = [p for p in model.parameters() if p.requires_grad]
    return sum((p.sum() * 0.0 for p in params), torch.zeros((), device=device))  # ZeRO-3: p may be empty
