"""Run visibility: metrics JSONL, TensorBoard events, a tqdm progress bar and a loss-curve PNG."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from vlm.atomic import atomic_file

METRICS_FILE = "metrics.jsonl"
LOSS_PNG = "loss_curve.png"
TB_DIR = "tensorboard"
NON_TTY_INTERVAL_S = 10.0  # progress-bar refresh interval when stderr is a file or pipe


def truncate_metrics(output_dir: str | Path, last_step: int, name: str = METRICS_FILE) -> None:
    """Drop records after `last_step` (written by a run killed after its last checkpoint) before resuming; `name`:
    another JSONL file of the run with a `step` in each line."""
    path = Path(output_dir) / name
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by kill -9
        if record.get("step", 0) <= last_step:
            kept.append(json.dumps(record))
    with atomic_file(path) as f:  # a kill while rewriting keeps the old file, not half of it
        f.writelines(k + "\n" for k in kept)


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLogger:
    """Writes one JSONL record per logged step (main rank only), mirrors scalars to TensorBoard, drives tqdm."""

    def __init__(self, output_dir: str | Path, *, total_steps: int, start_step: int = 0, enabled: bool = True,
                 tensorboard: bool = True, progress_bar: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.total_steps = total_steps
        self.start_step = start_step
        self._t0 = time.perf_counter()
        self._writer = None
        self._bar = None
        self._file = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.output_dir / METRICS_FILE, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.output_dir / TB_DIR), purge_step=start_step + 1)
        if progress_bar:
            from tqdm.auto import tqdm

            # Off a terminal every refresh is a new line in the log file: refresh rarely (the JSONL has each step).
            interactive = sys.stderr.isatty()
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=interactive,
                             file=sys.stderr, mininterval=0.1 if interactive else NON_TTY_INTERVAL_S)

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` for optimizer step `step` (1-based)."""
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(f"train/{key}", value, step)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            extra = {}
            if "mfu" in metrics:
                extra["mfu"] = f"{100 * metrics['mfu']:.1f}%"
            if "loader_wait_s" in metrics:
                extra["wait"] = f"{metrics['loader_wait_s']:.2f}s"
            if "padding_ratio" in metrics:
                extra["pad"] = f"{100 * metrics['padding_ratio']:.0f}%"
            if "peak_mem_mb" in metrics:
                extra["mem"] = f"{metrics['peak_mem_mb'] / 1024:.1f}G"
            self._bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}", lr=f"{metrics.get('lr', 0):.2e}",
                                  tok_s=f"{metrics.get('tokens_per_s', 0):.0f}", **extra, refresh=False)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        self._bar = self._writer = self._file = None


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def plot_loss_curve(output_dir: str | Path) -> Path | None:
    """Draw loss against step from metrics.jsonl into loss_curve.png; None when there is nothing to draw."""
    records = [r for r in read_metrics(output_dir) if isinstance(r.get("loss"), (int, float))]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per supervised token)")
    ax.set_title(f"training loss: {Path(output_dir).name}")
    ax.grid(alpha=0.3)
    path = Path(output_dir) / LOSS_PNG
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
