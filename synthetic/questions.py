"""Short-answer questions about a scene, derived from its ground truth, with answers balanced per question type."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from synthetic.text import NUMBER_WORDS, a_or_an
from synthetic.world import COLOUR_NAMES, HELD_OUT, SHAPE_PLURALS, SHAPES, Scene, SceneObject

SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."

QUESTION_KINDS: tuple[str, ...] = (
    "color_of_shape", "shape_of_color", "count_all", "count_shape", "count_color",
    "where", "size", "exists", "relation",
)


@dataclass(frozen=True)
class QA:
    """One question with its canonical answer and what it is about (for held-out bookkeeping)."""

    kind: str
    question: str
    answer: str
    question_type: str  # VQAv2-style question prefix
    answer_type: str  # "yes/no" | "number" | "other"
    pairs: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (colour, shape) pairs it mentions or asks about

    @property
    def held_out(self) -> bool:
        return any(p in HELD_OUT for p in self.pairs)


def _by_answer(cands: list[QA]) -> dict[str, list[QA]]:
    groups: dict[str, list[QA]] = {}
    for qa in cands:
        groups.setdefault(qa.answer, []).append(qa)
    return groups


def candidates(scene: Scene, kind: str, absent_pairs: list[tuple[str, str]]) -> list[QA]:
    """Every valid question of `kind` for `scene`. `absent_pairs` are the pairs negatives may name."""
    objs = scene.objects
    all_pairs = tuple(o.pair for o in objs)
    out: list[QA] = []
    if kind == "color_of_shape":
        for o in objs:
            if sum(x.shape == o.shape for x in objs) == 1:
                out.append(QA(kind, f"What color is the {o.shape}?", o.colour, "what color is the", "other", (o.pair,)))
    elif kind == "shape_of_color":
        for o in objs:
            if sum(x.colour == o.colour for x in objs) == 1:
                out.append(QA(kind, f"What shape is the {o.colour} object?", o.shape, "what shape is the", "other", (o.pair,)))
    elif kind == "count_all":
        for q in ("How many objects are there?", "How many shapes are in the image?", "How many objects are in the picture?"):
            out.append(QA(kind, q, str(len(objs)), "how many", "number", all_pairs))
    elif kind == "count_shape":
        for s in SHAPES:
            n = sum(o.shape == s for o in objs)
            refs = tuple(o.pair for o in objs if o.shape == s)
            out.append(QA(kind, f"How many {SHAPE_PLURALS[s]} are there?", str(n), "how many", "number", refs))
    elif kind == "count_color":
        for c in COLOUR_NAMES:
            n = sum(o.colour == c for o in objs)
            refs = tuple(o.pair for o in objs if o.colour == c)
            out.append(QA(kind, f"How many {c} objects are there?", str(n), "how many", "number", refs))
    elif kind == "where":
        for o in objs:
            out.append(QA(kind, f"Where is the {o.colour} {o.shape}?", o.position, "where is the", "other", (o.pair,)))
    elif kind == "size":
        for o in objs:
            for a, b in (("small", "large"), ("large", "small")):
                out.append(QA(kind, f"Is the {o.colour} {o.shape} {a} or {b}?", o.size, "is the", "other", (o.pair,)))
    elif kind == "exists":
        out.extend(_exists(objs, absent_pairs))
    elif kind == "relation":
        out.extend(_relations(objs))
    else:
        raise ValueError(f"unknown question kind {kind!r}; known: {', '.join(QUESTION_KINDS)}")
    return out


def _exists(objs: tuple[SceneObject, ...], absent_pairs: list[tuple[str, str]]) -> list[QA]:
    present = {o.pair for o in objs}
    out = [QA("exists", f"Is there {a_or_an(o.colour)} {o.colour} {o.shape} in the image?", "yes", "is there a", "yes/no", (o.pair,))
           for o in objs]
    # Hard negatives first: same shape in another colour, or same colour on another shape.
    hard = [p for p in absent_pairs if p not in present and any(p[0] == o.colour or p[1] == o.shape for o in objs)]
    pool = hard if hard else [p for p in absent_pairs if p not in present]
    for c, s in pool:
        out.append(QA("exists", f"Is there {a_or_an(c)} {c} {s} in the image?", "no", "is there a", "yes/no", ((c, s),)))
    return out


_RELATIONS = {"to the left of": (1, -1), "to the right of": (1, 1), "above": (0, -1), "below": (0, 1)}


def _relations(objs: tuple[SceneObject, ...]) -> list[QA]:
    out: list[QA] = []
    for a in objs:
        for b in objs:
            if a is b:
                continue
            for word, (axis, sign) in _RELATIONS.items():
                pa, pb = (a.col, b.col) if axis == 1 else (a.row, b.row)
                if pa == pb:
                    continue  # same column (row): left/right (above/below) is undefined, never asked
                answer = "yes" if (pa - pb) * sign > 0 else "no"
                out.append(QA("relation", f"Is the {a.colour} {a.shape} {word} the {b.colour} {b.shape}?",
                              answer, "is the", "yes/no", (a.pair, b.pair)))
    return out


def sample_questions(scene: Scene, rng: random.Random, k: int, absent_pairs: list[tuple[str, str]],
                     kinds: tuple[str, ...] = QUESTION_KINDS) -> list[QA]:
    """Up to `k` questions of distinct kinds; within a kind the answer is drawn uniformly, then a question with it."""
    order = list(kinds)
    rng.shuffle(order)
    chosen: list[QA] = []
    for kind in order:
        groups = _by_answer(candidates(scene, kind, absent_pairs))
        if not groups:
            continue
        answer = rng.choice(sorted(groups))
        chosen.append(rng.choice(groups[answer]))
        if len(chosen) == k:
            break
    return chosen


def answer_variants(qa: QA, rng: random.Random) -> list[str]:
    """Ten human answers: mostly the canonical one, a few realistic variants (`2`/`two`, `upper left`)."""
    canonical = qa.answer
    if qa.answer_type == "number":
        alternatives = [NUMBER_WORDS[int(canonical)]]
    elif qa.answer_type == "yes/no":
        alternatives = ["no" if canonical == "yes" else "yes"]
    elif qa.kind == "where":
        alt = canonical.replace("top", "upper").replace("bottom", "lower")
        alternatives = [alt if alt != canonical else "middle", f"{canonical} corner" if " " in canonical else "middle"]
    elif canonical in COLOUR_NAMES:
        alternatives = [f"bright {canonical}", canonical.capitalize()]
    else:
        alternatives = [f"{canonical} shape", SHAPE_PLURALS.get(canonical, canonical)]
    n_variants = rng.choice((0, 0, 1, 1, 2, 3)) if qa.answer_type != "yes/no" else rng.choice((0, 0, 0, 1))
    answers = [canonical] * (10 - n_variants) + [rng.choice(alternatives) for _ in range(n_variants)]
    rng.shuffle(answers)
    return answers
