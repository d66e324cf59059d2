"""Corrective preference pairs (the seed's corrective feedback): a true reply against one wrong by a single fact.

For a training scene the chosen reply is its detailed description; each rejected one describes the scene with
one grounded fact wrong: an absent object added, a present one named twice, a colour, a position or the count
changed, or an object left out. Yes/no existence questions (POPE-style) get the true answer against the opposite. Absent objects are
drawn from the seen colour-shape pairs only, so no held-out pair is ever named in training data.
"""
from __future__ import annotations

import random
import re
from dataclasses import replace

from synthetic.llava_records import _with_image
from synthetic.questions import SHORT_ANSWER_SUFFIX
from synthetic.text import DETAIL_PROMPTS, NUMBER_WORDS, a_or_an, detailed_description
from synthetic.world import COLOUR_NAMES, COLS, ROWS, SEEN_PAIRS, Scene, SceneObject, scene_rng

CORRUPTIONS: tuple[str, ...] = ("absent_added", "object_repeated", "colour_changed", "position_changed",
                                "count_changed", "object_omitted")


def _empty_cells(objects: tuple[SceneObject, ...]) -> list[tuple[int, int]]:
    taken = {(o.row, o.col) for o in objects}
    return [(r, c) for r in range(3) for c in range(3) if (r, c) not in taken]


def _ordered(objects: list[SceneObject]) -> tuple[SceneObject, ...]:
    return tuple(sorted(objects, key=lambda o: (o.row, o.col)))  # reading order, as every description lists them


def corrupt(scene: Scene, kind: str, rng: random.Random) -> tuple[tuple[SceneObject, ...], int] | None:
    """(objects, stated count) of a description wrong by one fact of `kind`; None when the scene allows none."""
    objs = list(scene.objects)
    present = {o.pair for o in objs}
    if kind == "absent_added":
        absent = [p for p in SEEN_PAIRS if p not in present]
        (row, col), (colour, shape) = rng.choice(_empty_cells(scene.objects)), rng.choice(absent)
        added = SceneObject(shape=shape, colour=colour, size=rng.choice(("small", "large")), row=row, col=col)
        return _ordered(objs + [added]), len(objs) + 1
    if kind == "object_repeated":  # a present object named twice (the second time in an empty cell)
        row, col = rng.choice(_empty_cells(scene.objects))
        return _ordered(objs + [replace(rng.choice(objs), row=row, col=col)]), len(objs) + 1
    if kind == "colour_changed":
        options = [(i, c) for i, o in enumerate(objs) for c in COLOUR_NAMES
                   if c != o.colour and (c, o.shape) in SEEN_PAIRS and (c, o.shape) not in present]
        i, colour = rng.choice(options)
        objs[i] = replace(objs[i], colour=colour)
        return tuple(objs), len(objs)
    if kind == "position_changed":
        i = rng.randrange(len(objs))
        row, col = rng.choice(_empty_cells(scene.objects))
        objs[i] = replace(objs[i], row=row, col=col)
        return _ordered(objs), len(objs)
    if kind == "count_changed":
        wrong = [n for n in (len(objs) - 1, len(objs) + 1) if n >= 1]
        return tuple(objs), rng.choice(wrong)
    if kind == "object_omitted":
        if len(objs) < 2:
            return None  # a description of nothing is not a description of this world
        del objs[rng.randrange(len(objs))]
        return tuple(objs), len(objs)
    raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")


def description_pair(scene: Scene, rng: random.Random, kind: str | None = None) -> dict | None:
    """One preference record on a detail prompt: the true description against one with a `kind` error."""
    kinds = [kind] if kind is not None else [k for k in CORRUPTIONS if k != "object_omitted" or len(scene.objects) > 1]
    kind = rng.choice(kinds)
    wrong = corrupt(scene, kind, rng)
    if wrong is None:
        return None
    objects, count = wrong
    return {"id": f"prefer-{kind}-{scene.id:06d}", "image": scene.image,
            "conversations": [{"from": "human", "value": _with_image(rng.choice(DETAIL_PROMPTS), rng)}],
            "chosen": detailed_description(scene),
            "rejected": detailed_description(replace(scene, objects=objects), stated_count=count)}


def existence_pair(scene: Scene, rng: random.Random) -> dict:
    """A POPE-style question about a present or (equally often) an absent seen pair: true answer vs the opposite."""
    present = [o.pair for o in scene.objects]
    if rng.random() < 0.5:
        (colour, shape), answer = rng.choice(present), "yes"
    else:
        (colour, shape), answer = rng.choice([p for p in SEEN_PAIRS if p not in present]), "no"
    question = f"<image>\nIs there {a_or_an(colour)} {colour} {shape} in the image?{SHORT_ANSWER_SUFFIX}"
    return {"id": f"prefer-exists_{answer}-{scene.id:06d}", "image": scene.image,
            "conversations": [{"from": "human", "value": question}], "chosen": answer,
            "rejected": "no" if answer == "yes" else "yes"}


def corrective_records(scenes: list[Scene], seed: int, existence_share: float = 0.5) -> list[dict]:
    """One description pair per training scene, plus an existence pair for about `existence_share` of them.

    Ids are `prefer-<kind>-<scene id>`, the kind being a corruption or `exists_yes` / `exists_no`."""
    records: list[dict] = []
    for scene in scenes:
        if scene.split != "train":
            raise ValueError(f"corrective pairs come from training scenes only; scene {scene.id} is {scene.split!r}")
        rng = scene_rng(seed, "train", scene.id, "prefer")
        record = description_pair(scene, rng)
        if record is not None:
            records.append(record)
        if rng.random() < existence_share:
            records.append(existence_pair(scene, rng))
    return records


_COUNT = re.compile(r"^There (?:is|are) (\w+) objects? on ")
_OBJECT = re.compile(r"An? (small|large) (\w+) (\w+) is (?:in the center|at the (\w+) (\w+))\.")


def parse_description(text: str) -> tuple[int, tuple[tuple[str, str, str, int, int], ...]]:
    """(stated count, ((size, colour, shape, row, col), ...)) of a detailed description; the inverse of the renderer."""
    match = _COUNT.match(text)
    if match is None:
        raise ValueError(f"not a detailed description: {text!r}")
    objects = []
    for size, colour, shape, row, col in _OBJECT.findall(text):
        cell = (1, 1) if not row else (ROWS.index(row), COLS.index(col))
        objects.append((size, colour, shape, *cell))
    return NUMBER_WORDS.index(match.group(1)), tuple(objects)
