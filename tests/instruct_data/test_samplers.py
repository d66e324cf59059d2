"""Tests for instruct_data.samplers: disjoint equal shares, determinism, grouping, modality split, resume."""
from __future__ import annotations

import numpy as np
import pytest

from instruct_data.samplers import LengthGroupedSampler, ModalityLengthGroupedSampler


def realistic_lengths(n=600, seed=0):
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    short_vqa = rng.integers(600, 660, size=n)  # 576 image tokens + a short Q/A
    long_conv = rng.integers(800, 2000, size=n)
    text_only = -rng.integers(50, 1500, size=n)
    return [int(x) for x in np.choose(kind, [short_vqa, long_conv, text_only])]


def padding_fraction(order, lengths, batch_size):
    pad = total = 0
    for b in range(0, len(order), batch_size):
        ls = [abs(lengths[i]) for i in order[b:b + batch_size]]
        pad += max(ls) * len(ls) - sum(ls)
        total += max(ls) * len(ls)
    return pad / total


@pytest.mark.parametrize("cls", [LengthGroupedSampler, ModalityLengthGroupedSampler])
def test_ranks_get_disjoint_equal_shares_covering_everything(cls):
    lengths = realistic_lengths(96)
    shares = [list(cls(lengths, 4, world_size=3, rank=r, seed=1)) for r in range(3)]
    assert [len(s) for s in shares] == [32, 32, 32]
    assert sorted(sum(shares, [])) == list(range(96))


def test_uneven_total_is_padded_or_dropped():
    lengths = list(range(1, 11))
    padded = [list(LengthGroupedSampler(lengths, 2, world_size=3, rank=r)) for r in range(3)]
    assert [len(s) for s in padded] == [4, 4, 4] and set(sum(padded, [])) == set(range(10))
    dropped = [list(LengthGroupedSampler(lengths, 2, world_size=3, rank=r, drop_last=True)) for r in range(3)]
    flat = sum(dropped, [])
    assert [len(s) for s in dropped] == [3, 3, 3] and len(set(flat)) == 9
    assert len(LengthGroupedSampler(lengths, 2, world_size=3, rank=0)) == 4


def test_deterministic_per_seed_and_epoch():
    lengths = realistic_lengths(200)
    a = LengthGroupedSampler(lengths, 8, seed=3)
    b = LengthGroupedSampler(lengths, 8, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    assert list(LengthGroupedSampler(lengths, 8, seed=4)) != first


@pytest.mark.parametrize("world_size", [1, 8])
def test_grouping_cuts_padding(world_size):
    lengths = realistic_lengths(4000)
    rng = np.random.default_rng(0)
    random_pad = padding_fraction([int(i) for i in rng.permutation(len(lengths))], lengths, 16)
    shares = [list(LengthGroupedSampler(lengths, 16, world_size=world_size, rank=r, seed=0)) for r in range(world_size)]
    grouped_pad = np.mean([padding_fraction(s, lengths, 16) for s in shares])
    assert random_pad > 0.3
    assert grouped_pad < 0.2 * random_pad, (grouped_pad, random_pad)


def test_modality_batches_do_not_mix_except_the_last():
    lengths = realistic_lengths(640)
    bs, ws = 8, 2
    for r in range(ws):
        order = list(ModalityLengthGroupedSampler(lengths, bs, world_size=ws, rank=r, seed=5))
        batches = [order[b:b + bs] for b in range(0, len(order), bs)]
        full_mb = (sum(x > 0 for x in lengths) // (bs * ws)) + (sum(x <= 0 for x in lengths) // (bs * ws))
        mixed = [b for b in batches[:full_mb] if len({lengths[i] > 0 for i in b}) > 1]
        assert mixed == []
        assert any(lengths[b[0]] < 0 for b in batches) and any(lengths[b[0]] > 0 for b in batches)


def test_resume_skips_consumed_indices():
    lengths = realistic_lengths(100)
    s = LengthGroupedSampler(lengths, 4, world_size=2, rank=1, seed=9)
    s.set_epoch(2)
    full = list(s)
    it = iter(s)
    consumed = [next(it) for _ in range(13)]
    state = s.state_dict()
    assert state == {"epoch": 2, "seed": 9, "position": 13}
    fresh = LengthGroupedSampler(lengths, 4, world_size=2, rank=1, seed=9)
    fresh.load_state_dict(state)
    assert len(fresh) == len(full) - 13
    assert consumed + list(fresh) == full
    assert list(fresh) == full  # the next pass is a whole epoch again
    with pytest.raises(ValueError, match="seed"):
        LengthGroupedSampler(lengths, 4, seed=1).load_state_dict(state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank 2"):
        LengthGroupedSampler([1, 2], 1, world_size=2, rank=2)
