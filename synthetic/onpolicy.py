"""On-policy corrective pairs: the model's own wrong answers on training scenes, each against the world's truth.

What RLHF-V does with human corrections, done exactly with the ground truth: the phase-2 model describes each
training scene and answers POPE-style existence questions (greedy, batched through eval's generator); every
description naming an absent object or missing a present one (judged by CHAIR's own object vocabulary) becomes a
pair (rejected = the model's text, chosen = the scene's true description), and so does every wrong yes/no. An
object the model invented in a description also becomes an existence question answered "no" against its "yes".
"""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from eval.generation import GenerateFn
from eval.items import EvalItem, Failed
from eval.loaders.chair import DESCRIBE_PROMPT
from eval.metrics.chair import ObjectVocabulary
from synthetic.questions import SHORT_ANSWER_SUFFIX
from synthetic.text import BACKGROUND_PHRASES, a_or_an, detailed_description
from synthetic.world import ALL_PAIRS, SEEN_PAIRS, Scene, scene_rng

VOCABULARY = ObjectVocabulary(f"{c} {s}" for c, s in ALL_PAIRS)  # CHAIR's categories on this world


@dataclass
class OnPolicyStats:
    """What the model got wrong on the scenes asked (counts), for the log and the demo's report."""

    scenes: int = 0
    descriptions_wrong: Counter = field(default_factory=Counter)  # "hallucinated" / "missed" -> descriptions
    questions: int = 0
    questions_wrong: int = 0
    failed: int = 0


def judge_description(scene: Scene, text: str) -> tuple[list[str], list[str]]:
    """(objects named but absent, objects present but never named), by CHAIR's vocabulary on this world."""
    present = {f"{o.colour} {o.shape}" for o in scene.objects}
    named = VOCABULARY.mentions(text)
    return sorted({n for n in named if n not in present}), sorted(present - set(named))


def background_aligned(scene: Scene, text: str) -> str:
    """The model's reply with its background phrase replaced by the true one, so that a pair against the truth
    differs only in the objects (and the count): the preference then lands on the object errors (RLHF-V's
    fine-grained corrections) instead of on the first diverging words, the background's."""
    truth = BACKGROUND_PHRASES[scene.background]
    for phrase in BACKGROUND_PHRASES.values():
        if f" on {phrase}." in text:
            return text.replace(f" on {phrase}.", f" on {truth}.", 1)
    return text


def existence_question(colour: str, shape: str) -> str:
    return f"<image>\nIs there {a_or_an(colour)} {colour} {shape} in the image?{SHORT_ANSWER_SUFFIX}"


def _probes(scene: Scene, rng: random.Random, absent_per_scene: int) -> list[tuple[str, str, str]]:
    """(colour, shape, true answer): every present pair, and absent seen pairs that share a colour or a shape
    with a present one (the confusions a frozen encoder makes) before any other."""
    present = {o.pair for o in scene.objects}
    probes = [(c, s, "yes") for c, s in sorted(present)]
    near = [p for p in SEEN_PAIRS if p not in present and any(p[0] == c or p[1] == s for c, s in present)]
    far = [p for p in SEEN_PAIRS if p not in present and p not in near]
    rng.shuffle(near)
    rng.shuffle(far)
    probes += [(c, s, "no") for c, s in (near + far)[:absent_per_scene]]
    return probes


def _record(kind: str, scene: Scene, n: int, prompt: str, chosen: str, rejected: str) -> dict:
    return {"id": f"onpolicy-{kind}-{scene.id:06d}-{n}", "image": scene.image,
            "conversations": [{"from": "human", "value": prompt}], "chosen": chosen, "rejected": rejected}


def _answer(generate: GenerateFn, items: list[EvalItem], batch_size: int) -> list[str | Failed]:
    out: list[str | Failed] = []
    for b in range(0, len(items), batch_size):
        out += generate(items[b:b + batch_size])
    return out


def onpolicy_records(scenes: Iterable[Scene], images: Path, describe: GenerateFn, answer: GenerateFn, seed: int,
                     absent_per_scene: int = 2, batch_size: int = 32,
                     align_background: bool = True) -> tuple[list[dict], OnPolicyStats]:
    """The pairs for every scene the model got wrong (`describe` answers descriptions, `answer` yes/no questions).

    A description is wrong when it names an absent object or leaves a present one out (a position or size
    slip alone is not an object error and makes no pair)."""
    scenes = list(scenes)
    for scene in scenes:
        if scene.split != "train":
            raise ValueError(f"on-policy pairs come from training scenes only; scene {scene.id} is {scene.split!r}")
    stats = OnPolicyStats(scenes=len(scenes))
    records: list[dict] = []
    texts = _answer(describe, [EvalItem(s.id, images / s.image, DESCRIBE_PROMPT) for s in scenes], batch_size)
    invented: dict[int, list[str]] = {}
    for scene, text in zip(scenes, texts, strict=True):
        if isinstance(text, Failed):
            stats.failed += 1
            continue
        absent, missed = judge_description(scene, text)
        for label, wrong in (("hallucinated", absent), ("missed", missed)):
            stats.descriptions_wrong[label] += bool(wrong)
        if absent or missed:
            rejected = background_aligned(scene, text) if align_background else text
            records.append(_record("describe", scene, 0, f"<image>\n{DESCRIBE_PROMPT}", detailed_description(scene),
                                   rejected))
        invented[scene.id] = absent
    asked: list[tuple[Scene, str, str]] = []  # (scene, prompt, true answer)
    for scene in scenes:
        rng = scene_rng(seed, "train", scene.id, "onpolicy")
        asked += [(scene, existence_question(c, s), truth) for c, s, truth in _probes(scene, rng, absent_per_scene)]
    items = [EvalItem(f"{scene.id}-{n}", images / scene.image, prompt.removeprefix("<image>\n"))
             for n, (scene, prompt, _) in enumerate(asked)]
    replies = _answer(answer, items, batch_size)
    stats.questions = len(asked)
    right: dict[str, list[dict]] = {"yes": [], "no": []}  # anchors: questions answered right
    wrong: dict[str, int] = {"yes": 0, "no": 0}
    for n, ((scene, prompt, truth), reply) in enumerate(zip(asked, replies, strict=True)):
        if isinstance(reply, Failed):
            stats.failed += 1
            continue
        opposite = "no" if truth == "yes" else "yes"
        if reply.strip().lower().rstrip(".") == truth:
            right[truth].append(_record(f"anchor_{truth}", scene, n, prompt, truth, opposite))
            continue
        stats.questions_wrong += 1
        wrong[truth] += 1
        records.append(_record(f"exists_{truth}", scene, n, prompt, truth, reply.strip() or opposite))
    # Pairs of one answer only teach "say no" (DPO then answers no to everything): as many right answers of the
    # other kind, the model's own, anchor the balance. The invented objects below count as "no" pairs.
    wrong["no"] += sum(len(v) for v in invented.values())
    for truth, other in (("yes", "no"), ("no", "yes")):
        records += right[truth][: max(0, wrong[other] - wrong[truth])]
    for scene in scenes:  # what the model invented, asked back: "no" against the "yes" its description implied
        for k, name in enumerate(invented.get(scene.id, [])):
            colour, shape = name.split(" ", 1)
            records.append(_record("invented", scene, k, existence_question(colour, shape), "no", "yes"))
    return records, stats
