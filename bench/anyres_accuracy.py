"""VQA accuracy and cost of anyres vs pad-to-square on wide synthetic images, both phases at equal training steps."""
# Why 216x72: the square world's 3x3 grid stretched three times wider, objects at the same pixel size. anyres
# cuts it into three 72x72 tiles, one per grid column, so every object is whole and at the size the square-trained
# ViT knows (144x72 would cut at x=72, through the middle column's objects). pad makes it 216x216 and shrinks it
# to 72x72, so the same objects are a third of their size. Every stage is an ordinary `vlm` command in a
# subprocess; a stage whose output is already complete is reused (its wall seconds come from stages.json).
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train.run_logger import read_metrics  # noqa: E402
from vision_encoders.preprocess import ImageProcessor  # noqa: E402
from vlm.config import CONFIG_NAME, VLMConfig  # noqa: E402

ALIGN_CONFIG = REPO / "configs" / "synthetic_align.yaml"
INSTRUCT_CONFIG = REPO / "configs" / "synthetic_instruct.yaml"
MODES = ("pad", "anyres")


def pinpoints(height: int) -> str:
    """1, 2 and 3 tiles in a row or a column, and 2x2: [h, w] in pixels, tiles of the ViT's side (= the height)."""
    grid = [(1, 1), (1, 2), (1, 3), (2, 1), (3, 1), (2, 2)]
    return "[" + ",".join(f"[{r * height},{c * height}]" for r, c in grid) + "]"


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out).resolve()
        self.world = self.out / "world"
        self.backbones = Path(args.backbones).resolve()
        self.stages_file = self.out / "stages.json"
        self.stages: dict[str, float] = json.loads(self.stages_file.read_text()) if self.stages_file.is_file() else {}
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        if args.threads:
            self.env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))

    def stage(self, name: str, done: Path, argv: list[str]) -> None:
        if name in self.stages and done.exists():
            print(f"[bench] {name}: reused ({self.stages[name]:.0f} s before)", flush=True)
            return
        print(f"[bench] {name}: vlm {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            code = subprocess.run([sys.executable, "-m", "app.cli", *argv], cwd=REPO, env=self.env,
                                  stdout=f, stderr=subprocess.STDOUT).returncode
        if code:
            sys.exit(f"[bench] {name} failed (exit {code}); see {log}")
        self.stages[name] = round(time.perf_counter() - start, 1)
        self.stages_file.write_text(json.dumps(self.stages, indent=1))

    def make_world(self) -> None:
        a = self.args
        self.stage("world", self.world / "world.json",
                   ["synth", "--out", str(self.world), "--seed", str(a.seed), "--image-size", str(a.image_size),
                    "--image-width", str(a.image_width), "--num-train", str(a.num_train), "--num-test", str(a.num_test),
                    "--pope-images", "10", "--scienceqa-images", "10", "--scienceqa-text", "2", "--text-eval", "10",
                    "--num-workers", str(a.workers)])

    def cache_overrides(self, mode: str, phase: str) -> list[str]:
        # anyres encodes a size-dependent set of tiles and the feature cache holds one map per image, so the trainer
        # refuses the cache with anyres. pad goes without it too unless asked, so step times compare like for like.
        if mode == "pad" and self.args.pad_feature_cache:
            cache = [] if phase == "align" else ["feature_cache.enabled=true"]
        else:
            cache = ["feature_cache.enabled=false"]
        return [*cache, f"feature_cache.dir={self.out / 'feature_cache'}"]

    def train(self, mode: str) -> None:
        a, w, run = self.args, self.world, self.out / mode
        vision = []
        if mode == "anyres":
            vision = ["model.vision.image_aspect_ratio=anyres",
                      f"model.vision.image_grid_pinpoints={pinpoints(a.image_size)}"]
        common = [f"data.image_folder={w / 'images'}", f"schedule.seed={a.seed}"]
        self.stage(f"{mode}_align", run / "align" / CONFIG_NAME,
                   ["train", str(ALIGN_CONFIG), f"model.vision.spec=hf:{self.backbones / 'vit'}",
                    f"model.llm={self.backbones / 'llm'}", f"model.projector={a.projector}", *vision, f"data.data_path=[{w / 'align.json'}]", *common,
                    f"schedule.max_steps={a.align_steps}", f"checkpoint.output_dir={run / 'align'}", *self.cache_overrides(mode, "align")])
        self.stage(f"{mode}_instruct", run / "instruct" / CONFIG_NAME,
                   ["train", str(INSTRUCT_CONFIG), f"model.init_from={run / 'align'}",  # anyres comes from phase 1
                    f"data.data_path=[{w / 'instruct.json'}]", *common, f"schedule.max_steps={a.instruct_steps}",
                    f"checkpoint.output_dir={run / 'instruct'}", *self.cache_overrides(mode, "instruct")])
        argv = ["eval", "run", "--model", str(run / "instruct"), "--benchmark", "vqav2", "--data-root", str(w),
                "--out", str(run / "eval_vqa"), "--batch-size", str(a.eval_batch_size), "--no-progress"]
        if a.eval_limit:
            argv += ["--limit", str(a.eval_limit)]
        self.stage(f"{mode}_eval", run / "eval_vqa" / "scores.json", argv)

    def result(self, mode: str) -> dict:
        run, size = self.out / mode, (self.args.image_size, self.args.image_width)
        scores = json.loads((run / "eval_vqa" / "scores.json").read_text())["scores"]
        tokens, tiles = image_cost(run / "instruct", size)
        row = {"vqa": scores["accuracy"], "seen": scores["per_group"].get("seen"),
               "heldout": scores["per_group"].get("heldout"), "per_question_type": scores["per_question_type"],
               "image_tokens": tokens, "encoder_tiles": tiles,
               "feature_cache": mode == "pad" and self.args.pad_feature_cache}
        for phase in ("align", "instruct"):
            row[f"{phase}_step_s"] = mean_step_time(run / phase)
            row[f"{phase}_wall_s"] = self.stages[f"{mode}_{phase}"]
        row["eval_wall_s"] = self.stages[f"{mode}_eval"]
        return row


