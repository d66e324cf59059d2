"""Questions/s of batched eval generation (batch 8, 16) vs batch 1 on one tiny model; greedy outputs must agree."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def _items(n: int):
    from eval.items import SHORT_ANSWER, EvalItem

    words = ["red", "green", "blue", "square", "circle", "left", "right", "top"]
    return [EvalItem(i, Image.new("RGB", (24 + i % 9, 20 + i % 5), (17 * i % 256, 90, 40)),
                     "Is there a " + " ".join(words[: 1 + i % len(words)]) + " shape?" + SHORT_ANSWER)
            for i in range(n)]


def _timed(generate, items, batch_size: int) -> tuple[list[str], float]:
    start = time.perf_counter()
    out: list[str] = []
    for b in range(0, len(items), batch_size):
        out.extend(generate(items[b:b + batch_size]))
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="checkpoint dir (default: build the tiny test model)")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from eval.generation import ModelGenerator, load_generator

    if args.model is None:
        from vlm.testing import make_tiny_vlm

        tmp = Path(tempfile.mkdtemp(prefix="eval_bench_"))
        make_tiny_vlm(tmp / "build").save(tmp / "ckpt")
        args.model = str(tmp / "ckpt")
    gen = load_generator(args.model, args.max_new_tokens, device=args.device)
    assert isinstance(gen, ModelGenerator)
    items = _items(args.questions)
    _timed(gen, items[:8], 8)  # warm-up (allocator, kernels)
    base, t1 = _timed(gen, items, 1)
    qps1 = len(items) / t1
    device = next(gen.model.parameters()).device
    print(f"device {device}, {len(items)} questions, max_new_tokens {args.max_new_tokens}")
    print(f"batch  1: {qps1:8.2f} questions/s")
    ok = True
    for bs in (8, 16):
        preds, t = _timed(gen, items, bs)
        same = preds == base
        ok &= same
        print(f"batch {bs:2d}: {len(items) / t:8.2f} questions/s  ratio {len(items) / t / qps1:5.2f}x  "
              f"identical predictions: {same}")
        if not same:
            diff = [i for i, (a, b) in enumerate(zip(base, preds, strict=True)) if a != b]
            print(f"  differing questions: {diff[:10]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
