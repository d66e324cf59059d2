"""Answers are right by construction: re-derive them from scenes/*.json with independent rules, never the generator."""
import json
import re
from pathlib import Path

SUFFIX = "\nAnswer the question using a single word or phrase."
ROWS, COLS = ("top", "middle", "bottom"), ("left", "center", "right")


def _where(o: dict) -> str:
    return "center" if (o["row"], o["col"]) == (1, 1) else f"{ROWS[o['row']]} {COLS[o['col']]}"


def _find(objs: list[dict], colour: str, shape: str) -> dict:
    (match,) = [o for o in objs if o["colour"] == colour and o["shape"] == shape]
    return match


def derive(question: str, objs: list[dict]) -> str:
    """The answer to a world question computed straight from the ground-truth objects."""
    q = question
    if m := re.fullmatch(r"What color is the (\w+)\?", q):
        (o,) = [o for o in objs if o["shape"] == m[1]]
        return o["colour"]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", q):
        (o,) = [o for o in objs if o["colour"] == m[1]]
        return o["shape"]
    if q in ("How many objects are there?", "How many shapes are in the image?", "How many objects are in the picture?"):
        return str(len(objs))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", q):
        return str(sum(o["colour"] == m[1] for o in objs))
    if m := re.fullmatch(r"How many (\w+) are there\?", q):
        shape = m[1][:-2] if m[1].endswith("sses") else m[1][:-1]
        return str(sum(o["shape"] == shape for o in objs))
    if m := re.fullmatch(r"Where is the (\w+) (\w+)\?", q):
        return _where(_find(objs, m[1], m[2]))
    if m := re.fullmatch(r"Is the (\w+) (\w+) (?:small or large|large or small)\?", q):
        return _find(objs, m[1], m[2])["size"]
    if m := re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", q):
        return "yes" if any(o["colour"] == m[1] and o["shape"] == m[2] for o in objs) else "no"
    if m := re.fullmatch(r"Is the (\w+) (\w+) (to the left of|to the right of|above|below) the (\w+) (\w+)\?", q):
        a, b = _find(objs, m[1], m[2]), _find(objs, m[4], m[5])
        holds = {"to the left of": a["col"] < b["col"], "to the right of": a["col"] > b["col"],
                 "above": a["row"] < b["row"], "below": a["row"] > b["row"]}[m[3]]
        return "yes" if holds else "no"
    raise AssertionError(f"question not understood by the test: {q!r}")


def _scenes(world: Path, split: str) -> dict[str, list[dict]]:
    return {s["image"]: s["objects"] for s in json.loads((world / "scenes" / f"{split}.json").read_text())}


def test_instruct_short_answers_match_the_scenes(synth_world: Path) -> None:
    scenes = _scenes(synth_world, "train")
    checked = 0
    for record in json.loads((synth_world / "instruct.json").read_text()):
        if not record["id"].startswith("vqa-"):
            continue
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2]):
            q = human["value"].removeprefix("<image>\n")
            if q.endswith(SUFFIX):
                assert derive(q.removesuffix(SUFFIX), scenes[record["image"]]) == gpt["value"], record["id"]
                checked += 1
    assert checked > 100


def test_multiple_choice_letters_point_at_the_right_option(synth_world: Path) -> None:
    scenes = _scenes(synth_world, "train")
    checked = 0
    for record in json.loads((synth_world / "instruct.json").read_text()):
        if not record["id"].startswith("mcq-"):
            continue
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2]):
            lines = human["value"].removeprefix("<image>\n").split("\n")
            options = {line[0]: line[3:] for line in lines[1:-1]}
            assert lines[-1] == "Answer with the option's letter from the given choices directly."
            assert options[gpt["value"]] == derive(lines[0], scenes[record["image"]])
            checked += 1
    assert checked > 5


def test_vqav2_pope_and_scienceqa_answers_match_the_scenes(synth_world: Path) -> None:
    by_id = {s["id"]: s["objects"] for s in json.loads((synth_world / "scenes" / "test.json").read_text())}
    ev = synth_world / "eval"
    questions = json.loads((ev / "vqav2" / "questions.json").read_text())["questions"]
    annotations = {a["question_id"]: a for a in json.loads((ev / "vqav2" / "annotations.json").read_text())["annotations"]}
    for q in questions:
        assert derive(q["question"], by_id[q["image_id"]]) == annotations[q["question_id"]]["multiple_choice_answer"]
    by_file = {f"{i:06d}.png": objs for i, objs in by_id.items()}
    for split in ("random", "popular", "adversarial"):
        for line in (ev / "pope" / f"coco_pope_{split}.json").read_text().splitlines():
            row = json.loads(line)
            assert derive(row["text"], by_file[row["image"]]) == row["label"]
    problems = json.loads((ev / "scienceqa" / "problems.json").read_text())
    for pid, p in problems.items():
        if p["image"]:
            assert derive(p["question"], by_id[int(pid) - 100000]) == p["choices"][p["answer"]]
