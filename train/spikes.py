"""Spike reports: a step whose loss or gradient norm jumps past a robust threshold, written down with its records."""
from __future__ import annotations

import json
import math
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.optim import PART_OF_PREFIX
from train.per_sample import RecordLoss

SPIKES_DIR = "spikes"
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution x this = its standard deviation
LEVEL_STEPS = 5  # the level a value is compared with: the median of this many latest steps
WATCHED = ("loss", "grad_norm")


class SpikeDetector:
    """Judges each step's loss and gradient norm against the last `window` steps: `zscore` flags a value whose
    robust z-score exceeds `threshold`, `ratio` one above `threshold` x the window's mean. Only jumps up count;
    nothing is judged before `min_history` steps. Every process holds the same values, so all reach one verdict.

    The z-score is trend-proof: its level is the median of the latest `LEVEL_STEPS` steps and its scale the MAD of
    step-to-step differences (/ sqrt 2, x 1.4826: a standard deviation for Gaussian noise). A plain median/MAD over
    the window takes a falling loss's trend for noise (early in training a 5x jump scored under 6)."""

    def __init__(self, method: str, threshold: float, window: int, min_history: int) -> None:
        self.method, self.threshold, self.min_history = method, threshold, min_history
        self.history: dict[str, deque[float]] = {name: deque(maxlen=window) for name in WATCHED}

    def observe(self, values: dict[str, float]) -> dict[str, float]:
        """The watched values of this step that spiked, each with its score (z or ratio); then remembered."""
        spiked = {}
        for name in WATCHED:
            value, past = values.get(name, float("nan")), self.history[name]
            if not math.isfinite(value):
                continue
            if len(past) >= self.min_history:
                score = self.score(value, list(past))
                if score > self.threshold:
                    spiked[name] = score
            past.append(value)
        return spiked

    def score(self, value: float, past: list[float]) -> float:
        if self.method == "ratio":
            mean = sum(past) / len(past)
            return value / mean if mean > 0 else math.inf if value > 0 else 0.0
        level = statistics.median(past[-LEVEL_STEPS:])
        mad = statistics.median(abs(b - a) for a, b in zip(past, past[1:]))
        # a flat history (MAD 0) still has a scale: 1% of its level, so float noise is not a spike
        scale = max(MAD_TO_SIGMA * mad / math.sqrt(2), 0.01 * abs(level), 1e-12)
        return (value - level) / scale


def part_name(param_name: str) -> str:
    """The report's group of a parameter: `lora` for adapters, else its part (`vision`, `projector`, `llm`)."""
    if "lora_" in param_name:
        return "lora"
    return PART_OF_PREFIX.get(param_name.split(".", 1)[0], "other")


def group_norms_reader(model: nn.Module) -> Callable[[], dict[str, float] | None]:
    """A function returning the L2 norm of the current gradients per group (vision, projector, llm, lora), read
    before the optimizer steps; for strategies with `full_grads_on_parameters` (one process, DDP)."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(part_name(name), []).append(param)

    def read() -> dict[str, float] | None:
        names, norms = [], []
        for group, params in groups.items():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                names.append(group)
                norms.append(torch.nn.utils.get_total_norm(grads).float())
        if not names:
            return None
        return dict(zip(names, torch.stack(norms).tolist()))  # one host transfer

    return read


def write_report(output_dir: str | Path, step: int, spiked: dict[str, float], metrics: dict[str, float],
                 records: Sequence[RecordLoss], group_norms: dict[str, float] | None, thumbnail_px: int) -> Path:
    """`<output_dir>/spikes/step_N.json` with thumbnails `step_N_<k>.png` beside it; returns the JSON's path."""
    folder = Path(output_dir) / SPIKES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    count = 0
    for record in sorted(records, key=lambda r: -r.loss if r.tokens else math.inf):
        thumbs = []
        for path in record.images:
            name = f"step_{step}_{count}.png"
            count += 1
            error = _thumbnail(path, folder / name, thumbnail_px)
            thumbs.append({"image": path, "thumbnail": name} if error is None else {"image": path, "error": error})
        rows.append({**record.row(), "images": thumbs})
    report = {
        "step": step,
        "spiked": spiked,  # what jumped, and its score
        "loss": metrics.get("loss"),
        "grad_norm": metrics.get("grad_norm"),
        "group_grad_norms": group_norms if group_norms is not None else
        "unavailable: this strategy does not keep full gradients on the parameters (DeepSpeed ZeRO, FSDP2)",
        "records": rows,  # highest mean loss first
    }
    path = folder / f"step_{step}.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def _thumbnail(source: str, target: Path, px: int) -> str | None:
    """A PNG of `source` no larger than px x px at `target`; the error text when the image cannot be read."""
    from PIL import Image

    try:
        with Image.open(source) as image:
            image = image.convert("RGB")
            image.thumbnail((px, px))
            image.save(target, format="PNG")
    except (OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def summary(step: int, spiked: dict[str, float], path: Path, records: Sequence[RecordLoss]) -> str:
    """The one line a spike prints."""
    what = ", ".join(f"{name} (score {score:.1f})" for name, score in spiked.items())
    worst = max((r for r in records if r.tokens), key=lambda r: r.loss, default=None)
    top = f"; highest record loss {worst.loss:.3f}: {worst.id!r}" if worst is not None else ""
    return f"spike at step {step}: {what}; report {path}{top}"
