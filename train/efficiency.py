"""FLOP accounting for one training step (model FLOPs, MFU against a per-device peak), the padding ratio and
the ranks' load imbalance (max / mean of LLM tokens and of image tiles).

Convention (stated once, used by the trainer's log and by bench/vs_hf.py alike):
- every parameter that acts on a token costs 2 FLOPs per token forward; a trainable one 6 (forward 2,
  backward 4); a frozen one is counted forward only (2), as in the usual model-FLOPs count;
- the LLM's input embedding is a lookup (0 FLOPs); its LM head counts (once, when tied to the embedding) on the
  positions the loss needs — the supervised ones of a batch with labels, every real token otherwise: logits
  nobody reads are not model work, so a trainer that skips them is not credited with them (MFU stays <= 1);
- the projector's parameters act on each vision token of each image, the LLM's on each real (non-pad) token,
  the vision tower's on each of its tokens per image, and only when it runs (not on features from the cache);
- attention scores and values: 4 * layers * s^2 * width FLOPs per sequence of s tokens forward (the full,
  non-causal count), x3 when that transformer has trainable parameters. Packed rows count per sample.
"""
from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from instruct_data.rank_balance import imbalance

# Dense peaks in TFLOP/s (no sparsity) from the vendors' data sheets: (bf16, tf32, fp32). Matched in order, on
# word boundaries of `torch.cuda.get_device_name()`, so that "A10" does not match an A100.
GPU_PEAK_TFLOPS: list[tuple[str, tuple[float, float, float]]] = [
    ("H200", (989.0, 494.7, 66.9)),
    ("H100 PCIe", (756.0, 378.0, 51.2)),
    ("H100", (989.0, 494.7, 66.9)),
    ("A100", (312.0, 156.0, 19.5)),
    ("L40S", (362.1, 183.0, 91.6)),
    ("L4", (121.0, 60.0, 30.3)),
    ("A10G", (70.0, 35.0, 31.2)),
    ("A10", (125.0, 62.5, 31.2)),
    ("RTX 4090", (165.2, 82.6, 82.6)),
    ("RTX 3090", (71.0, 35.6, 35.6)),
    ("A6000", (154.8, 77.4, 38.7)),
]


def _numel(param: torch.Tensor) -> int:
    """Elements of the weight a parameter stands for: a ZeRO-3 partition holds 0 locally (`ds_numel` has its size),
    a bitsandbytes 4-bit weight packs two per byte (`quant_state.shape` has the unpacked shape)."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return int(torch.Size(quant_state.shape).numel())
    return int(getattr(param, "ds_numel", param.numel()))


def _split(params: list[nn.Parameter]) -> tuple[int, int]:
    trainable = sum(_numel(p) for p in params if p.requires_grad)
    return trainable, sum(_numel(p) for p in params) - trainable


def gpu_peak_tflops(name: str, precision: str, tf32: bool) -> float | None:
    """The table's peak for a GPU name and precision (`bf16`, or `fp32` with or without TF32); None if unknown."""
    for key, (bf16, tf32_peak, fp32) in GPU_PEAK_TFLOPS:
        if re.search(rf"(^|[\s\-]){re.escape(key)}($|[\s\-])", name):
            return bf16 if precision == "bf16" else (tf32_peak if tf32 else fp32)
    return None


@functools.lru_cache(maxsize=None)
def measured_peak_flops(device_type: str = "cpu", size: int = 768, repeats: int = 8) -> float:
    """Best fp32 matmul FLOP/s of this process on `device_type`, measured once per process (the best of several
    runs: on a shared machine the others are slowed by other jobs)."""
    device = torch.device(device_type)
    # its own generator: drawing from the global one, at the first step of a process, shifted every later dropout
    # mask, so a resumed or replayed run with dropout (LoRA's) differed from the run it continues
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator)
    b = torch.randn(size, size, device=device, generator=generator)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / max(best, 1e-9)


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """Peak FLOP/s of one device for `precision`, and where the figure comes from."""
    if device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
        tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
        tflops = gpu_peak_tflops(name, precision, tf32)
        if tflops is not None:
            return tflops * 1e12, f"{name} {precision}{' tf32' if precision == 'fp32' and tf32 else ''} data sheet"
        return measured_peak_flops("cuda"), f"{name}: measured fp32 matmul (not in the table)"
    return measured_peak_flops(device.type), f"{device.type}: measured fp32 matmul, {torch.get_num_threads()} threads"


