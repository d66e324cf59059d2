"""Which stages the demo runs: shipped backbones by default (manifest checked), stage 0 only when asked, the
no-alignment ablation only under --ablations. A recording runner stands in for the `vlm` commands."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from synthetic.demo import PROFILES, Demo, DemoError
from synthetic.stage0.cli import register as register_backbones
from synthetic.stage0.shipped import SHIPPED_DIR

REPO = Path(__file__).resolve().parents[2]


class Recorder:
    """Runs nothing; writes the file each command's stage checks for, and remembers the argv."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        if argv[0] == "synth":
            out = Path(argv[argv.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "instruct.json").write_text("[]")
            if "--corpus-scenes" not in argv:
                (out / "text_corpus.jsonl").write_text("")
        elif argv[0] == "pretrain-backbones":
            out = Path(argv[argv.index("--out") + 1]) / "llm"
            out.mkdir(parents=True)
            (out / "config.json").write_text("{}")
        elif argv[0] == "onpolicy":
            out = Path(argv[argv.index("--out") + 1])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("[]")
        elif argv[0] == "train":
            out = Path(next(a for a in argv if a.startswith("checkpoint.output_dir=")).split("=", 1)[1])
            out.mkdir(parents=True)
            (out / "vlm_config.json").write_text("{}")
        return 0


def test_default_uses_the_shipped_backbones_and_skips_the_ablation(tmp_path: Path) -> None:
    runner = Recorder()
    demo = Demo(tmp_path, PROFILES["ci"], REPO, runner, log=lambda _: None)
    demo.run_training()
    assert [argv[0] for argv in runner.calls] == ["synth", "train", "train", "onpolicy", "train"]
    assert "--corpus-scenes" in runner.calls[0]  # no text corpus: the LLM is already pretrained
    align = runner.calls[1]
    assert f"model.llm={SHIPPED_DIR / 'llm'}" in align and f"model.vision.spec=hf:{SHIPPED_DIR / 'vit'}" in align
    assert "vqa_noalign" not in demo.evaluations() and set(demo.stages) == {"world", "align", "instruct", "onpolicy",
                                                                                  "prefer"}
    onpolicy = runner.calls[3]  # phase 2's own answers on training scenes, corrected
    assert onpolicy[onpolicy.index("--model") + 1] == str(tmp_path / "instruct")
    assert onpolicy[onpolicy.index("--world") + 1] == str(tmp_path / "world")
    prefer = runner.calls[4]  # phase 3 starts from phase 2's output on the off- and on-policy corrective pairs
    assert prefer[1].endswith("configs/synthetic_prefer.yaml")
    assert f"model.init_from={tmp_path / 'instruct'}" in prefer
    assert (f"data.data_path=[{tmp_path / 'world' / 'prefer_train.json'},{tmp_path / 'onpolicy' / 'pairs.json'}]"
            in prefer)
    assert {"chair", "chair_prefer", "pope_prefer", "vqa_prefer", "captions_prefer"} <= set(demo.evaluations())


def test_no_prefer_skips_phase_3(tmp_path: Path) -> None:
    runner = Recorder()
    demo = Demo(tmp_path, PROFILES["ci"], REPO, runner, log=lambda _: None, prefer=False)
    demo.run_training()
    assert [argv[0] for argv in runner.calls] == ["synth", "train", "train"]
    assert not any(name.endswith("_prefer") for name in demo.evaluations()) and demo.final_model.name == "instruct"


def _scores(out: Path, name: str, scores: dict) -> None:
    (out / "eval" / name).mkdir(parents=True)
    (out / "eval" / name / "scores.json").write_text(json.dumps({"scores": scores}))


def test_preference_report_sets_phase_3_beside_phase_2(tmp_path: Path) -> None:
    for suffix, (f1, chair_s, recall, seen) in (("", (0.90, 30.0, 95.0, 80.0)), ("_prefer", (0.96, 15.0, 93.5, 79.5))):
        _scores(tmp_path, f"vqa{suffix}", {"per_group": {"seen": seen, "heldout": 60.0 + len(suffix)}})
        _scores(tmp_path, f"pope{suffix}", {"per_split": {"random": {"f1": f1 + 0.01}, "popular": {"f1": f1 - 0.01}}})
        _scores(tmp_path, f"chair{suffix}", {"CHAIR_s": chair_s, "CHAIR_i": chair_s / 3, "recall": recall})
        _scores(tmp_path, f"captions{suffix}", {"CIDEr": 150.0})
    pref = Demo(tmp_path, PROFILES["ci"], REPO, Recorder(), log=lambda _: None).preference_report()
    assert pref["before"]["pope_f1"] == 0.9 and pref["after"]["chair_s"] == 15.0
    assert pref["targets_met"] == {"chair_s_at_least_halved": True, "pope_f1_at_least_0.95": True,
                                   "vqa_seen_within_1_point": True, "vqa_heldout_within_1_point": True,
                                   "recall_at_most_2_points_lower": True}


def test_ablations_and_pretrain_backbones_add_their_stages(tmp_path: Path) -> None:
    runner = Recorder()
    demo = Demo(tmp_path, PROFILES["ci"], REPO, runner, log=lambda _: None, pretrain_backbones=True, ablations=True)
    demo.run_training()
    assert [argv[0] for argv in runner.calls] == ["synth", "pretrain-backbones", "train", "train", "onpolicy", "train",
                                                  "build", "train"]
    backbones = tmp_path / "world" / "backbones"
    assert f"model.llm={backbones / 'llm'}" in runner.calls[2]
    build = runner.calls[6]
    assert build[build.index("--projector") + 1] == demo.projector() and build[build.index("--llm") + 1] == str(backbones / "llm")
    assert "vqa_noalign" in demo.evaluations()
    assert set(demo.stages) == {"world", "backbones", "align", "instruct", "onpolicy", "prefer",
                                 "instruct_without_alignment"}


def test_tampered_shipped_backbones_stop_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "backbones"
    shutil.copytree(SHIPPED_DIR, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "llm" / "config.json").write_text("{}")
    assert "llm/config.json" in manifest["files"]
    demo = Demo(tmp_path / "run", PROFILES["ci"], REPO, Recorder(), log=lambda _: None)
    demo.backbones = copy
    with pytest.raises(DemoError, match="do not match their manifest.*llm/config.json"):
        demo.run_training()


def test_every_profile_passes_flags_pretrain_backbones_knows() -> None:
    """The profiles' stage-0 flags go to `vlm pretrain-backbones` only with --pretrain-backbones: parse them here."""
    parser = argparse.ArgumentParser()
    register_backbones(parser)
    for name, profile in PROFILES.items():
        args = parser.parse_args(["--world", "w", *profile.backbones])  # an unknown flag exits: the test fails
        assert args.world == Path("w"), name
