"""Tests for the corrective preference pairs: each rejected reply is wrong by exactly one fact of its stated kind."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from conversation.records import parse_record
from synthetic.corrective import CORRUPTIONS, corrective_records, description_pair, parse_description
from synthetic.world import HELD_OUT, Scene, sample_scene


def _truth(scene: Scene) -> tuple[int, tuple[tuple[str, str, str, int, int], ...]]:
    return len(scene.objects), tuple((o.size, o.colour, o.shape, o.row, o.col) for o in scene.objects)


def _one_fact_of_kind(kind: str, truth: tuple, wrong: tuple) -> bool:
    """Whether `wrong` (count, objects) differs from the ground truth by exactly one fact of `kind`."""
    (n, objs), (m, bad) = truth, wrong
    if kind == "count_changed":
        return objs == bad and abs(m - n) == 1
    if kind in ("absent_added", "object_repeated", "object_omitted"):
        more, fewer = (objs, bad) if kind == "object_omitted" else (bad, objs)
        extra = set(more) - set(fewer)
        pairs = {(o[1], o[2]): o[0] for o in fewer}
        ok = m == len(bad) and len(more) == len(fewer) + 1 and set(fewer) < set(more) and len(extra) == 1
        if not ok or kind == "object_omitted":
            return ok
        (size, colour, shape, *_), = extra
        # repeated: the same object (pair and size) again, elsewhere; added: a pair the scene does not hold
        return pairs.get((colour, shape)) == size if kind == "object_repeated" else (colour, shape) not in pairs
    if m != n or len(bad) != len(objs):
        return False
    changed = set(objs) - set(bad)
    if len(changed) != 1:
        return False
    (old,) = changed
    (new,) = set(bad) - set(objs)
    if kind == "colour_changed":
        return new[1] != old[1] and new[0] == old[0] and new[2:] == old[2:] and (new[1], new[2]) not in {
            (o[1], o[2]) for o in objs}
    if kind == "position_changed":
        return new[:3] == old[:3] and new[3:] != old[3:] and new[3:] not in {o[3:] for o in objs}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_each_rejected_differs_by_exactly_one_fact_of_its_kind(kind: str) -> None:
    checked = 0
    for i in range(150):
        scene = sample_scene(3, "train", i)
        record = description_pair(scene, random.Random(i), kind)
        if record is None:
            assert kind == "object_omitted" and len(scene.objects) == 1
            continue
        chosen, rejected = parse_description(record["chosen"]), parse_description(record["rejected"])
        assert chosen == _truth(scene)  # the chosen description is the ground truth
        assert _one_fact_of_kind(kind, _truth(scene), rejected), (kind, scene, record["rejected"])
        # ... and no other kind describes the difference (the checker is not vacuous)
        assert not any(_one_fact_of_kind(k, _truth(scene), rejected) for k in CORRUPTIONS if k != kind)
        assert record["id"] == f"prefer-{kind}-{scene.id:06d}"
        parse_record({"id": record["id"], "image": record["image"],
                      "conversations": record["conversations"] + [{"from": "gpt", "value": record["chosen"]}]}, i)
        checked += 1
    assert checked >= 100


def test_parse_description_reads_the_renderer_back() -> None:
    text = ("There are two objects on a light striped background. A large red circle is at the top left. "
            "A small cyan cross is in the center.")
    assert parse_description(text) == (2, (("large", "red", "circle", 0, 0), ("small", "cyan", "cross", 1, 1)))


def test_records_cover_every_kind_and_existence_answers_are_true() -> None:
    scenes = [sample_scene(0, "train", i) for i in range(300)]
    records = corrective_records(scenes, seed=0, existence_share=0.5)
    kinds = Counter(r["id"].split("-")[1] for r in records)
    assert set(kinds) == set(CORRUPTIONS) | {"exists_yes", "exists_no"}
    assert 100 < kinds["exists_yes"] + kinds["exists_no"] < 200  # about half the scenes
    by_id = {s.id: s for s in scenes}
    for r in records:
        if r["id"].startswith("prefer-exists"):
            scene = by_id[int(r["id"].rsplit("-", 1)[1])]
            words = r["conversations"][0]["value"].split("?")[0].split()
            pair = (words[-5], words[-4])  # "... Is there a <colour> <shape> in the image"
            assert r["chosen"] == ("yes" if pair in {o.pair for o in scene.objects} else "no")
            assert {r["chosen"], r["rejected"]} == {"yes", "no"} and pair not in HELD_OUT
    assert corrective_records(scenes, seed=0) == records  # deterministic per seed


def test_pairs_come_from_training_scenes_only(synth_world: Path) -> None:
    with pytest.raises(ValueError, match="training scenes only"):
        corrective_records([sample_scene(0, "test", 0)], seed=0)
    records = json.loads((synth_world / "prefer_train.json").read_text())
    train_images = {s["image"] for s in json.loads((synth_world / "scenes" / "train.json").read_text())}
    assert records and all(r["image"] in train_images for r in records)
    assert all(r["chosen"] != r["rejected"] and r["conversations"][-1]["from"] == "human" for r in records)
    assert all("<image>" in r["conversations"][0]["value"] for r in records)
