"""Run-time data guards: stop a run that trains nothing or skips more than its configured share, naming why."""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import torch

from train.errors import DataFailure

__all__ = ["DataFailure", "DataGuard", "summary_line"]

FIRST_NAMED = 3  # skipped records named in a failure message


class DataGuard:
    """Counts records trained and skipped across all processes, step by step, and stops the run when

    - no supervised token has reached the model in the first `fail_no_supervised_after` micro-batches
      (per process), or by the end of the run;
    - the share of skipped records exceeds `max_skip_ratio`, once `skip_warmup` records were seen, and at the end
      (so a run shorter than the warm-up is judged on all it saw).
    Every process reaches the same verdict: the counts are summed over processes before any decision.
    """

    def __init__(self, data_cfg: Any, num_image_tokens: int | None = None) -> None:
        guards = data_cfg.guards
        self.max_skip_ratio = float(guards.max_skip_ratio)
        self.skip_warmup = int(guards.skip_warmup)
        self.no_supervised_after = int(guards.fail_no_supervised_after)
        self.max_length = data_cfg.max_length
        self.num_image_tokens = num_image_tokens
        self.micro_batches = 0  # this process's, in this process's lifetime
        self.steps = 0
        self.trained = 0  # records that reached the model, all processes
        self.skipped = 0  # records skipped, all processes
        self.supervised = 0.0

    def after_step(self, strategy: Any, micro_batches: int, trained: float, supervised: float,
                   skipped_here: int, skip_log: Sequence[tuple[str, str]]) -> None:
        """Account one optimizer step (`trained`, `supervised`: already summed over processes; `skipped_here`:
        this process's skips in the step); raise DataFailure when a limit is crossed."""
        count = torch.tensor([float(skipped_here)], dtype=torch.float64, device=strategy.device)
        strategy.all_reduce_sum(count)
        self.steps += 1
        self.micro_batches += micro_batches
        self.trained += int(trained)
        self.skipped += int(count.item())
        self.supervised += supervised
        if self.supervised == 0 and self.micro_batches >= self.no_supervised_after:
            raise DataFailure(f"no supervised token reached the model in the first {self.micro_batches} micro-batches"
                              f" (data.guards.fail_no_supervised_after={self.no_supervised_after}): "
                              + self._detail(skip_log))
        if self.trained + self.skipped >= self.skip_warmup:
            self._check_ratio(skip_log)

    def at_end(self, skip_log: Sequence[tuple[str, str]]) -> None:
        """The last word on a run that took steps: it must have trained something, within the skip share."""
        if self.steps == 0:
            return
        if self.supervised == 0:
            raise DataFailure("the run trained nothing: no supervised token reached the model in its "
                              f"{self.steps} step(s); " + self._detail(skip_log))
        self._check_ratio(skip_log)

    def _check_ratio(self, skip_log: Sequence[tuple[str, str]]) -> None:
        seen = self.trained + self.skipped
        if seen and self.skipped / seen > self.max_skip_ratio:
            raise DataFailure(f"{self.skipped} of {seen} records seen were skipped ({self.skipped / seen:.1%}), above "
                              f"data.guards.max_skip_ratio={self.max_skip_ratio:g}: " + self._detail(skip_log))

    def _detail(self, skip_log: Sequence[tuple[str, str]]) -> str:
        kinds = Counter(reason.split(":", 1)[0] for _, reason in skip_log)
        text = f"{self.trained} records trained, {self.skipped} skipped"
        if kinds:
            text += " (this process: " + ", ".join(f"{kind} {n}" for kind, n in kinds.most_common()) + ")"
        if skip_log:
            text += "; first skipped: " + "; ".join(f"{rid!r}: {reason}" for rid, reason in skip_log[:FIRST_NAMED])
        if any("images do not fit" in reason for _, reason in skip_log[:FIRST_NAMED]):
            per_image = f"K={self.num_image_tokens} image tokens per image" if isinstance(self.num_image_tokens, int) \
                else "image tokens (counted per image size with anyres)"
            text += (f". Images do not fit max_length: {per_image} vs "
                     f"max_length={self.max_length}; raise data.max_length")
        elif self.supervised == 0 and not skip_log:
            text += ". No record was skipped: the records carry no supervised token under this template " \
                    "(no assistant reply, or a template that supervises nothing)"
        return text


def summary_line(trained: int, skipped: dict[str, int]) -> str:
    """`trained N records, skipped M (kind: n, ...)` for the end of a run."""
    total = sum(skipped.values())
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
    return f"trained {trained} records, skipped {total}" + (f" ({kinds})" if kinds else "")
