"""On-policy corrective pairs: the model's own wrong answers become rejected replies, right ones make no pair."""
from __future__ import annotations

import json
from pathlib import Path

from app.cli import main as vlm
from eval.items import EvalItem, Failed
from synthetic.onpolicy import existence_question, judge_description, onpolicy_records
from synthetic.text import detailed_description
from synthetic.world import Scene, SceneObject

A = Scene(id=1, split="train", background="plain", background_tint=(0, 0, 0),
          objects=(SceneObject(shape="circle", colour="red", size="small", row=0, col=0),
                   SceneObject(shape="square", colour="blue", size="large", row=1, col=1)))
B = Scene(id=2, split="train", background="plain", background_tint=(0, 0, 0),
          objects=(SceneObject(shape="star", colour="green", size="small", row=2, col=2),))
INVENTED = detailed_description(A) + " A small yellow cross is at the bottom left."


class Scripted:
    """A stand-in model with fixed replies: the crafted case the builder must judge."""

    def __init__(self, replies) -> None:
        self.replies, self.asked = replies, []

    def __call__(self, items: list[EvalItem]) -> list[str | Failed]:
        self.asked += items
        return [self.replies(item) for item in items]


def test_judge_uses_chair_objects():
    assert judge_description(A, INVENTED) == (["yellow cross"], [])
    assert judge_description(A, "There is one object. A small red circle is at the top left.") == ([], ["blue square"])
    assert judge_description(A, detailed_description(A)) == ([], [])


def test_an_invented_object_makes_a_pair_and_a_right_answer_none(tmp_path: Path):
    describe = Scripted(lambda item: INVENTED if item.question_id == 1 else detailed_description(B))
    answer = Scripted(lambda item: "Yes")  # right on every present object, wrong on every absent one
    records, stats = onpolicy_records([A, B], tmp_path, describe, answer, seed=0, absent_per_scene=2)
    described = [r for r in records if r["id"].startswith("onpolicy-describe")]
    assert len(described) == 1 and described[0]["image"] == A.image
    assert described[0]["rejected"] == INVENTED and described[0]["chosen"] == detailed_description(A)
    assert described[0]["conversations"][0]["value"] == "<image>\nDescribe the image in detail."
    assert stats.descriptions_wrong["hallucinated"] == 1 and stats.descriptions_wrong["missed"] == 0
    # 3 present objects answered right (no pair) and 2 absent per scene answered wrong: 4 pairs, "no" over "Yes"
    exists = [r for r in records if "-exists_" in r["id"]]
    assert stats.questions == 7 and stats.questions_wrong == 4 and len(exists) == 4
    # the 5 "no" pairs (4 questions, 1 invented object) are balanced by the right "yes" answers (all 3 of them)
    anchors = [r for r in records if "-anchor_" in r["id"]]
    assert len(anchors) == 3 and all(r["chosen"] == "yes" and r["rejected"] == "no" for r in anchors)
    assert all(r["chosen"] == "no" and r["rejected"] == "Yes" for r in exists)
    invented = [r for r in records if "-invented-" in r["id"]]
    assert [(r["image"], r["conversations"][0]["value"], r["chosen"], r["rejected"]) for r in invented] == [
        (A.image, existence_question("yellow", "cross"), "no", "yes")]
    # absent objects asked about share a colour or a shape with a present one first (the likely confusions)
    asked_b = [i.prompt for i in answer.asked if str(i.question_id).startswith("2-")][1:]
    assert all(("green" in p) or ("star" in p) for p in asked_b)


def test_an_unreadable_image_is_counted_not_paired(tmp_path: Path):
    describe = Scripted(lambda item: Failed("image missing"))
    answer = Scripted(lambda item: Failed("image missing"))
    records, stats = onpolicy_records([B], tmp_path, describe, answer, seed=0, absent_per_scene=1)
    assert records == [] and stats.failed == 3


def test_real_tiny_model_through_the_command(tiny_vlm_dir: Path, synth_world: Path, tmp_path: Path, capsys):
    out = tmp_path / "pairs.json"
    code = vlm(["onpolicy", "--model", str(tiny_vlm_dir), "--world", str(synth_world), "--out", str(out),
                "--scenes", "3", "--absent-per-scene", "1", "--batch-size", "2", "--device", "cpu"])
    assert code == 0, capsys.readouterr()
    records = json.loads(out.read_text())
    scenes = json.loads((synth_world / "scenes" / "train.json").read_text())[:3]
    # an untrained model names none of the world's objects: every description is a pair against the truth
    described = [r for r in records if "-describe-" in r["id"]]
    assert [r["chosen"] for r in described] == [detailed_description(Scene.from_dict(s)) for s in scenes]
    assert all(r["rejected"] != r["chosen"] and set(r) == {"id", "image", "conversations", "chosen", "rejected"}
               for r in records)
    assert "pairs from 3 scenes" in capsys.readouterr().out


def test_the_rejected_description_names_the_true_background(tmp_path: Path):
    wrong_background = INVENTED.replace("a plain light background", "a light striped background")
    describe = Scripted(lambda item: wrong_background if item.question_id == 1 else detailed_description(B))
    answer = Scripted(lambda item: "yes" if "green star" in item.prompt else "no")
    records, _ = onpolicy_records([A, B], tmp_path, describe, answer, seed=0)
    assert [r["rejected"] for r in records if "-describe-" in r["id"]] == [INVENTED]  # only the objects differ
    whole, _ = onpolicy_records([A, B], tmp_path, describe, answer, seed=0, align_background=False)
    assert [r["rejected"] for r in whole if "-describe-" in r["id"]] == [wrong_background]
