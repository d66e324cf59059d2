"""Per-record losses of a step, from the chunked head's per-position losses (no extra forward), and their log."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from conversation.tokenize import IGNORE_INDEX
from vlm.batch import Batch

PER_SAMPLE_FILE = "per_sample.jsonl"


@dataclass
class RecordLoss:
    """One record's share of a step: its supervised tokens and the sum of their next-token losses."""

    id: str
    tokens: int
    loss_sum: float
    images: list[str] = field(default_factory=list)  # its resolved image paths (thumbnails of a spike report)

    @property
    def loss(self) -> float:
        """Mean loss per supervised token (NaN when it had none)."""
        return self.loss_sum / self.tokens if self.tokens else float("nan")

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "supervised_tokens": self.tokens, "loss": self.loss, "loss_sum": self.loss_sum}


def position_owners(batch: Batch) -> torch.Tensor:
    """For each supervised position (row-major over the shifted labels, the order of `TokenLoss.per_token`), the
    index into `batch.ids` of the record it belongs to. Packed, position t of a row predicts label t + 1, which lies
    in the record whose span holds t + 1 (a record's first label is never a target, so no target crosses a seam)."""
    assert batch.labels is not None
    labels = batch.labels.cpu()
    rows, cols = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    if batch.sample_lengths is None:
        return rows
    # record index of every column of every row: row r's records are numbered from first[r]
    width = labels.shape[1]
    table = torch.full((labels.shape[0], width), -1, dtype=torch.long)
    first = 0
    for r, lengths in enumerate(batch.sample_lengths):
        at = 0
        for k, length in enumerate(lengths):
            table[r, at:at + length] = first + k
            at += length
        first += len(lengths)
    return table[rows, cols + 1]


def record_losses(batch: Batch, per_token: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """(supervised tokens per record, summed loss per record as a device tensor) of one micro-batch."""
    owners = position_owners(batch)
    if owners.numel() != per_token.numel():
        raise ValueError(f"{per_token.numel()} per-position losses for {owners.numel()} supervised positions")
    n = batch.num_records
    sums = torch.zeros(n, dtype=torch.float64, device=per_token.device)
    # queued behind the step's work, never waited for (as `vlm.lm_loss` moves its positions); host-side counts
    sums.index_add_(0, owners.to(per_token.device, non_blocking=True), per_token.double())
    return torch.bincount(owners, minlength=n).tolist(), sums


def collect(parts: Sequence[tuple[Batch, list[int], torch.Tensor]]) -> list[RecordLoss]:
    """The `RecordLoss` of every record of the micro-batches in `parts` ((batch, `record_losses(batch, ...)`) each),
    with one host transfer for all of them."""
    if not parts:
        return []
    values = torch.cat([sums for _, _, sums in parts]).tolist()
    out: list[RecordLoss] = []
    at = 0
    for batch, tokens, _ in parts:
        images: list[list[str]] = [[] for _ in range(batch.num_records)]
        for owner, key in zip(batch.record_image_owners(), batch.image_keys):
            images[owner].append(key)
        ids = batch.ids or [f"#{i}" for i in range(batch.num_records)]
        for k in range(batch.num_records):
            out.append(RecordLoss(str(ids[k]), int(tokens[k]), float(values[at + k]), images[k]))
        at += batch.num_records
    return out


def gather(strategy: Any, records: list[RecordLoss]) -> list[RecordLoss]:
    """Every process's records on every process, in rank order (a collective: every rank calls it)."""
    if strategy.world_size == 1:
        return list(records)
    parts = strategy.all_gather_object([asdict(r) for r in records])
    return [RecordLoss(**r) for part in parts for r in part]


def wanted(mode: str, every: int, step: int) -> bool:
    """Whether `log.per_sample` asks for step `step`'s records: off, sampled (every `every` steps), every_step."""
    return mode == "every_step" or (mode == "sampled" and step % max(1, every) == 0)


def append_rows(output_dir: str | Path, step: int, records: Sequence[RecordLoss]) -> None:
    """One JSONL line per record of step `step` in `<output_dir>/per_sample.jsonl`."""
    with open(Path(output_dir) / PER_SAMPLE_FILE, "a") as handle:
        handle.writelines(json.dumps({"step": step, **r.row()}) + "\n" for r in records)


def table(records: Sequence[RecordLoss]) -> str:
    """The records as an aligned text table, highest mean loss first."""
    width = max([len("record")] + [len(r.id) for r in records])
    lines = [f"{'record':<{width}}  {'tokens':>7}  {'mean loss':>10}  {'loss sum':>12}"]
    for r in sorted(records, key=lambda r: -r.loss if r.tokens else float("inf")):
        lines.append(f"{r.id:<{width}}  {r.tokens:>7}  {r.loss:>10.4f}  {r.loss_sum:>12.4f}")
    return "\n".join(lines)