def image_cost(model_dir: Path, size: tuple[int, int]) -> tuple[int, int]:
    """(image tokens, encoder tiles) per image of `size` (h, w) for a saved checkpoint."""
    config = VLMConfig.load(model_dir)
    if not config.vision.anyres:
        return config.num_image_tokens, 1
    processor = ImageProcessor.load(model_dir / "image_processor.json")
    geometry = processor.anyres_geometry(grid_side=math.isqrt(config.num_image_tokens))
    return geometry.num_tokens(size), geometry.num_tiles(size)


def mean_step_time(run_dir: Path) -> float:
    """Mean optimizer-step time from the run's metrics.jsonl, leaving out step 1 (warm-up) when there are more."""
    times = [m["step_time_s"] for m in read_metrics(run_dir) if "step_time_s" in m]
    if not times:
        return float("nan")
    return statistics.fmean(times[1:] if len(times) > 1 else times)


def print_table(args: argparse.Namespace, results: dict[str, dict], world_s: float) -> None:
    h, w = args.image_size, args.image_width
    print(f"\n{w}x{h} synthetic world: {args.num_train} train / {args.num_test} test images (world {world_s:.0f} s); "
          f"align {args.align_steps} steps, instruct {args.instruct_steps} steps, seed {args.seed}; "
          f"backbones {args.backbones}\n")
    print("| mode | VQA acc | seen | heldout | image tokens / image | encoder tiles / image | align step s "
          "| instruct step s | align wall s | instruct wall s | eval wall s | feature cache |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        pct = [f"{v:.1f}" if v is not None else "-" for v in (r["vqa"], r["seen"], r["heldout"])]  # already percent
        print(f"| {mode} | {' | '.join(pct)} | {r['image_tokens']} | {r['encoder_tiles']} | {r['align_step_s']:.3f} "
              f"| {r['instruct_step_s']:.3f} | {r['align_wall_s']:.0f} | {r['instruct_wall_s']:.0f} "
              f"| {r['eval_wall_s']:.0f} | {'on' if r['feature_cache'] else 'off'} |")
    types = sorted({t for r in results.values() for t in r["per_question_type"]})
    print("\n| mode | " + " | ".join(types) + " |\n|---|" + "---|" * len(types))
    for mode, r in results.items():
        print(f"| {mode} | " + " | ".join(f"{r['per_question_type'].get(t, float('nan')):.1f}" for t in types) + " |")
    if "anyres" in results:
        print("\nanyres trains without the feature cache (the cache holds one feature map per image, anyres a "
              "size-dependent set of tiles); pad " + ("uses it (--pad-feature-cache)." if args.pad_feature_cache
                                                      else "goes without it too, so step times compare like for like."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", required=True, help="dir with vit/ and llm/ from `vlm pretrain-backbones` "
                                                           "(trained on the square world of the same height)")
    parser.add_argument("--out", required=True, help="working directory (world, runs, logs, results.json)")
    parser.add_argument("--image-size", type=int, default=72, help="image height = the ViT's input side")
    parser.add_argument("--image-width", type=int, default=216)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="world and training seed")
    parser.add_argument("--align-steps", type=int, default=60, help="phase-1 max_steps (both modes)")
    parser.add_argument("--instruct-steps", type=int, default=600, help="phase-2 max_steps (both modes)")
    parser.add_argument("--projector", default="mlp2x_gelu",
                        help="phase-1 projector for both modes (anyres needs a one-to-one projector)")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--eval-limit", type=int, default=None, help="only the first N VQA questions")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of pad,anyres")
    parser.add_argument("--pad-feature-cache", action="store_true",
                        help="let pad use the feature cache (faster, but its step times then skip the ViT)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every stage")
    parser.add_argument("--workers", type=int, default=2, help="processes drawing the world's images")
    parser.add_argument("--fresh", action="store_true",
                        help="delete --out first and redo every stage (do so after changing sizes or steps)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes must name some of {MODES}, got {args.modes!r}")
    for part in ("vit", "llm"):
        if not (Path(args.backbones) / part).is_dir():
            parser.error(f"--backbones {args.backbones} has no {part}/ (write it with `vlm pretrain-backbones`)")
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    bench.make_world()
    results = {}
    for mode in modes:
        bench.train(mode)
        results[mode] = bench.result(mode)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results,
                                                  "wall_seconds": bench.stages}, indent=1))
    print_table(args, results, bench.stages["world"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
