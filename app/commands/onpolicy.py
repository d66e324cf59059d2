"""`vlm onpolicy`: a checkpoint's own wrong answers on the synthetic world's training scenes, as corrective pairs."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from eval.generation import ModelGenerator, load_generator
from synthetic.onpolicy import onpolicy_records
from synthetic.world import Scene


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the checkpoint whose answers are corrected (phase 2's)")
    parser.add_argument("--world", required=True, help="the synthetic world (`vlm synth --out`)")
    parser.add_argument("--out", required=True, help="the preference records to write (JSON, `prefer` recipe format)")
    parser.add_argument("--scenes", type=int, default=None, help="the first N training scenes (default: all)")
    parser.add_argument("--absent-per-scene", type=int, default=2,
                        help="absent objects asked about per scene, besides every present one (default 2)")
    parser.add_argument("--whole-reply", action="store_true",
                        help="reject the model's description as it is (default: with the true background named, so "
                             "the pair differs only in the objects)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="which absent objects are asked about")
    parser.add_argument("--device", default=None)


def main(args: argparse.Namespace) -> int:
    world = Path(args.world)
    scenes_file = world / "scenes" / "train.json"
    if not scenes_file.is_file():
        print(f"vlm onpolicy: error: {scenes_file} not found (is {world} a world written by `vlm synth`?)")
        return 2
    scenes = [Scene.from_dict(raw) for raw in json.loads(scenes_file.read_text())][: args.scenes]
    start = time.perf_counter()
    describe = load_generator(args.model, 96, device=args.device)  # CHAIR's budget for a description
    answer = ModelGenerator(describe.model, max_new_tokens=4)  # the same model, a yes/no budget
    records, stats = onpolicy_records(scenes, world / "images", describe, answer, args.seed, args.absent_per_scene,
                                      args.batch_size, align_background=not args.whole_reply)
    if not records:
        print(f"vlm onpolicy: error: the model answered all {stats.scenes} scenes right: no pair to train on")
        return 4
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1))
    print(f"{len(records)} pairs from {stats.scenes} scenes in {time.perf_counter() - start:.0f} s: descriptions "
          f"with an invented object {stats.descriptions_wrong['hallucinated']}, with a missed one "
          f"{stats.descriptions_wrong['missed']}; yes/no wrong {stats.questions_wrong} of {stats.questions}; "
          f"failed {stats.failed} -> {out}")
    return 0
