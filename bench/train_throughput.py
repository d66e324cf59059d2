"""Train tokens/s and MFU (vs this CPU's measured fp32 matmul peak), padding with length grouping vs random
batching, and peak memory of a step, for a phase-2 step of the synthetic config's shape.

Run: `OMP_NUM_THREADS=1 .venv/bin/python bench/train_throughput.py`. Times are process CPU time (one thread),
so that load from other jobs on a shared machine does not count; wall time is printed beside them.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from feature_cache import WORDS, build_synthetic_model, write_align_data  # noqa: E402  (sibling bench script)


def matmul_peak(n: int = 1024, repeats: int = 8) -> float:
    """Best fp32 FLOP/s of an n x n @ n x n matmul on this thread (CPU time)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        torch.matmul(a, b)
        best = min(best, time.process_time() - start)
    return 2 * n**3 / best


def write_instruct_data(root: Path, images: Path, n: int, seed: int = 1) -> Path:
    """A mix like the synthetic world's: 1-4 turn VQA, long descriptions, and text-only records (varied lengths)."""
    rng = np.random.default_rng(seed)
    image_names = sorted(p.name for p in images.glob("*.png"))
    records = []
    for i in range(n):
        kind = rng.choice(["vqa", "describe", "text"], p=[0.6, 0.25, 0.15])
        words = lambda a, b: " ".join(rng.choice(WORDS, size=int(rng.integers(a, b))))  # noqa: E731
        if kind == "text":
            conv = [{"from": "human", "value": words(4, 12)}, {"from": "gpt", "value": words(5, 40)}]
            records.append({"id": f"t{i}", "conversations": conv})
            continue
        conv = [{"from": "human", "value": "<image>\n" + words(3, 8)},
                {"from": "gpt", "value": words(20, 60) if kind == "describe" else words(1, 3)}]
        for _ in range(int(rng.integers(0, 4)) if kind == "vqa" else 0):
            conv += [{"from": "human", "value": words(3, 8)}, {"from": "gpt", "value": words(1, 3)}]
        records.append({"id": str(i), "image": image_names[i % len(image_names)], "conversations": conv})
    path = root / "instruct.json"
    path.write_text(json.dumps(records))
    return path


def make_trainer(root: Path, base: Path, data: Path, images: Path, args: argparse.Namespace, group_by: str) -> Any:
    from train.config import config_from_dict
    from train.loop import Trainer
    from train.runtime import seed_everything
    from train.recipes import build_data, build_model, prepare_model
    from train.strategies.single import SingleProcessStrategy

    cfg = config_from_dict({
        "recipe": "instruct", "model": {"init_from": str(base), "template": "vicuna_v1"},
        "data": {"data_path": [str(data)], "image_folder": str(images), "max_length": 512, "group_by": group_by},
        "optim": {"lr": 2e-5, "warmup_ratio": 0.0},
        "schedule": {"global_batch_size": args.global_batch, "micro_batch_size": args.micro_batch, "max_steps": 10**6},
        "engine": {"precision": "fp32"}, "trainable": {"llm_mode": "full"},
        "checkpoint": {"output_dir": str(root / f"run_{group_by}"), "resume": "none"},
        "feature_cache": {"enabled": False}, "log": {"tensorboard": False, "progress_bar": False},
    })
    strategy = SingleProcessStrategy()
    seed_everything(cfg.schedule.seed)
    model = build_model(cfg)
    prepare_model(model, cfg)
    return Trainer(cfg, model, build_data(cfg, model, strategy), strategy)


def padding_fraction(trainer: Any, lengths: list[int]) -> float:
    """Pad positions / all positions over every micro-batch of epoch 0 (right padding to the batch's longest)."""
    padded = real = 0
    for batch in trainer.data.epoch_batches(0):
        sizes = [lengths[i] for i in batch]
        padded += max(sizes) * len(sizes)
        real += sum(sizes)
    return 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    peak = matmul_peak()
    print(f"fp32 matmul peak (1 thread, 1024^3, best of 8): {peak / 1e9:.2f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = build_synthetic_model(root, template="vicuna_v1")
        _, images = write_align_data(root, 64)
        data = write_instruct_data(root, images, args.records)
        grouped = make_trainer(root, base, data, images, args, "length")
        lengths = [len(grouped.data.dataset[i].input_ids) for i in range(len(grouped.data.dataset))]
        random_order = make_trainer(root, base, data, images, args, "none")
        print(f"padding fraction, micro-batch {args.micro_batch}, {len(lengths)} records "
              f"(lengths {min(lengths)}-{max(lengths)}, mean {statistics.mean(lengths):.0f}): "
              f"length-grouped {padding_fraction(grouped, lengths):.3f}, random {padding_fraction(random_order, lengths):.3f}")

        rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for index, (name, trainer) in enumerate((("length-grouped", grouped), ("random", random_order))):
            it = trainer._loader(0, 0)
            windows = [[next(it) for _ in range(trainer.accum)] for _ in range(args.steps + 2)]
            trainer._step(windows[0])  # warm-up (allocates AdamW states)
            rss_step = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            counter = FlopCounterMode(display=False)
            with counter:
                trainer._step(windows[1])
            positions = sum(b.attention_mask.numel() for b in windows[1] if b)
            flops_per_position = counter.get_total_flops() / positions  # compute scales with padded positions
            cpu, wall, tokens, padded = [], [], 0, 0
            for window in windows[2:]:
                start_cpu, start_wall = time.process_time(), time.perf_counter()
                metrics = trainer._step(window)
                cpu.append(time.process_time() - start_cpu)
                wall.append(time.perf_counter() - start_wall)
                tokens += metrics["tokens"]
                padded += sum(b.attention_mask.numel() for b in window if b)
            step_cpu = sum(cpu) / len(cpu)
            achieved = flops_per_position * padded / sum(cpu)
            print(f"{name}: {tokens / sum(cpu):.0f} train tokens/s ({tokens / sum(wall):.0f} by wall clock), "
                  f"{flops_per_position / 1e6:.2f} MFLOP per position (counted), {achieved / 1e9:.2f} GFLOP/s "
                  f"executed = MFU {achieved / peak:.3f}; {step_cpu:.2f} s/step over {len(cpu)} steps")
            if index == 0:
                print(f"peak memory of a step: high-water RSS {rss_step / 1024:.0f} MiB after the first step, "
                      f"+{(rss_step - rss_loaded) / 1024:.0f} MiB over the loaded models and data "
                      f"({rss_loaded / 1024:.0f} MiB; activations, gradients and AdamW states)")


if __name__ == "__main__":
    main()
