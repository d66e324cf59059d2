"""Length- and modality-grouped samplers (as LLaVA's group_by_modality_length), distributed-aware and resumable."""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def _steps(indices: Sequence[int], lengths: Sequence[int], step: int, mult: int) -> tuple[list[list[int]], list[int]]:
    """Cut `indices` into megabatches of `mult` steps, sort each by length, cut into global steps of `step` items.

    Returns (full steps, leftover indices that do not fill a step).
    """
    steps: list[list[int]] = []
    size = step * mult
    for start in range(0, len(indices), size):
        mb = sorted(indices[start:start + size], key=lambda j: abs(lengths[j]), reverse=True)
        steps.extend(mb[k:k + step] for k in range(0, len(mb), step))
    leftover = steps.pop() if steps and len(steps[-1]) < step else []
    return steps, leftover


class LengthGroupedSampler(Sampler[int]):
    """Yields this rank's indices so that every batch holds samples of similar length.

    Indices are shuffled per (seed, epoch) and cut into megabatches of `megabatch_steps` global steps
    (a global step is `world_size * batch_size` samples); each megabatch is sorted by length and cut into
    steps, and the steps are shuffled. Rank r takes the r-th `batch_size` slice of every step, so ranks
    see disjoint, equal shares of similar lengths. (LLaVA's sampler sorts within one step only and
    then balances lengths across ranks, which leaves most padding in place.) The total is padded by
    repeating the start to a multiple of `world_size`, or trimmed with `drop_last`.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = False,
        megabatch_steps: int = 16,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if batch_size < 1 or not lengths:
            raise ValueError("need batch_size >= 1 and at least one length")
        self.lengths = [int(x) for x in lengths]
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.drop_last = drop_last
        self.megabatch_steps = megabatch_steps
        self.epoch = 0
        self._start = 0  # indices of this epoch already consumed (resume)
        self._yielded = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _even(self, order: list[int]) -> list[int]:
        n = len(order)
        if self.drop_last:
            return order[: n - n % self.world_size]
        extra = (-n) % self.world_size
        return order + (order * (extra // max(n, 1) + 1))[:extra]

    def _global_order(self, rng: np.random.Generator) -> list[list[int]]:
        """Global steps (lists of `world_size * batch_size` indices, the last one possibly shorter), in order."""
        order = self._even([int(i) for i in rng.permutation(len(self.lengths))])
        steps, leftover = _steps(order, self.lengths, self.world_size * self.batch_size, self.megabatch_steps)
        steps = [steps[k] for k in rng.permutation(len(steps))]
        return steps + ([leftover] if leftover else [])

    def global_steps(self) -> list[list[int]]:
        """Every rank's samples of each whole global step of the current epoch (`world_size * batch_size` each),
        in order: what a packer that shares rows out by cost starts from (the same on every rank)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        return [step for step in self._global_order(rng) if len(step) == self.world_size * self.batch_size]

    def rank_indices(self) -> list[int]:
        """This rank's full index list for the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        out: list[int] = []
        for step in self._global_order(rng):
            share = len(step) // self.world_size  # a multiple of world_size by construction
            out.extend(step[self.rank * share:(self.rank + 1) * share])
        return out

    def __iter__(self) -> Iterator[int]:
        indices = self.rank_indices()
        start, self._start = self._start, 0
        self._yielded = start
        for idx in indices[start:]:
            self._yielded += 1
            yield idx

    def __len__(self) -> int:
        n = len(self.lengths)
        total = n - n % self.world_size if self.drop_last else n + (-n) % self.world_size
        return total // self.world_size - self._start

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Epoch and position; pass `consumed` (samples this rank trained on) since DataLoader prefetch runs ahead."""
        return {"epoch": self.epoch, "seed": self.seed, "position": self._yielded if consumed is None else consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler seed {self.seed} differs from the checkpoint's {state['seed']}")
        self.epoch = int(state["epoch"])
        self._start = int(state["position"])


class ModalityLengthGroupedSampler(LengthGroupedSampler):
    """Like LengthGroupedSampler, but image and text-only samples (negative lengths) never share a megabatch."""

    def _global_order(self, rng: np.random.Generator) -> list[list[int]]:
        order = self._even([int(i) for i in rng.permutation(len(self.lengths))])
        step = self.world_size * self.batch_size
        image_steps, image_left = _steps([i for i in order if self.lengths[i] > 0], self.lengths, step, self.megabatch_steps)
        text_steps, text_left = _steps([i for i in order if self.lengths[i] <= 0], self.lengths, step, self.megabatch_steps)
        steps = image_steps + text_steps
        steps = [steps[k] for k in rng.permutation(len(steps))]
        # The two partial steps go last, together (as LLaVA); their joint size is a multiple of world_size.
        leftover = sorted(image_left + text_left, key=lambda j: abs(self.lengths[j]), reverse=True)
        return steps + [leftover[k:k + step] for k in range(0, len(leftover), step)]