@dataclass(frozen=True)
class Transformer:
    """What the FLOP count needs from one transformer: parameters that act per token and its attention shape."""

    trainable: int  # parameters per token that train
    frozen: int
    layers: int
    width: int  # heads x head dim

    @property
    def trains(self) -> bool:
        return self.trainable > 0

    def token_flops(self) -> int:
        return 6 * self.trainable + 2 * self.frozen

    def attention_flops(self, length: int) -> int:
        return 4 * self.layers * length * length * self.width * (3 if self.trains else 1)

    def sequence_flops(self, length: int) -> int:
        return length * self.token_flops() + self.attention_flops(length)


def _text_config(llm: nn.Module) -> Any:
    config = getattr(llm, "config", None)
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def llm_counts(llm: nn.Module) -> Transformer:
    """The LLM's per-token parameters (input embedding excluded unless tied to the head) and attention shape."""
    embedding = llm.get_input_embeddings().weight
    head = llm.get_output_embeddings()
    tied = head is not None and head.weight is embedding
    params = [p for p in llm.parameters() if tied or p is not embedding]
    trainable, frozen = _split(params)
    config = _text_config(llm)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    return Transformer(trainable, frozen, int(getattr(config, "num_hidden_layers", 0) or 0), heads * int(head_dim))


def head_counts(llm: nn.Module) -> Transformer:
    """The LM head's parameters per position (part of `llm_counts` too)."""
    head = llm.get_output_embeddings()
    trainable, frozen = _split(list(head.parameters())) if head is not None else (0, 0)
    return Transformer(trainable, frozen, 0, 0)


def vision_counts(encoder: nn.Module) -> tuple[Transformer, int]:
    """The vision tower's per-token parameters and attention shape, and its tokens per image (CLS included)."""
    trainable, frozen = _split(list(encoder.parameters()))
    blocks = encoder.blocks() if hasattr(encoder, "blocks") else []
    tokens = int(encoder.num_patches) + (1 if getattr(encoder, "has_cls_token", False) else 0)
    return Transformer(trainable, frozen, len(blocks), int(encoder.hidden_size)), tokens


class StepFlops:
    """Model FLOPs of a VisionLanguageModel's micro-batches, from its parameter counts (read once, at creation:
    build it after freezing and LoRA)."""

    def __init__(self, model: nn.Module) -> None:
        self.llm = llm_counts(model.llm)
        self.head = head_counts(model.llm)
        self.vision, self.vision_tokens = vision_counts(model.vision_encoder)
        projector = _split(list(model.projector.parameters()))
        self.projector = Transformer(projector[0], projector[1], 0, 0)
        self.projector_tokens = int(model.config.vision_num_tokens)

    def image_flops(self, encoder_runs: bool) -> int:
        """Vision tower (when it runs) and projector FLOPs for one image."""
        flops = self.projector_tokens * self.projector.token_flops()
        if encoder_runs:
            flops += self.vision.sequence_flops(self.vision_tokens)
        return flops

    def batch_flops(self, batch: Any, encoder_runs: bool) -> int:
        """FLOPs of one micro-batch: LLM over each real sequence plus its images."""
        mask = batch.attention_mask
        lengths = batch.sample_lengths
        if lengths is None:
            lengths = [[int(n)] for n in mask.sum(dim=1).tolist()]
        flops = sum(self.llm.sequence_flops(n) for row in lengths for n in row)
        if batch.labels is not None:  # the head only where the loss reads it (see the module docstring)
            real = sum(n for row in lengths for n in row)
            flops -= (real - batch.supervised_tokens()) * self.head.token_flops()
        return flops + images_in(batch) * self.image_flops(encoder_runs)


def images_in(batch: Any) -> int:
    counts = batch.image_counts
    if counts is not None:
        return int(sum(int(c) for c in counts))
    pixels = batch.pixel_values
    return 0 if pixels is None else int(pixels.shape[0])


def tiles_in(batch: Any) -> int:
    """Image tiles of one micro-batch: pixel rows (anyres: each image's tiles), else one an image (cached features)."""
    pixels = batch.pixel_values
    return int(pixels.shape[0]) if pixels is not None else images_in(batch)


