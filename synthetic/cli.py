"""`vlm synth`: generate the synthetic world (images, ground truth, LLaVA data, eval files, corpus, tokenizer)."""
from __future__ import annotations

import argparse
from dataclasses import fields

from synthetic.generate import SynthConfig, generate_world

_HELP = {
    "seed": "world seed (same seed -> byte-identical files)",
    "num_train": "training images", "num_test": "test images (evaluation files use only these)",
    "image_size": "image side (the height, when --image-width is given) in pixels",
    "image_width": "image width in pixels for wide images (a multiple of 3, >= --image-size; objects keep the square "
                   "world's pixel size); unset = square",
    "num_workers": "processes drawing images (never changes the output)",
}


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    for f in fields(SynthConfig):
        if f.name == "out":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = int if f.default is None else type(f.default)  # the optional fields (image_width, prefer_scenes) are ints
        parser.add_argument(flag, type=kind, default=f.default,
                            help=f"{_HELP.get(f.name, f.name.replace('_', ' '))} (default {f.default})")


def main(args: argparse.Namespace) -> int:
    cfg = SynthConfig(**{f.name: getattr(args, f.name) for f in fields(SynthConfig)})
    report = generate_world(cfg)
    total = sum(report.timings.values())
    print(f"synthetic world written to {report.out} in {total:.1f}s")
    for name, seconds in report.timings.items():
        print(f"  {name:<10} {seconds:7.2f}s")
    for name, count in report.counts.items():
        print(f"  {name:<18} {count}")
    return 0
