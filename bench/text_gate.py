"""The stage-0 LLM's gate: accuracy per question kind on unseen scenes given as text sheets (target >= 95 %).

Usage: .venv/bin/python bench/text_gate.py [--llm synthetic/backbones/llm] [--scenes 500] [--seed 1]
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from synthetic.stage0.shipped import SHIPPED_DIR
from synthetic.stage0.text_gate import text_gate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--llm", default=str(SHIPPED_DIR / "llm"))
    parser.add_argument("--scenes", type=int, default=500, help="fresh scenes, three questions of distinct kinds each")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.llm)
    tokenizer = AutoTokenizer.from_pretrained(args.llm)
    start = time.perf_counter()
    scores = text_gate(model, tokenizer, seed=args.seed, num_scenes=args.scenes)
    print(f"text gate of {args.llm}: {args.scenes} scenes, {time.perf_counter() - start:.0f} s\n")
    print("| question kind | accuracy % |\n|---|---|")
    for kind, value in scores.items():
        print(f"| {kind} | {value:.1f} |")


if __name__ == "__main__":
    main()
