"""Tests for instruct_data.rank_balance and the packer's cost balance: packed rows shared out to ranks by LLM
tokens and image tiles, the same plan on every rank, never worse than equal counts on anyres-like data."""
from __future__ import annotations

import json
import random

import pytest

from instruct_data.packing import PackedBatchSampler
from instruct_data.rank_balance import assign_rows, imbalance, row_loads
from instruct_data.samplers import LengthGroupedSampler, ModalityLengthGroupedSampler
from train.efficiency import rank_imbalance


def test_imbalance_by_hand() -> None:
    assert imbalance([300, 100]) == 1.5  # mean 200
    assert imbalance([10, 2, 0]) == 2.5  # mean 4
    assert imbalance([0, 0]) == imbalance([]) == 1.0
    assert rank_imbalance([300.0, 100.0], [2.0, 6.0]) == {"token_imbalance": 1.5, "tile_imbalance": 1.5}
    assert rank_imbalance([5.0], [1.0]) == {}  # one rank: nothing to balance


def test_rows_go_out_largest_cost_first_to_the_least_loaded_rank() -> None:
    """Four rows of 100 tokens; tiles 10, 1, 1, 0 (step: 400 tokens, 12 tiles). Costs: 1/4 + tiles/12 =
    1.083, 0.333, 0.333, 0.25. A -> rank 0; B -> rank 1 (0.333); C -> rank 1 (0.667 < 1.083); D -> rank 1
    (0.917 < 1.083). Rank 0: 100 tokens, 10 tiles; rank 1: 300 tokens, 2 tiles."""
    lengths, tiles = [100, 100, 100, 100], [10, 1, 1, 0]
    rows = [(0,), (1,), (2,), (3,)]
    assert assign_rows(rows, lengths, tiles, 2, max_rows=4) == [[(0,)], [(1,), (2,), (3,)]]
    # A cap of 2 rows a rank: D cannot join rank 1 and goes to rank 0.
    assert assign_rows(rows, lengths, tiles, 2, max_rows=2) == [[(0,), (3,)], [(1,), (2,)]]
    # Without tiles the cost is tokens alone: two rows each.
    assert assign_rows(rows, lengths, None, 2, max_rows=4) == [[(0,), (2,)], [(1,), (3,)]]
    assert row_loads((0, 1), lengths, tiles) == (200, 11)
    with pytest.raises(ValueError, match="5 packed rows do not fit 2 ranks of at most 2 rows"):
        assign_rows(rows + [(4,)], lengths + [1], tiles + [0], 2, max_rows=2)


def anyres_like(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Lengths signed by modality and tiles per sample: text-only (0 tiles), one image of 1 tile (pad), or one
    anyres image of 2-10 tiles whose tokens grow with its tiles (as LLaVA-NeXT's)."""
    rng = random.Random(seed)
    lengths, tiles = [], []
    for _ in range(n):
        kind = rng.random()
        text = rng.randint(10, 200)
        if kind < 0.2:
            lengths.append(-text)
            tiles.append(0)
        else:
            t = 1 if kind < 0.5 else rng.randint(2, 10)
            lengths.append(text + 40 * t)
            tiles.append(t)
    return lengths, tiles


def packers(lengths, tiles, balance, world=2, step=8, micro=2, pack_length=1024, sampler_cls=LengthGroupedSampler):
    out = []
    for rank in range(world):
        sampler = sampler_cls(lengths, step, world_size=world, rank=rank, seed=3, megabatch_steps=4)
        out.append(PackedBatchSampler(sampler, lengths, step_size=step, pack_length=pack_length,
                                      rows_per_micro_batch=micro, micro_batches_per_step=step // micro,
                                      balance=balance, tiles=tiles))
    return out


def per_step_imbalance(ranks, lengths, tiles, steps_of: int) -> tuple[list[float], list[float]]:
    """max/mean of tokens and of tiles across ranks, per step (`steps_of` micro-batches a step)."""
    batches = [p.epoch_batches(0) for p in ranks]
    tok, til = [], []
    for s in range(len(batches[0]) // steps_of):
        loads = [[row_loads(row, lengths, tiles) for mb in bs[s * steps_of:(s + 1) * steps_of] for row in mb]
                 for bs in batches]
        tok.append(imbalance([sum(t for t, _ in rank) for rank in loads]))
        til.append(imbalance([sum(v for _, v in rank) for rank in loads]))
    return tok, til


@pytest.mark.parametrize("sampler_cls", [LengthGroupedSampler, ModalityLengthGroupedSampler])
def test_cost_balance_is_never_worse_than_count_on_anyres_data(sampler_cls) -> None:
    lengths, tiles = anyres_like(400, seed=11)
    results = {}
    for balance in ("count", "cost"):
        ranks = packers(lengths, tiles, balance, sampler_cls=sampler_cls)
        tok, til = per_step_imbalance(ranks, lengths, tiles, steps_of=4)
        results[balance] = (sum(tok) / len(tok), max(tok), sum(til) / len(til), max(til))
    count, cost = results["count"], results["cost"]
    assert all(c <= b + 1e-9 for c, b in zip(cost, count)), results
    assert cost[0] < 1.1 and cost[0] < count[0]  # LLM tokens near even, and better than equal counts


def test_every_rank_computes_the_same_plan_and_trains_the_steps_samples() -> None:
    lengths, tiles = anyres_like(200, seed=5)
    ranks = packers(lengths, tiles, "cost", world=3, step=4)
    plans = [p.global_plan() for p in ranks]
    assert plans[0] == plans[1] == plans[2]
    batches = [p.epoch_batches(0) for p in ranks]
    assert len({len(b) for b in batches}) == 1  # the same micro-batch count on every rank
    count = packers(lengths, tiles, "count", world=3, step=4)
    for s, shares in enumerate(plans[0]):
        mine = [{i for mb in b[s * 2:(s + 1) * 2] for row in mb for i in row} for b in batches]
        assert mine == [{i for row in share for i in row} for share in shares]
        assert not (mine[0] & mine[1]) and not (mine[1] & mine[2]) and not (mine[0] & mine[2])
        by_count = {i for p in count for mb in p.epoch_batches(0)[s * 2:(s + 1) * 2] for row in mb for i in row}
        assert set().union(*mine) == by_count  # the step trains the very samples it trains by count


def test_cost_plan_resumes_exactly_and_names_the_balance_when_packs_differ() -> None:
    lengths, tiles = anyres_like(120, seed=9)
    first = packers(lengths, tiles, "cost")[1]
    first.epoch_batches(1)
    state = json.loads(json.dumps(first.state_dict(consumed=6)))
    again = packers(lengths, tiles, "cost")[1]
    again.load_state_dict(state)
    assert (again.epoch, again.position, again.epoch_batches(1)) == (1, 6, first.epoch_batches(1))
    with pytest.raises(ValueError, match="balance='cost', this run's 'count'"):
        packers(lengths, tiles, "count")[1].load_state_dict(state)
    with pytest.raises(ValueError, match="digest"):  # other tiles: other shares
        packers(lengths, [t + (i % 3 == 0) * 5 for i, t in enumerate(tiles)], "cost")[1].load_state_dict(state)
    # One rank packs alike either way: a by-count checkpoint of one process resumes with cost balance.
    solo = packers(lengths, tiles, "count", world=1)[0]
    packers(lengths, tiles, "cost", world=1)[0].load_state_dict(solo.state_dict(epoch=0, consumed=2))
