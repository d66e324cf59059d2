"""Tests for instruct_data.mixture: YAML mixtures, strategies, weights, determinism, per-item sources."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from instruct_data.mixture import load_mixture, parse_mixture, select


def write(path, n, prefix):
    recs = [{"id": f"{prefix}{i}", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]} for i in range(n)]
    path.write_text(json.dumps(recs) if path.suffix == ".json" else "\n".join(json.dumps(r) for r in recs))


@pytest.fixture()
def mix_yaml(tmp_path):
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "a.json", 10, "a")
    write(tmp_path / "data" / "b.jsonl", 20, "b")
    write(tmp_path / "data" / "c.json", 8, "c")
    y = tmp_path / "mix.yaml"
    y.write_text(
        "datasets:\n"
        "  - json_path: data/a.json\n    image_folder: imgs\n    sampling_strategy: first:3\n"
        "  - json_path: data/b.jsonl\n    image_folders: [imgs, more]\n    sampling_strategy: random:25%\n    name: bee\n"
        "  - json_path: data/c.json\n    sampling_strategy: end:2\n    weight: 2.5\n"
    )
    return y


def test_strategies():
    import numpy as np

    rng = np.random.default_rng(0)
    assert select("all", 4, rng) == [0, 1, 2, 3]
    assert select("first:2", 4, rng) == [0, 1]
    assert select("end:3", 4, rng) == [1, 2, 3]
    assert select("first:50%", 5, rng) == [0, 1, 2]  # ceil, as LLaVA-NeXT
    r = select("random:3", 10, rng)
    assert len(r) == 3 and len(set(r)) == 3
    for bad in ("every:3", "first", "all:3", "first:x"):
        with pytest.raises(ValueError):
            select(bad, 5, rng)


def test_mixture_selects_and_names_sources(mix_yaml, tmp_path):
    mix = load_mixture(mix_yaml, seed=0)
    ids = [mix.conversation(i).id for i in range(len(mix))]
    assert ids[:3] == ["a0", "a1", "a2"]
    bees = [i for i in ids if i.startswith("b")]
    assert len(bees) == 5 and len(set(bees)) == 5
    cs = [i for i in ids if i.startswith("c")]
    assert sorted(cs) == ["c6", "c6", "c6", "c7", "c7"] or sorted(cs) == ["c6", "c6", "c7", "c7", "c7"]
    assert mix.source_name(3) == "bee"
    assert mix.image_roots(3) == [tmp_path / "imgs", tmp_path / "more"]
    assert mix.image_roots(0) == [tmp_path / "imgs"] and mix.image_roots(len(mix) - 1) == []
    rows = Counter(mix.source_name(i) for i in range(len(mix)))
    assert rows == {"0:a": 3, "bee": 5, "2:c": 5}


def test_extra_image_roots_come_after_the_datasets_own(mix_yaml, tmp_path):
    mix = load_mixture(mix_yaml, seed=0, image_roots=[tmp_path / "shared"])
    assert mix.image_roots(0) == [tmp_path / "imgs", tmp_path / "shared"]
    assert mix.image_roots(len(mix) - 1) == [tmp_path / "shared"]


def test_deterministic_per_seed(mix_yaml):
    ids = lambda m: [m.conversation(i).id for i in range(len(m))]  # noqa: E731
    assert ids(load_mixture(mix_yaml, seed=1)) == ids(load_mixture(mix_yaml, seed=1))
    assert ids(load_mixture(mix_yaml, seed=1)) != ids(load_mixture(mix_yaml, seed=2))


def test_bad_yaml(tmp_path):
    y = tmp_path / "m.yaml"
    y.write_text("datasets:\n  - json_path: a.json\n    sample: all\n")
    with pytest.raises(ValueError, match="unknown keys \\['sample'\\]"):
        parse_mixture(y)
    y.write_text("nothing: 1\n")
    with pytest.raises(ValueError, match="non-empty 'datasets'"):
        parse_mixture(y)
