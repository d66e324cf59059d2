"""Tests for instruct_data.length_cache: hit, miss, invalidation, corruption, parallel == serial, rank split."""
from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest

from instruct_data import length_cache
from instruct_data.dataset import InstructDataset
from instruct_data.length_cache import cache_key, compute_lengths, exact_lengths
from instruct_data.sources import load_records

K = 5
WORDS = "the cat sat on a mat and looked at red blue green boxes while dogs ran far away".split()


def write_records(path, n, seed=0):
    rng = random.Random(seed)
    recs = []
    for i in range(n):
        turns = []
        for t in range(rng.randint(1, 4)):
            q = " ".join(rng.choices(WORDS, k=rng.randint(1, 30)))
            turns += [{"from": "human", "value": ("<image>\n" if t == 0 and i % 3 else "") + q},
                      {"from": "gpt", "value": " ".join(rng.choices(WORDS, k=rng.randint(1, 40)))}]
        rec = {"id": f"r{i}", "conversations": turns}
        if i % 3:
            rec["image"] = "x.png"
        recs.append(rec)
    recs.append({"id": "bad", "conversations": [{"from": "gpt", "value": "no human"}]})
    path.write_text(json.dumps(recs))
    return path


def make(path, tok, max_length=64, template="vicuna_v1", k=K):
    return InstructDataset(load_records(path), template, tok, image_token_id=tok.convert_tokens_to_ids("<image>"),
                           num_image_tokens=k, max_length=max_length, load_pixels=True)


@pytest.fixture()
def records(tmp_path):
    return write_records(tmp_path / "data.json", 60)


def serial(ds):
    ref = make(ds.records.path, ds.tokenizer, ds.max_length, ds.template, ds.count)
    ref.tokenize_all()
    return np.asarray(ref.lengths(), dtype=np.int32)


def test_cold_then_warm(records, bpe_tokenizer, tmp_path, monkeypatch):
    ds = make(records, bpe_tokenizer)
    cold = exact_lengths(ds, tmp_path / "cache", workers=1)
    assert np.array_equal(cold, serial(ds)) and cold[-1] == 0  # the bad record: 0, skipped when read
    assert cold.max() <= 64 and len(list((tmp_path / "cache").glob("lengths-*.npz"))) == 1
    assert ds.lengths() == cold.tolist()

    def boom(*a, **k):
        raise AssertionError("a warm cache tokenizes nothing")

    monkeypatch.setattr(length_cache, "compute_lengths", boom)
    again = make(records, bpe_tokenizer)
    assert np.array_equal(exact_lengths(again, tmp_path / "cache"), cold)
    assert again.lengths() == cold.tolist()


@pytest.mark.parametrize("change", ["file", "tokenizer", "template", "max_length", "k"])
def test_changes_recompute(change, records, bpe_tokenizer, unigram_tokenizer, tmp_path):
    base = make(records, bpe_tokenizer)
    exact_lengths(base, tmp_path / "cache", workers=1)
    before = cache_key(base)
    kw = {"tok": bpe_tokenizer}
    if change == "file":
        write_records(records, 60, seed=1)
    elif change == "tokenizer":
        kw["tok"] = unigram_tokenizer
    elif change == "template":
        kw["template"] = "plain"
    elif change == "max_length":
        kw["max_length"] = 32
    else:
        kw["k"] = K + 1
    other = make(records, **kw)
    assert cache_key(other) != before
    got = exact_lengths(other, tmp_path / "cache", workers=1)
    assert np.array_equal(got, serial(other))
    assert len(list((tmp_path / "cache").glob("lengths-*.npz"))) == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "values"])
