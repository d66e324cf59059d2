"""Make every trainable branch of the VLM take part in every backward (ZeRO buckets must match across ranks)."""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from vlm.anyres_features import NEWLINE
from vlm.batch import Batch


def _zero_touch(model: nn.Module, run_encoder: bool) -> torch.Tensor | None:
    """0 x the image branch run on nothing: the projector on an empty batch, behind the encoder on one blank
    image when `run_encoder` (the same chain as with images, so collectives and gradients come in the same order),
    and anyres' `image_newline`, which only image batches call."""
    projector, encoder, config = model.projector, model.vision_encoder, model.config
    encoder_trains = any(p.requires_grad for p in encoder.parameters())
    if not (run_encoder or encoder_trains or any(p.requires_grad for p in projector.parameters())):
        return None
    enc_param = next(encoder.parameters())
    param = next(projector.parameters(), enc_param)  # the identity projector has no parameters
    if run_encoder or encoder_trains:
        blank = torch.zeros(1, 3, encoder.image_size, encoder.image_size, device=enc_param.device, dtype=enc_param.dtype)
        with contextlib.nullcontext() if encoder_trains else torch.no_grad():
            features = encoder(blank)
        empty = features[:0].to(param.dtype) + (features.sum() * 0.0 if encoder_trains else 0.0)
    else:
        empty = torch.zeros(0, config.vision_num_tokens, encoder.hidden_size, device=param.device, dtype=param.dtype)
    touch = projector(empty).sum() * 0.0
    newline = getattr(projector, NEWLINE, None)
    if newline is not None:
        touch = touch + newline().sum() * 0.0
    return touch


def touch_unused_branches(model: nn.Module, run_encoder: bool = False,
                          called: nn.Module | None = None) -> list[RemovableHandle]:
    """Hooks that, on text-only batches, add 0 x (image branch) to the token embeddings.

    Without them a text-only micro-batch on one rank leaves the projector without gradients while another
    rank has them, DeepSpeed's gradient buckets differ and the collective aborts (gloo: "Received data size
    doesn't match"). The touch is added right after the embedding lookup, where image rows are spliced in,
    so gradients reach the buckets in the same order as for a batch with images. Under ZeRO-3 even frozen
    parameters are partitioned and gathered by the module that runs, so `run_encoder=True` runs the frozen
    encoder too (not with the feature cache, where no rank runs the encoder). `called` is the module the training
    step calls (the strategy's `LossView`, given a Batch); default: `model` itself, called with tensors.
    """
    text_only = {"on": False}

    def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        batch = args[0] if args and isinstance(args[0], Batch) else None  # the training call: view(batch, ...)
        pixels = batch.pixel_values if batch is not None else kwargs.get("pixel_values")
        text_only["on"] = torch.is_grad_enabled() and pixels is None and kwargs.get("vision_features") is None

    def after_embedding(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if not text_only["on"]:
            return output
        text_only["on"] = False
        touch = _zero_touch(model, run_encoder)
        return output if touch is None else output + touch.to(output.dtype)

    return [(called or model).register_forward_pre_hook(before, with_kwargs=True),
            model.llm.get_input_embeddings().register_forward_hook(after_embedding)]
