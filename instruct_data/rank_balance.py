"""Packed rows shared out to ranks by cost (LLM tokens and image tiles), not by count, and the imbalance figure.

The cost of a row within one optimizer step is its share of the step's LLM tokens plus its share of the step's
image tiles: `tokens / step_tokens + tiles / step_tiles` (a term whose step total is 0 drops out). Both halves
weigh the same, so neither needs a unit conversion (a tile's ViT FLOPs in LLM tokens differ per model); a rank
whose load is 2/world of that sum holds about 1/world of both when the rows let it. Rows go out longest-
processing-time first: by cost, largest first, each to the rank with the least load so far that has a free row
slot. Every input is a list in a fixed order and every tie is broken by an index, so every rank computes the
same plan from the same lengths.
"""
from __future__ import annotations

from collections.abc import Sequence

Row = tuple[int, ...]


def row_loads(row: Row, lengths: Sequence[int], tiles: Sequence[int] | None) -> tuple[int, int]:
    """(LLM tokens, image tiles) of one packed row."""
    tokens = sum(abs(int(lengths[i])) for i in row)
    return tokens, (sum(int(tiles[i]) for i in row) if tiles is not None else 0)


def assign_rows(rows: Sequence[Row], lengths: Sequence[int], tiles: Sequence[int] | None, world_size: int,
                max_rows: int) -> list[list[Row]]:
    """`rows` (one step's, all ranks') -> each rank's rows, balanced by cost (module docstring); no rank gets more
    than `max_rows` rows. Each rank's rows keep their order in `rows`."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if len(rows) > world_size * max_rows:
        raise ValueError(f"{len(rows)} packed rows do not fit {world_size} ranks of at most {max_rows} rows")
    loads = [row_loads(row, lengths, tiles) for row in rows]
    step_tokens = sum(t for t, _ in loads)
    step_tiles = sum(v for _, v in loads)
    cost = [(t / step_tokens if step_tokens else 0.0) + (v / step_tiles if step_tiles else 0.0) for t, v in loads]
    order = sorted(range(len(rows)), key=lambda k: (-cost[k], k))
    load = [0.0] * world_size
    taken: list[list[int]] = [[] for _ in range(world_size)]
    for k in order:
        rank = min((r for r in range(world_size) if len(taken[r]) < max_rows),
                   key=lambda r: (load[r], len(taken[r]), r))
        taken[rank].append(k)
        load[rank] += cost[k]
    return [[rows[k] for k in sorted(ks)] for ks in taken]


def imbalance(per_rank: Sequence[float]) -> float:
    """max / mean of a per-rank load (1.0 is perfect; also 1.0 when no rank has any)."""
    if not per_rank:
        return 1.0
    mean = sum(per_rank) / len(per_rank)
    return max(per_rank) / mean if mean > 0 else 1.0
