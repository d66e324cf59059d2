"""What the loop does with each step's per-record losses: the per-sample log and the spike reports."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from train import per_sample, spikes
from train.config import LogConfig
from train.step import StepOutcome


class StepWatch:
    """After each step: append its records to `per_sample.jsonl` when `log.per_sample` asks for the step, and
    write a spike report when its loss or gradient norm jumps (`log.spikes`). Every process calls `after_step`
    (the records of all processes are gathered to each, only on the steps that need them); the main one writes."""

    def __init__(self, log: LogConfig, strategy: Any, output_dir: str | Path) -> None:
        self.log, self.strategy, self.output_dir = log, strategy, Path(output_dir)
        s = log.spikes
        self.detector = spikes.SpikeDetector(s.method, s.threshold, s.window, s.min_history) if s.enabled else None
        self.reports = 0
        self.unreported = 0  # spikes after log.spikes.max_reports

    def group_norms(self, model: nn.Module) -> Callable[[], dict[str, float] | None] | None:
        """The per-group gradient-norm reader for `StepInputs.group_norms`; None when spike reports are off or the
        strategy does not keep full gradients on the parameters (the reports then say the norms are unavailable)."""
        if self.detector is None or not self.strategy.full_grads_on_parameters:
            return None
        return spikes.group_norms_reader(model)

    def after_step(self, step: int, outcome: StepOutcome, metrics: dict[str, float]) -> list[str]:
        """Lines to print (on the main process) about step `step`."""
        log_rows = per_sample.wanted(self.log.per_sample, self.log.per_sample_every, step)
        spiked = self.detector.observe(metrics) if self.detector is not None else {}
        if not log_rows and not spiked:
            return []
        records = per_sample.gather(self.strategy, outcome.samples)  # a collective: the same verdict on all ranks
        if not self.strategy.is_main:
            return []
        if log_rows:
            per_sample.append_rows(self.output_dir, step, records)
        if not spiked:
            return []
        if self.reports >= self.log.spikes.max_reports:
            self.unreported += 1  # said once: a noisy run must not print a line a step
            if self.unreported > 1:
                return []
            return [f"spike at step {step}: {', '.join(spiked)} (no report: log.spikes.max_reports="
                    f"{self.log.spikes.max_reports} written; later spikes are not reported)"]
        self.reports += 1
        path = spikes.write_report(self.output_dir, step, spiked, metrics, records, outcome.group_grad_norms,
                                   self.log.spikes.thumbnail_px)
        return [spikes.summary(step, spiked, path, records)]
