"""`vlm demo`: the main job — synthetic world, the three phases on the shipped backbones, benchmarks, chat, report.json.

Phase 3 (preference tuning on the world's corrective pairs and on phase 2's own corrected answers) runs by default
(`--no-prefer` skips it); the report sets its hallucination and ability numbers beside phase 2's (`preference.before` / `preference.after`).

The stage-0 backbones (a tiny CLIP ViT and Llama, as a real user starts from a pretrained CLIP and LLM) ship
in `synthetic/backbones/`; `--pretrain-backbones` trains them again, `--ablations` adds LLaVA's
phase-2-without-phase-1 run. Every stage is an ordinary `vlm` command (the same ones a user runs by hand); this module only sequences
them, times them, skips stages whose outputs are complete, and gathers the figures into one report. The
command runner is handed in by the application (`app.cli`), which sits above this package.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from synthetic.corpus import CORPUS_FILE
from synthetic.stage0.shipped import SHIPPED_DIR, manifest_problems
from vlm.config import CONFIG_NAME


@dataclass(frozen=True)
class DemoProfile:
    """Sizes of one demo run: the world, the backbones' steps (when retrained) and the two phases' overrides."""

    synth: list[str]
    backbones: list[str]
    align: list[str]
    instruct: list[str]
    prefer: list[str] = field(default_factory=list)
    onpolicy: list[str] = field(default_factory=list)  # `vlm onpolicy` options (how many training scenes asked)
    eval_limit: int | None = None
    eval_batch_size: int = 32
    chat_tokens: int = 24
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


PROFILES: dict[str, DemoProfile] = {
    "default": DemoProfile(
        synth=["--num-train", "6000", "--num-test", "400", "--prefer-scenes", "1500", "--chair-images", "100"],
        backbones=[],
        align=["schedule.epochs=3"],
        instruct=["schedule.epochs=3"],
        prefer=[],
        onpolicy=["--scenes", "1500"],
        notes="the README's demo: about 9 minutes on 2 CPU cores",
    ),
    "ci": DemoProfile(
        synth=["--num-train", "1500", "--num-test", "240", "--pope-images", "60", "--scienceqa-images", "40",
               "--text-eval", "40", "--chair-images", "40"],
        backbones=["--llm-lesson-steps", "5", "--llm-steps", "150", "--vit-steps", "200"],
        align=["schedule.max_steps=150"],
        instruct=["schedule.max_steps=600"],
        prefer=["schedule.max_steps=100"],
        onpolicy=["--scenes", "800"],
        eval_limit=None,
        notes="the reduced demo of the test suite: a few minutes on 2 CPU cores",
    ),
}

ALIGN_CONFIG = "configs/synthetic_align.yaml"
INSTRUCT_CONFIG = "configs/synthetic_instruct.yaml"
PREFER_CONFIG = "configs/synthetic_prefer.yaml"
# Phase 3's targets against phase 2 (issue 28): CHAIR_s at least halved, POPE F1 >= 0.95, VQA within 1 point,
# object recall at most 2 points lower.
PREFER_BENCHMARKS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("vqa", "vqav2", ()), ("pope", "pope", ()), ("captions", "coco_captions", ("--no-meteor",)), ("chair", "chair", ()),
)


CommandRunner = Callable[[list[str]], int]  # `vlm` argv (without the program name) -> exit code


class DemoError(RuntimeError):
    """A stage failed: the message names the stage and the command to re-run it by hand."""


class Demo:
    """Runs the stages in order under `out`, recording wall seconds per stage in `out/stages.json`."""

    def __init__(self, out: Path, profile: DemoProfile, repo: Path, run_command: CommandRunner,
                 log: Callable[[str], None] = print, pretrain_backbones: bool = False, ablations: bool = False,
                 seed: int | None = None, prefer: bool = True):
        self.out, self.profile, self.repo, self.log = out, profile, repo, log
        self.vlm = run_command
        self.world = out / "world"
        self.pretrain_backbones, self.ablations, self.prefer = pretrain_backbones, ablations, prefer
        self.seed = seed
        self.seed_overrides = [f"schedule.seed={seed}"] if seed is not None else []  # both phases' training seed
        self.backbones = self.world / "backbones" if pretrain_backbones else SHIPPED_DIR
        self.feature_cache = self.world / "feature_cache"  # the frozen ViT's features, shared by all three runs
        self.stages_file = out / "stages.json"
        self.stages: dict[str, float] = json.loads(self.stages_file.read_text()) if self.stages_file.is_file() else {}

    # --- plumbing ------------------------------------------------------------------------------------
    def stage(self, name: str, done: Callable[[], bool], argv_list: list[list[str]]) -> None:
        if name in self.stages and done():
            self.log(f"[demo] {name}: done before ({self.stages[name]:.0f} s), reused")
            return
        self.log(f"[demo] {name}: running")
        start = time.perf_counter()
        for argv in argv_list:
            code = self.vlm(argv)
            if code:
                raise DemoError(f"stage {name!r} failed (exit {code}); re-run by hand: vlm {' '.join(argv)}")
        self.stages[name] = round(time.perf_counter() - start, 1)
        self.stages_file.write_text(json.dumps(self.stages, indent=1))
        self.log(f"[demo] {name}: {self.stages[name]:.0f} s")

    def config(self, name: str) -> str:
        return str(self.repo / name)

    def world_overrides(self) -> list[str]:
        backbones = self.backbones
        return [f"data.image_folder={self.world / 'images'}", f"model.vision.spec=hf:{backbones / 'vit'}",
                f"model.llm={backbones / 'llm'}", f"feature_cache.dir={self.feature_cache}"]

    # --- stages --------------------------------------------------------------------------------------
    def run_training(self) -> None:
        p, w = self.profile, self.world
        if self.pretrain_backbones:
            self.stage("world", lambda: (w / CORPUS_FILE).is_file() and (w / "instruct.json").is_file(),
                       [["synth", "--out", str(w), "--seed", "0", *p.synth]])
        else:  # the shipped LLM is already pretrained: no text corpus to write
            self.stage("world", lambda: (w / "instruct.json").is_file(),
                       [["synth", "--out", str(w), "--seed", "0", *p.synth, "--corpus-scenes", "0"]])
        if self.pretrain_backbones:
            self.stage("backbones", lambda: (self.backbones / "llm" / "config.json").is_file(),
                       [["pretrain-backbones", "--world", str(w), "--out", str(self.backbones), *p.backbones]])
        else:
            problems = manifest_problems(self.backbones)
            if problems:
                raise DemoError(f"the shipped backbones in {self.backbones} do not match their manifest "
                                f"({'; '.join(problems[:3])}): restore them (git checkout -- {self.backbones}) "
                                "or train new ones with `vlm demo --pretrain-backbones`")
            self.log(f"[demo] backbones: the shipped ones ({self.backbones}, manifest checked)")
        align_out = self.out / "align"
        self.stage("align", lambda: (align_out / CONFIG_NAME).is_file(),
                   [["train", self.config(ALIGN_CONFIG), *self.world_overrides(),
                     f"data.data_path=[{w / 'align.json'}]", f"checkpoint.output_dir={align_out}", *p.align,
                     *self.seed_overrides]])
        self.stage("instruct", lambda: (self.out / "instruct" / CONFIG_NAME).is_file(),
                   [self.instruct_argv(align_out, self.out / "instruct")])
        if self.prefer:
            self.stage("onpolicy", lambda: self.onpolicy_file.is_file(), [self.onpolicy_argv()])
            self.stage("prefer", lambda: (self.out / "prefer" / CONFIG_NAME).is_file(), [self.prefer_argv()])
        if self.ablations:
            scratch = self.out / "noalign_init"
            self.stage("instruct_without_alignment", lambda: (self.out / "noalign" / CONFIG_NAME).is_file(),
                       [["build", "--vision", f"hf:{self.backbones / 'vit'}", "--projector", self.projector(),
                         "--llm", str(self.backbones / "llm"), "--template", "vicuna_v1", "--out", str(scratch)],
                        self.instruct_argv(scratch, self.out / "noalign")])

    def projector(self) -> str:
        """The projector phase 1 builds (read from its config, so the ablation starts from the same architecture)."""
        import yaml

        return yaml.safe_load(Path(self.config(ALIGN_CONFIG)).read_text())["model"]["projector"]

    def instruct_argv(self, init_from: Path, out: Path) -> list[str]:
        w = self.world
        return ["train", self.config(INSTRUCT_CONFIG), f"model.init_from={init_from}",
                f"data.data_path=[{w / 'instruct.json'}]", f"data.image_folder={w / 'images'}",
                f"feature_cache.dir={self.feature_cache}", f"checkpoint.output_dir={out}", *self.profile.instruct,
                *self.seed_overrides]

    @property
    def onpolicy_file(self) -> Path:
        return self.out / "onpolicy" / "pairs.json"

    def onpolicy_argv(self) -> list[str]:
        """Phase 2's own wrong answers on training scenes, corrected by the world's truth (`vlm onpolicy`)."""
        return ["onpolicy", "--model", str(self.out / "instruct"), "--world", str(self.world),
                "--out", str(self.onpolicy_file), "--batch-size", str(self.profile.eval_batch_size),
                *self.profile.onpolicy]

    def prefer_argv(self) -> list[str]:
        w = self.world
        return ["train", self.config(PREFER_CONFIG), f"model.init_from={self.out / 'instruct'}",
                f"data.data_path=[{w / 'prefer_train.json'},{self.onpolicy_file}]", f"data.image_folder={w / 'images'}",
                f"feature_cache.dir={self.feature_cache}", f"checkpoint.output_dir={self.out / 'prefer'}",
                *self.profile.prefer, *self.seed_overrides]

    @property
    def final_model(self) -> Path:
        """The model the chat talks to: phase 3's when it ran, else phase 2's."""
        return self.out / ("prefer" if self.prefer else "instruct")

    def eval_argv(self, model: Path, benchmark: str, name: str, *extra: str) -> list[str]:
        argv = ["eval", "run", "--model", str(model), "--benchmark", benchmark, "--data-root", str(self.world),
                "--out", str(self.out / "eval" / name), "--batch-size", str(self.profile.eval_batch_size),
                "--no-progress", *extra]
        if self.profile.eval_limit:
            argv += ["--limit", str(self.profile.eval_limit)]
        return argv

    def evaluations(self) -> dict[str, list[str]]:
        model, noalign = self.out / "instruct", self.out / "noalign"
        return {
            "vqa": self.eval_argv(model, "vqav2", "vqa"),
            "vqa_blind": self.eval_argv(model, "vqav2", "vqa_blind", "--blank-images"),
            "pope": self.eval_argv(model, "pope", "pope"),
            "captions": self.eval_argv(model, "coco_captions", "captions", "--no-meteor"),
            "mcq": self.eval_argv(model, "scienceqa_img", "mcq"),
            "text": self.eval_argv(model, "text_qa", "text"),
            "chair": self.eval_argv(model, "chair", "chair"),
            **({f"{name}_prefer": self.eval_argv(self.out / "prefer", bench, f"{name}_prefer", *extra)
                for name, bench, extra in PREFER_BENCHMARKS} if self.prefer else {}),
            **({"vqa_noalign": self.eval_argv(noalign, "vqav2", "vqa_noalign")} if self.ablations else {}),
        }

    def run_evaluations(self) -> None:
        for name, argv in self.evaluations().items():
            scores = self.out / "eval" / name / "scores.json"
            self.stage(f"eval_{name}", scores.is_file, [argv])

    def scores(self, name: str) -> dict[str, Any]:
        return json.loads((self.out / "eval" / name / "scores.json").read_text())["scores"]

    def prior_baseline(self) -> float:
        """VQA accuracy of answering the most frequent answer of each question type (no image, no model)."""
        from eval.metrics.vqa import VQAGroundTruth, score_vqa

        annotations = json.loads((self.world / "eval" / "vqav2" / "annotations.json").read_text())["annotations"]
        by_type: dict[str, Counter] = defaultdict(Counter)
        for ann in annotations:
            by_type[ann["question_type"]][ann["multiple_choice_answer"]] += 1
        preds = {str(a["question_id"]): by_type[a["question_type"]].most_common(1)[0][0] for a in annotations}
        gt = {str(a["question_id"]): VQAGroundTruth(tuple(x["answer"] for x in a["answers"]), a["question_type"],
                                                    a["answer_type"]) for a in annotations}
        return score_vqa(preds, gt)["accuracy"]

    def chat(self) -> dict[str, str]:
        from skimage import data as skimage_data
        from PIL import Image

        photo = self.out / "astronaut.png"
        if not photo.is_file():
            Image.fromarray(skimage_data.astronaut()).save(photo)
        scene = sorted((self.world / "images" / "test").glob("*.png"))[0]
        answers = {}
        for label, image, question in [
            ("synthetic", scene, "Describe the image briefly."),
            ("photograph", photo, "What colour is the large object?"),
        ]:
            self.log(f"[demo] chat about {image.name}: {question}")
            start = time.perf_counter()
            code = self.vlm(["chat", "--model", str(self.final_model), "--image", str(image), "--question", question,
                        "--max-new-tokens", str(self.profile.chat_tokens)])
            if code:
                raise DemoError(f"chat on {image} failed (exit {code})")
            answers[label] = str(image)
            self.stages[f"chat_{label}"] = round(time.perf_counter() - start, 1)
        return answers

    def phase_figures(self, suffix: str = "") -> dict[str, Any]:
        """The figures phase 3 is judged on, for phase 2's model (`suffix=""`) or phase 3's (`"_prefer"`)."""
        vqa, chair = self.scores(f"vqa{suffix}"), self.scores(f"chair{suffix}")
        pope_f1 = [v["f1"] for v in self.scores(f"pope{suffix}")["per_split"].values()]
        return {"pope_f1": round(sum(pope_f1) / len(pope_f1), 4), "chair_s": chair["CHAIR_s"],
                "chair_i": chair["CHAIR_i"], "object_recall": chair["recall"],
                "vqa_accuracy_seen": vqa["per_group"].get("seen"),
                "vqa_accuracy_heldout": vqa["per_group"].get("heldout"),
                "caption_cider": self.scores(f"captions{suffix}")["CIDEr"]}

    def preference_report(self) -> dict[str, Any]:
        before, after = self.phase_figures(), self.phase_figures("_prefer")

        def within(key: str, points: float) -> bool | None:
            return None if before[key] is None or after[key] is None else after[key] >= before[key] - points

        targets = {"chair_s_at_least_halved": after["chair_s"] <= before["chair_s"] / 2,
                   "pope_f1_at_least_0.95": after["pope_f1"] >= 0.95,
                   "vqa_seen_within_1_point": within("vqa_accuracy_seen", 1.0),
                   "vqa_heldout_within_1_point": within("vqa_accuracy_heldout", 1.0),
                   "recall_at_most_2_points_lower": within("object_recall", 2.0)}
        return {"before": before, "after": after, "targets_met": targets}

    def report(self, total: float) -> dict[str, Any]:
        vqa = self.scores("vqa")
        pope = self.scores("pope")
        pope_f1 = [v["f1"] for v in pope["per_split"].values()]
        chair = self.scores("chair")
        report = {
            "vqa_accuracy_seen": vqa["per_group"].get("seen"),
            "vqa_accuracy_heldout": vqa["per_group"].get("heldout"),
            "vqa_accuracy": vqa["accuracy"],
            "vqa_accuracy_blind": self.scores("vqa_blind")["accuracy"],
            "vqa_accuracy_prior_baseline": self.prior_baseline(),
            "pope_f1": round(sum(pope_f1) / len(pope_f1), 4),
            "caption_cider": self.scores("captions")["CIDEr"],
            "mcq_accuracy": self.scores("mcq")["accuracy"],
            "text_only_accuracy": self.scores("text")["accuracy"],
            "chair_s": chair["CHAIR_s"],
            "chair_i": chair["CHAIR_i"],
            "object_recall": chair["recall"],
            "backbones": "retrained (--pretrain-backbones)" if self.pretrain_backbones else "shipped",
            "training_seed": self.seed if self.seed is not None else "the configs' (42)",
            "stages_run": list(self.stages),
            "wall_seconds": {**self.stages, "total": round(total, 1)},
        }
        if self.ablations:
            noalign = self.scores("vqa_noalign")["per_group"]
            report["no_alignment_vqa_accuracy_seen"] = noalign.get("seen")
            report["no_alignment_vqa_accuracy_heldout"] = noalign.get("heldout")
        if self.prefer:
            report["preference"] = self.preference_report()
        (self.out / "report.json").write_text(json.dumps(report, indent=2))
        return report


def print_table(report: dict[str, Any], log: Callable[[str], None] = print) -> None:
    log("\n| metric | value |\n|---|---|")
    for key, value in report.items():
        if key not in ("wall_seconds", "stages_run", "preference"):
            log(f"| {key} | {value} |")
    if "preference" in report:
        pref = report["preference"]
        log("\n| phase 3 (preference) | before | after |\n|---|---|---|")
        for key, value in pref["before"].items():
            log(f"| {key} | {value} | {pref['after'][key]} |")
        log("targets: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in pref["targets_met"].items()))
    log(f"| wall seconds (total) | {report['wall_seconds']['total']} |")
    log(f"stages run: {', '.join(report['stages_run'])}")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="where every stage writes (default runs/demo)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default")
    parser.add_argument("--fresh", action="store_true", help="delete --out first and redo every stage")
    parser.add_argument("--pretrain-backbones", action="store_true",
                        help="train the stage-0 ViT and LLM again (under OUT/world/backbones) instead of using the "
                             "shipped ones in synthetic/backbones/")
    parser.add_argument("--seed", type=int, default=None,
                        help="training seed of both phases (default: the configs' own); the world stays seed 0")
    parser.add_argument("--no-prefer", dest="prefer", action="store_false",
                        help="skip phase 3 (preference tuning on the corrective pairs) and its before/after report")
    parser.add_argument("--ablations", action="store_true",
                        help="also run phase 2 without phase 1 (LLaVA's ablation) and report its VQA accuracy")


def main(args: argparse.Namespace, run_command: CommandRunner) -> int:
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    demo = Demo(out, PROFILES[args.profile], repo, run_command, pretrain_backbones=args.pretrain_backbones,
                ablations=args.ablations, seed=args.seed, prefer=args.prefer)
    start = time.perf_counter()
    try:
        demo.run_training()
        demo.run_evaluations()
        demo.chat()
    except DemoError as err:
        print(f"vlm demo: error: {err}", file=sys.stderr)
        return 1
    total = sum(v for k, v in demo.stages.items())
    report = demo.report(total)
    print_table(report)
    print(f"[demo] report: {out / 'report.json'} (this call: {time.perf_counter() - start:.0f} s)")
    return 0