def rank_imbalance(rank_tokens: list[float], rank_tiles: list[float]) -> dict[str, float]:
    """max / mean across ranks of a step's LLM tokens and of its image tiles (none with one rank)."""
    if len(rank_tokens) < 2:
        return {}
    return {"token_imbalance": imbalance(rank_tokens), "tile_imbalance": imbalance(rank_tiles)}


def token_slots(batch: Any) -> tuple[int, int]:
    """(real tokens, all token slots) of one micro-batch."""
    mask = batch.attention_mask
    return int(mask.sum()), int(mask.numel())


def padding_ratio(batches: list[Any]) -> float:
    """Pad tokens / all token slots over `batches` (0 when there are none)."""
    real = slots = 0
    for batch in batches:
        r, s = token_slots(batch)
        real, slots = real + r, slots + s
    return 1.0 - real / slots if slots else 0.0


class EfficiencyLog:
    """Per-step `mfu`, `padding_ratio` and `model_tflops` of this rank, and the run's summary line."""

    def __init__(self, model: nn.Module, device: torch.device, precision: str) -> None:
        try:
            self.flops: StepFlops | None = StepFlops(model)
        except (AttributeError, TypeError):  # not a VisionLanguageModel (e.g. a test double): no MFU
            self.flops = None
        self.device = device
        self.precision = precision
        self._peak: tuple[float, str] | None = None
        self.steps: list[dict[str, float]] = []

    @property
    def peak(self) -> tuple[float, str]:
        if self._peak is None:  # measured on first use (a CPU matmul run), not at construction
            self._peak = peak_flops(self.device, self.precision)
        return self._peak

    def step_metrics(self, batches: list[Any], encoder_ran: list[bool], seconds: float) -> dict[str, float]:
        """`batches`: this rank's non-empty micro-batches of the step; `encoder_ran[i]`: whether the vision tower
        ran on batch i (False when its features came from the cache)."""
        out = {"padding_ratio": padding_ratio(batches)}
        if self.flops is not None and seconds > 0:
            flops = sum(self.flops.batch_flops(b, ran) for b, ran in zip(batches, encoder_ran))
            out["model_tflops"] = flops / 1e12
            out["mfu"] = flops / seconds / self.peak[0]
        return out

    def record(self, metrics: dict[str, float]) -> None:
        self.steps.append({k: float(metrics[k]) for k in ("mfu", "padding_ratio", "loader_wait_s", "step_time_s",
                                                          "tokens", "peak_mem_mb", "samples_per_row",
                                                          "token_imbalance", "tile_imbalance") if k in metrics})

    def summary(self) -> str | None:
        """One line over the steps of this process (None before any step)."""
        if not self.steps:
            return None

        def total(key: str) -> float:
            return sum(s.get(key, 0.0) for s in self.steps)

        busy, wait = total("step_time_s"), total("loader_wait_s")
        parts = [f"efficiency over {len(self.steps)} step(s): {total('tokens') / busy if busy else 0:,.0f} tokens/s"]
        if any("mfu" in s for s in self.steps):
            mean_mfu = sum(s.get("mfu", 0.0) * s.get("step_time_s", 0.0) for s in self.steps) / busy if busy else 0.0
            parts.append(f"MFU {100 * mean_mfu:.1f}% of {self.peak[0] / 1e12:,.1f} TFLOP/s ({self.peak[1]})")
        parts.append(f"padding {100 * total('padding_ratio') / len(self.steps):.1f}% of token slots")
        if total("samples_per_row") > len(self.steps):  # packed rows
            parts.append(f"{total('samples_per_row') / len(self.steps):.2f} samples per row")
        if any("token_imbalance" in s for s in self.steps):  # several ranks
            parts.append(f"ranks' max/mean load {total('token_imbalance') / len(self.steps):.2f} in LLM tokens, "
                         f"{total('tile_imbalance') / len(self.steps):.2f} in image tiles")
        parts.append(f"waited on data {wait:.1f}s ({100 * wait / (wait + busy) if wait + busy else 0:.1f}%)")
        parts.append(f"peak memory {max(s.get('peak_mem_mb', 0.0) for s in self.steps):,.0f} MB")
        return "; ".join(parts)
