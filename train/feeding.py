"""Feeding the accelerator: one DataLoader for the whole run (persistent workers, prefetch, pinned memory), the
time the loop waits on it, non-blocking copies, TF32 for fp32 runs on GPUs."""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader


WAIT_WARN_FRACTION = 0.10  # warn when the loop waits on data for more than this share of a step
WAIT_WARN_EVERY_S = 300.0  # after the first warning, at most one per this many seconds


class EpochBatches:
    """A batch sampler whose epoch and resume skip are set before each pass: the one DataLoader (and its
    persistent workers) serves every epoch, and the batches are exactly `epoch_batches(epoch)[skip:]`. The
    main process iterates it, so setting it between passes is seen by the workers' next indices."""

    def __init__(self, epoch_batches: Callable[[int], list[list[int]]]) -> None:
        self.epoch_batches = epoch_batches
        self.epoch = 0
        self.skip = 0

    def set(self, epoch: int, skip: int) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.epoch_batches(self.epoch)[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self.epoch_batches(self.epoch)) - self.skip)


class Feeder:
    """`feeder.epoch(epoch, skip)` -> an iterator over that epoch's collated micro-batches from `skip` on."""

    def __init__(self, dataset: Any, collate: Callable[[list[Any]], Any],
                 epoch_batches: Callable[[int], list[list[int]]], *, num_workers: int, device: torch.device,
                 prefetch_factor: int = 4, seed: int = 0) -> None:
        self.sampler = EpochBatches(epoch_batches)
        workers = {"persistent_workers": True, "prefetch_factor": prefetch_factor} if num_workers > 0 else {}
        # A private generator keeps DataLoader from drawing on the global RNG, which resume restores exactly.
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, collate_fn=collate, num_workers=num_workers,
                                 pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed),
                                 **workers)

    def epoch(self, epoch: int, skip: int) -> "TimedIterator":
        self.sampler.set(epoch, skip)
        return TimedIterator(iter(self.loader))


class TimedIterator:
    """Wraps an iterator and adds up the seconds spent waiting in `next` until `take_wait()` reads them."""

    def __init__(self, inner: Iterator[Any]) -> None:
        self.inner = inner
        self.wait_s = 0.0

    def __iter__(self) -> "TimedIterator":
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        try:
            return next(self.inner)
        finally:
            self.wait_s += time.perf_counter() - start

    def take_wait(self) -> float:
        wait, self.wait_s = self.wait_s, 0.0
        return wait


class WaitWarner:
    """A one-line warning when the loop waited on data for more than 10 % of a step: the first time, then at
    most once every `every_s` seconds, with the number of such steps since the last warning."""

    def __init__(self, every_s: float = WAIT_WARN_EVERY_S, fraction: float = WAIT_WARN_FRACTION) -> None:
        self.every_s = every_s
        self.fraction = fraction
        self.last: float | None = None
        self.unreported = 0

    def check(self, step: int, wait_s: float, step_s: float, num_workers: int) -> str | None:
        total = wait_s + step_s
        if total <= 0 or wait_s / total <= self.fraction:
            return None
        self.unreported += 1
        now = time.monotonic()
        if self.last is not None and now - self.last < self.every_s:
            return None
        count, self.unreported, self.last = self.unreported, 0, now
        return (f"step {step}: waited {wait_s:.3f}s for data ({100 * wait_s / total:.0f}% of the step; "
                f"{count} such step(s) since the last warning); data.num_workers={num_workers}: raise it, "
                "or turn the feature cache on")


def enable_tf32(precision: str, device: torch.device) -> bool:
    """TF32 matmuls and convolutions for fp32 runs on a GPU; returns whether they are on."""
    if precision != "fp32" or device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True
