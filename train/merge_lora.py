"""`vlm merge-lora --model DIR --out DIR`: fold a LoRA run's adapters into a full, standalone checkpoint."""
from __future__ import annotations

import argparse
import sys

import torch

from train.lora import load_lora_model, merge_lora


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="output directory of an llm_mode=lora run")
    parser.add_argument("--out", required=True, help="where to write the merged full checkpoint")


def merge_directory(model_dir: str, out_dir: str) -> None:
    model = load_lora_model(model_dir)
    vision = {name: p.detach().clone() for name, p in model.vision_encoder.named_parameters()}
    merge_lora(model)
    changed = [name for name, p in model.vision_encoder.named_parameters() if not torch.equal(p, vision[name])]
    if changed:  # the adapters live in the LLM: a merge that touches the vision tower is a bug, not a result
        raise RuntimeError(f"merging the LoRA adapters changed the vision tower ({changed[:3]}); nothing written")
    model.save(out_dir, projector_only=False)


def main(args: argparse.Namespace) -> int:
    try:
        merge_directory(args.model, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"vlm merge-lora: {err}", file=sys.stderr)
        return 2
    print(f"merged checkpoint written to {args.out}")
    return 0