def test_corrupt_cache_rebuilt_with_warning(damage, records, bpe_tokenizer, tmp_path, caplog):
    ds = make(records, bpe_tokenizer)
    good = exact_lengths(ds, tmp_path / "cache", workers=1)
    (path,) = (tmp_path / "cache").glob("lengths-*.npz")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-40])
    elif damage == "garbage":
        path.write_bytes(b"not a zip at all")
    else:  # a well-formed file whose checksum does not match its lengths
        with np.load(path) as data:
            parts = {k: data[k] for k in data.files}
        parts["lengths"] = parts["lengths"] + 1
        with open(path, "wb") as fh:
            np.savez(fh, **parts)
    with caplog.at_level(logging.WARNING, logger="instruct_data.length_cache"):
        again = exact_lengths(make(records, bpe_tokenizer), tmp_path / "cache", workers=1)
    assert np.array_equal(again, good)
    assert any("recomputing" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.WARNING, logger="instruct_data.length_cache"):
        caplog.clear()
        exact_lengths(make(records, bpe_tokenizer), tmp_path / "cache", workers=1)
    assert not caplog.records  # rebuilt whole: read back without a warning


def test_parallel_equals_serial(tmp_path, bpe_tokenizer, monkeypatch):
    monkeypatch.setattr(length_cache, "SERIAL_BELOW", 0)
    monkeypatch.setattr(length_cache, "CHUNK", 7)
    path = write_records(tmp_path / "many.json", 100)
    ds = make(path, bpe_tokenizer)
    done = []
    got = compute_lengths(ds, workers=2, progress=done.append)
    assert np.array_equal(got, serial(ds)) and sum(done) == len(ds)
    assert np.array_equal(compute_lengths(ds, 10, 50, workers=2), got[10:50])


class FakeRanks:
    """World of `world` ranks run one after another: all_reduce_sum sums what each rank contributed."""

    def __init__(self, world):
        self.world, self.rank, self.is_main = world, 0, True
        self.device = "cpu"
        self.parts = []

    @property
    def world_size(self):
        return self.world

    def all_reduce_sum(self, tensor):
        if tensor.numel() == 1:
            tensor.fill_(self.world)  # every rank missed or hit alike in this test
        else:
            self.parts.append(tensor.clone())
        return tensor


def test_ranks_split_the_work(records, bpe_tokenizer, tmp_path):
    ds = make(records, bpe_tokenizer)
    ranks = FakeRanks(2)
    blocks = []
    for rank in range(2):
        ranks.rank = rank
        exact_lengths(make(records, bpe_tokenizer), None, strategy=ranks, workers=1)
        blocks.append(ranks.parts[-1].numpy())
    n = len(ds)
    costs = [block[:2 * n].reshape(n, 2) for block in blocks]  # (length, tiles) per record
    assert not costs[0][n // 2:].any() and not costs[1][: n // 2].any()  # each rank tokenized its half only
    assert np.array_equal((costs[0] + costs[1])[:, 0], serial(ds))


def test_a_rank_that_fails_tells_the_others(records, bpe_tokenizer, monkeypatch):
    """The failing rank still joins the all-reduce (with its failure flag), so the others raise instead of hanging."""
    ranks = FakeRanks(2)
    ds = make(records, bpe_tokenizer)

    def broken(i):
        raise ValueError("tokenizer exploded")

    monkeypatch.setattr(ds, "exact_cost", broken)
    with pytest.raises(ValueError, match="exploded"):
        exact_lengths(ds, None, strategy=ranks, workers=1)
    assert ranks.parts[-1][-1].item() == 1  # the failure went into the collective

    class OtherFailed(FakeRanks):
        def all_reduce_sum(self, tensor):
            super().all_reduce_sum(tensor)
            if tensor.numel() > 1:
                tensor[-1] += 1
            return tensor

    with pytest.raises(RuntimeError, match="another rank failed"):
        exact_lengths(make(records, bpe_tokenizer), None, strategy=OtherFailed(2), workers=1)


def test_uncacheable_counter_still_computes(records, bpe_tokenizer, tmp_path):
    ds = make(records, bpe_tokenizer, k=lambda size: 4)
    assert cache_key(ds) is None
    assert len(exact_lengths(ds, tmp_path / "cache", workers=1)) == len(ds)
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_cache_folder_warns_and_goes_on(records, bpe_tokenizer, tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    ds = make(records, bpe_tokenizer)
    with caplog.at_level(logging.WARNING, logger="instruct_data.length_cache"):
        got = exact_lengths(ds, blocked / "cache", workers=1)
    assert np.array_equal(got, serial(ds))
    assert any("could not write the length cache" in r.getMessage() for r in caplog.records)
