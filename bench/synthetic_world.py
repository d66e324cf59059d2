"""Bench the synthetic world: generation wall time, stage-0 wall times, final losses and ViT retrieval accuracy.

Usage: .venv/bin/python bench/synthetic_world.py [--out DIR] [--num-train 20000] [--num-test 500] [--workers 2]
       [--llm-steps N] [--vit-steps N] [--skip-stage0]
Timings use torch's default thread count; on a shared machine they include other users' load (printed).
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from synthetic.generate import SynthConfig, generate_world
from synthetic.stage0.cli import pretrain_backbones
from synthetic.stage0.config import LLMPretrainConfig, ViTPretrainConfig


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: a load-independent cost figure on a shared machine."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="world directory (default: a temporary one)")
    parser.add_argument("--num-train", type=int, default=20000)
    parser.add_argument("--num-test", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--llm-steps", type=int, default=LLMPretrainConfig.steps)
    parser.add_argument("--vit-steps", type=int, default=ViTPretrainConfig.steps)
    parser.add_argument("--skip-stage0", action="store_true")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="synthetic_world_")) / "world"
    print(f"cpus={os.cpu_count()} torch_threads={torch.get_num_threads()} load_avg_before={os.getloadavg()}")

    t0, c0 = time.perf_counter(), cpu_seconds()
    report = generate_world(SynthConfig(out=str(out), num_train=args.num_train, num_test=args.num_test,
                                        num_workers=args.workers))
    total, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    print(f"\ngeneration: {args.num_train} train + {args.num_test} test images, {args.workers} workers: "
          f"wall {total:.1f}s, CPU {cpu:.1f}s (CPU/2 cores = {cpu / 2:.1f}s ideal wall on an idle 2-core machine)")
    for name, seconds in report.timings.items():
        print(f"  {name:<10} {seconds:7.2f}s")
    print(f"  images/s   {(args.num_train + args.num_test) / report.timings['images']:7.0f}")
    for name, count in report.counts.items():
        print(f"  {name:<18} {count}")
    if args.skip_stage0:
        return
    c0 = cpu_seconds()
    results = pretrain_backbones(out, out / "backbones", LLMPretrainConfig(steps=args.llm_steps),
                                 ViTPretrainConfig(steps=args.vit_steps), force=True)
    llm, vit = results["llm"], results["vit"]
    print(f"\nstage 0 total CPU {cpu_seconds() - c0:.1f}s (both steps, all threads)")
    print(f"stage 0 LLM: {llm['params']:,} params, {args.llm_steps} steps, wall {llm['wall_seconds']:.1f}s "
          f"({llm['tokens_per_second']:.0f} tokens/s)")
    print(f"  val loss {llm['initial_val_loss']:.3f} -> {llm['final_val_loss']:.3f}; "
          f"train loss {llm['first_train_loss']:.3f} -> {llm['final_train_loss']:.3f}")
    r0, r = vit["initial_retrieval"], vit["retrieval"]
    print(f"stage 0 ViT: {vit['params_vision']:,} vision params ({vit['params_total']:,} with the text tower), "
          f"{args.vit_steps} steps, wall {vit['wall_seconds']:.1f}s ({vit['images_per_second']:.0f} images/s)")
    print(f"  contrastive loss {vit['first_train_loss']:.3f} -> {vit['final_train_loss']:.3f}")
    print(f"  test retrieval among N={r['num_candidates']} (chance {r['chance']:.4f}): image->text top-1 "
          f"{r0['image_to_text_top1']:.3f} -> {r['image_to_text_top1']:.3f}, text->image top-1 "
          f"{r0['text_to_image_top1']:.3f} -> {r['text_to_image_top1']:.3f}")
    if vit.get("cell_caption_top1") is not None:
        print(f"  patch token -> its cell's caption among all distinct cell captions: top-1 "
              f"{vit['cell_caption_top1']:.3f} (chance {vit['cell_caption_chance']:.4f})")
    print(f"load_avg_after={os.getloadavg()}  world: {out}")


if __name__ == "__main__":
    main()
