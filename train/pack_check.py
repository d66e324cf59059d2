"""The packing self-check: before a packed run trains, one packed micro-batch against the same samples unpacked."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from vlm.batch import Batch

# Largest accepted difference of the mean loss per supervised token. fp32: the two layouts differ only in
# summation order. bf16 rounds every activation to 8 bits of mantissa, so the same isolation shows as ~1e-3.
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}


class PackingCheckError(RuntimeError):
    """Packed rows did not give the loss of the same samples unpacked: samples leak into each other."""


@dataclass(frozen=True)
class PackCheckResult:
    packed: float  # mean loss per supervised token, packed
    unpacked: float
    supervised_tokens: int
    samples: int
    rows: int

    @property
    def difference(self) -> float:
        return abs(self.packed - self.unpacked)

    def summary(self) -> str:
        return (f"packing self-check passed: {self.samples} samples in {self.rows} rows, loss per token packed "
                f"{self.packed:.8f} vs unpacked {self.unpacked:.8f} (difference {self.difference:.1e})")


def check_packing(model: nn.Module, packed: Batch, unpacked: Batch, *,
                  loss_fn: Callable[..., torch.Tensor], device: torch.device, precision: str = "fp32",
                  features_fn: Callable[[Batch], torch.Tensor | None] | None = None,
                  autocast: Any = None, tolerance: float | None = None) -> PackCheckResult | None:
    """`loss_fn(model, batch, device, features)` (the loop's summed token loss) on both layouts, in eval mode
    without gradients; PackingCheckError naming the samples when the per-token losses differ by more than the
    tolerance. None when the batch holds no supervised token (nothing to compare)."""
    if not unpacked.ids or unpacked.supervised_tokens() == 0:
        return None
    tolerance = TOLERANCE.get(precision, TOLERANCE["bf16"]) if tolerance is None else tolerance
    was_training = model.training
    model.eval()  # no dropout: both passes see the same function
    try:
        with torch.no_grad(), (autocast or contextlib.nullcontext()):
            losses = []
            for batch in (packed, unpacked):
                features = features_fn(batch) if features_fn is not None else None
                losses.append(float(loss_fn(model, batch, device, features)))
    finally:
        model.train(was_training)
    tokens = unpacked.supervised_tokens()
    result = PackCheckResult(losses[0] / tokens, losses[1] / tokens, tokens, len(unpacked.ids), packed.num_rows)
    if not result.difference <= tolerance:  # also catches NaN
        raise PackingCheckError(
            f"packing self-check failed: one packed micro-batch gives loss per token {result.packed:.8f}, the same "
            f"{result.samples} samples unpacked {result.unpacked:.8f} (difference {result.difference:.3e} > "
            f"{tolerance:g}, {precision}); samples {unpacked.ids[:8]}. Packed samples are not isolated "
            "(attention mask, positions or labels cross a sample boundary); the run stops. Train with "
            "data.packing=false, or report this with the attn_implementation in use.")
    return result
