"""`LossView`: the module the strategies wrap, so that calling the wrapper returns the VLM's training loss."""
from __future__ import annotations

import torch
from torch import nn

from vlm.batch import Batch
from vlm.lm_loss import TokenLoss


class LossView(nn.Module):
    """Holds the VLM as its only child and forwards a `Batch` to `VisionLanguageModel.loss`.

    DDP, DeepSpeed and FSDP run their bookkeeping (gradient-sync preparation, parameter gathering) around the
    wrapped module's `forward`; the VLM's own `forward` is HF-style (tensors in, logits out), so the engines wrap
    this view instead, whose `forward` is the training loss. Strategies hand the VLM itself to the optimizer
    factory and return it from `unwrap` (`vlm_of`), so parameter and state-dict names stay the VLM's."""

    def __init__(self, vlm: nn.Module) -> None:
        super().__init__()
        self.vlm = vlm

    def forward(self, batch: Batch, vision_features: torch.Tensor | None = None, per_row: bool = False) -> TokenLoss:
        return self.vlm.loss(batch, vision_features, per_row=per_row)


def vlm_of(module: nn.Module) -> nn.Module:
    """The VLM inside a `LossView` (a module that is not a view is returned as it is)."""
    return module.vlm if isinstance(module, LossView) else module
