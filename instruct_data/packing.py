"""Sequence packing: whole samples into rows of at most `pack_length` tokens (first-fit decreasing inside the
grouped sampler's windows), rows into micro-batches, and the packer's resumable state."""
from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass
from typing import Any, Sequence

from instruct_data.rank_balance import assign_rows

Row = tuple[int, ...]  # dataset indices of the samples packed in one row, in row order
MicroBatch = list[Row]
BALANCES = ("count", "cost")  # rows to ranks: each packs its equal share of samples, or shared out by cost


def first_fit_decreasing(indices: Sequence[int], lengths: Sequence[int], capacity: int) -> list[Row]:
    """Rows of whole samples, each holding at most `capacity` tokens: longest first (ties in input order), each
    into the first row with room. Deterministic for a given input order; a sample is never split."""
    if capacity < 1:
        raise ValueError(f"pack capacity must be positive, got {capacity}")
    order = sorted(range(len(indices)), key=lambda k: (-abs(int(lengths[indices[k]])), k))
    rows: list[list[int]] = []
    room: list[int] = []
    for k in order:
        index = int(indices[k])
        size = abs(int(lengths[index]))
        if size > capacity:
            raise ValueError(f"sample {index} has {size} tokens, more than data.pack_length={capacity}")
        for r, free in enumerate(room):
            if size <= free:
                rows[r].append(index)
                room[r] -= size
                break
        else:
            rows.append([index])
            room.append(capacity - size)
    return [tuple(row) for row in rows]


def balanced_rows(indices: Sequence[int], lengths: Sequence[int], capacity: int, multiple: int = 1) -> list[Row]:
    """As many rows as first-fit decreasing needs (rounded up to a `multiple` of rows, at most one row a sample),
    but filled evenly: longest first, each sample into the emptiest row, so that rows of one micro-batch are of
    similar length (little padding to the longest). When that does not fit the capacity, the first-fit
    decreasing rows themselves."""
    ffd = first_fit_decreasing(indices, lengths, capacity)
    order = sorted(range(len(indices)), key=lambda k: (-abs(int(lengths[indices[k]])), k))
    count = min(-(-len(ffd) // multiple) * multiple, len(indices))
    rows: list[list[int]] = [[] for _ in range(count)]
    emptiest = [(0, j) for j in range(count)]  # a heap of (fill, row): its top is the emptiest row, lowest index
    for k in order:
        index = int(indices[k])
        fill, r = heapq.heappop(emptiest)
        fill += abs(int(lengths[index]))
        if fill > capacity:
            return ffd
        rows[r].append(index)
        heapq.heappush(emptiest, (fill, r))
    return [tuple(row) for row in rows if row]


def row_tokens(row: Row, lengths: Sequence[int]) -> int:
    return sum(abs(int(lengths[i])) for i in row)


def micro_batches(rows: Sequence[Row], lengths: Sequence[int], rows_per_micro_batch: int,
                  slots: int) -> list[MicroBatch]:
    """`rows` cut into micro-batches of at most `rows_per_micro_batch` rows (rows of similar fill together, so
    padding to the longest row of a micro-batch stays small), preceded by empty micro-batches up to `slots`."""
    ordered = sorted(rows, key=lambda row: -row_tokens(row, lengths))  # stable: FFD order among equals
    batches = [list(ordered[k:k + rows_per_micro_batch]) for k in range(0, len(ordered), rows_per_micro_batch)]
    if len(batches) > slots:
        raise ValueError(f"{len(rows)} packed rows need {len(batches)} micro-batches of {rows_per_micro_batch} rows, "
                         f"more than the {slots} of one step")
    # Empty ones first: the loop's last micro-batch of a step (the one that synchronises gradients) is a real one.
    return [[] for _ in range(slots - len(batches))] + batches


@dataclass(frozen=True)
class PackStats:
    """How full the packed micro-batches are: rows padded to the longest row of their micro-batch."""

    samples: int
    rows: int
    micro_batches: int  # non-empty ones
    tokens: int
    padded_tokens: int  # rows x longest row, summed over micro-batches

    @property
    def samples_per_row(self) -> float:
        return self.samples / self.rows if self.rows else 0.0

    @property
    def padding_ratio(self) -> float:
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


def pack_stats(batches: Sequence[MicroBatch], lengths: Sequence[int]) -> PackStats:
    samples = rows = used = tokens = padded = 0
    for batch in batches:
        if not batch:
            continue
        sizes = [row_tokens(row, lengths) for row in batch]
        samples += sum(len(row) for row in batch)
        rows += len(batch)
        used += 1
        tokens += sum(sizes)
        padded += len(sizes) * max(sizes)
    return PackStats(samples, rows, used, tokens, padded)


def unpacked_stats(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> PackStats:
    """The same figures for ordinary micro-batches (one sample per row), to compare padding with packing off."""
    return pack_stats([[(i,) for i in batch] for batch in batches], lengths)


def pack_preview(lengths: Sequence[int], capacity: int, step_samples: int, rows_per_micro_batch: int) -> PackStats:
    """What packing would make of samples of these token `lengths`, taken `step_samples` at a time in the order
    given (as the optimizer steps take them): rows, samples per row and the padding left (the pre-flight audit's
    estimate; training packs each step's samples of the grouped sampler the same way)."""
    batches: list[MicroBatch] = []
    for start in range(0, len(lengths), max(step_samples, 1)):
        step = list(range(start, min(start + step_samples, len(lengths))))
        rows = balanced_rows(step, lengths, capacity)
        batches += micro_batches(rows, lengths, rows_per_micro_batch, slots=len(rows))
    return pack_stats(batches, lengths)


class PackedBatchSampler:
    """This rank's packed micro-batches per epoch, inside the windows of a grouped sampler.

    The grouped sampler (`instruct_data.samplers`) orders whole optimizer steps (`step_size` samples of this
    rank, of similar lengths or one modality); each step's samples are packed into as many rows of at most
    `pack_length` tokens as first-fit decreasing needs (filled evenly, `balanced_rows`) and cut into
    `micro_batches_per_step` micro-batches of at most `rows_per_micro_batch` rows (empty ones first). So a step
    trains exactly the samples it trains unpacked, and the count of micro-batches per step is the same on every
    rank. With `balance="cost"` the step is packed whole (every rank's samples) and its rows shared out so that
    each rank gets about the same LLM tokens and image tiles (`tiles`: per sample; `global_plan`): the step still
    trains the same samples, only their ranks differ (the loss is normalised over every rank's tokens). Everything
    is a function of (seed, epoch, lengths, tiles), so the state to resume is the number of micro-batches done;
    `state_dict` adds a digest of the epoch's packing so a resume with other data or sizes is refused instead of
    silently training other packs.
    """

    def __init__(self, sampler: Any, lengths: Sequence[int], *, step_size: int, pack_length: int,
                 rows_per_micro_batch: int, micro_batches_per_step: int, balance: str = "count",
                 tiles: Sequence[int] | None = None) -> None:
        if balance not in BALANCES:
            raise ValueError(f"unknown rank balance {balance!r}; one of {', '.join(BALANCES)}")
        if rows_per_micro_batch * micro_batches_per_step < step_size:
            raise ValueError(f"{micro_batches_per_step} micro-batches of {rows_per_micro_batch} rows cannot hold a "
                             f"step of {step_size} one-sample rows")
        self.sampler = sampler
        self.lengths = [int(x) for x in lengths]
        self.step_size = step_size
        self.pack_length = pack_length
        self.rows_per_micro_batch = rows_per_micro_batch
        self.micro_batches_per_step = micro_batches_per_step
        self.balance = balance
        self.tiles = None if tiles is None else [int(x) for x in tiles]
        self.epoch = 0
        self.position = 0  # micro-batches of `epoch` consumed (the trainer passes its own count to state_dict)
        self._cache: dict[int, list[MicroBatch]] = {}

    def epoch_batches(self, epoch: int) -> list[MicroBatch]:
        if epoch not in self._cache:
            self.sampler.set_epoch(epoch)
            out: list[MicroBatch] = []
            for rows in self._step_rows():
                out.extend(micro_batches(rows, self.lengths, self.rows_per_micro_batch, self.micro_batches_per_step))
            self._cache = {epoch: out}
        self.epoch = epoch
        return self._cache[epoch]

    def _step_rows(self) -> list[list[Row]]:
        """This rank's packed rows of each whole step of the sampler's current epoch."""
        if self.balance == "cost":
            return self.global_plan(self.sampler.rank)
        indices = self.sampler.rank_indices()
        indices = indices[: len(indices) - len(indices) % self.step_size]  # whole steps only
        return [balanced_rows(indices[start:start + self.step_size], self.lengths, self.pack_length)
                for start in range(0, len(indices), self.step_size)]

    def global_plan(self, rank: int | None = None) -> Any:
        """balance="cost": each global step's samples (every rank's) packed into rows, as many as a multiple of
        the world size, and shared out by cost (`instruct_data.rank_balance`). Per step, every rank's rows; or
        only `rank`'s. A pure function of the sampler's (seed, epoch) and the lengths: identical on every rank."""
        world = self.sampler.world_size
        plan = []
        for step in self.sampler.global_steps():
            rows = balanced_rows(step, self.lengths, self.pack_length, multiple=world)
            shares = assign_rows(rows, self.lengths, self.tiles, world,
                                 self.rows_per_micro_batch * self.micro_batches_per_step)
            plan.append(shares if rank is None else shares[rank])
        return plan

    def stats(self, epoch: int) -> PackStats:
        """Samples, rows and padding of this rank's packed micro-batches of `epoch`."""
        return pack_stats(self.epoch_batches(epoch), self.lengths)

    def digest(self, epoch: int) -> str:
        """A short fingerprint of the epoch's packing (which samples in which rows of which micro-batch)."""
        text = repr(self.epoch_batches(epoch)).encode()
        return hashlib.sha256(text).hexdigest()[:16]

    def state_dict(self, epoch: int | None = None, consumed: int | None = None) -> dict[str, Any]:
        epoch = self.epoch if epoch is None else epoch
        return {"epoch": epoch, "position": self.position if consumed is None else consumed,
                "seed": getattr(self.sampler, "seed", None), "pack_length": self.pack_length,
                "rows_per_micro_batch": self.rows_per_micro_batch, "balance": self.balance,
                "digest": self.digest(epoch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check that this packer reproduces the saved epoch's packs, then continue after `position`."""
        epoch = int(state["epoch"])
        mine = self.state_dict(epoch, int(state["position"]))
        # The balance is named only when the packs differ: one rank packs alike either way.
        keys = ["seed", "pack_length", "rows_per_micro_batch", "digest"]
        if state.get("digest") != mine["digest"] and state.get("balance", "count") != mine["balance"]:
            keys.insert(3, "balance")
        for key in keys:
            saved = state.get(key, "count" if key == "balance" else None)  # older checkpoints: by count
            if saved != mine[key]:
                raise ValueError(f"cannot resume the packed data exactly: the checkpoint's packer has {key}="
                                 f"{saved!r}, this run's {mine[key]!r} (data, lengths or packing settings changed)")
        self.epoch, self.position = epoch, int(state["position"])
