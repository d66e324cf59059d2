"""`vlm pretrain-backbones`: stage 0, the tiny LLM and ViT of the synthetic world (cached by config + world hash)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from synthetic.stage0.config import LLMPretrainConfig, ViTPretrainConfig
from synthetic.stage0.llm import pretrain_llm
from synthetic.stage0.shipped import write_manifest
from synthetic.stage0.vit import pretrain_vit


def pretrain_backbones(world: Path, out: Path, llm: LLMPretrainConfig, vit: ViTPretrainConfig,
                       force: bool = False, only: str = "both") -> dict:
    """Run (or reuse) both stages; returns their metrics plus wall times. `out/llm` and `out/vit` are written."""
    if only not in ("both", "llm", "vit"):
        raise ValueError(f"only must be both, llm or vit, not {only!r}")
    results: dict[str, dict] = {}
    if only in ("both", "llm"):
        t0 = time.perf_counter()
        results["llm"] = {**pretrain_llm(world, out / "llm", llm, force=force), "wall_seconds": time.perf_counter() - t0}
    if only in ("both", "vit"):
        t0 = time.perf_counter()
        results["vit"] = {**pretrain_vit(world, out / "vit", vit, force=force), "wall_seconds": time.perf_counter() - t0}
    return results


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", required=True, type=Path, help="a directory written by `vlm synth`")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default WORLD/backbones)")
    parser.add_argument("--llm-steps", type=int, default=LLMPretrainConfig.steps)
    parser.add_argument("--vit-steps", type=int, default=ViTPretrainConfig.steps)
    parser.add_argument("--llm-lesson-steps", type=int, default=LLMPretrainConfig.lesson_steps,
                        help="steps per lookup warm-up lesson before the corpus (0: no warm-up)")
    parser.add_argument("--llm-lessons", nargs="+", default=list(LLMPretrainConfig.lookup_lessons),
                        help="the warm-up lessons in order (values:SKILL for inventories, answer:KIND for one-question "
                             "chats, answer:text for text-only chats)")
    parser.add_argument("--llm-batch-tokens", type=int, default=LLMPretrainConfig.batch_tokens,
                        help="padded tokens per corpus batch")
    parser.add_argument("--vit-batch-size", type=int, default=ViTPretrainConfig.batch_size)
    parser.add_argument("--vit-patch-size", type=int, default=None,
                        help="ViT patch side in pixels (default: one patch per grid cell, image side / 3)")
    parser.add_argument("--only", choices=("both", "llm", "vit"), default="both")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--force", action="store_true", help="retrain even when a cached run matches")
    parser.add_argument("--manifest", action="store_true",
                        help="write OUT/manifest.json (configs, world settings, command, wall times, metrics, sha256 "
                             "per file): how the shipped backbones in synthetic/backbones/ are made")


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or args.world / "backbones"
    llm = LLMPretrainConfig(steps=args.llm_steps, batch_tokens=args.llm_batch_tokens, lesson_steps=args.llm_lesson_steps,
                            lookup_lessons=tuple(args.llm_lessons))
    vit = ViTPretrainConfig(steps=args.vit_steps, batch_size=args.vit_batch_size, patch_size=args.vit_patch_size)
    results = pretrain_backbones(args.world, out, llm, vit, force=args.force, only=args.only)
    if args.manifest:
        world = json.loads((args.world / "world.json").read_text())
        write_manifest(out, command="vlm " + " ".join(sys.argv[1:]), world=world["config"],
                       llm_config=asdict(llm), vit_config=asdict(vit), torch_threads=torch.get_num_threads(),
                       train_seconds={k: round(v["train_seconds"], 1) for k, v in results.items()},
                       metrics={k: {m: v[m] for m in v if m not in ("cached", "wall_seconds")} for k, v in results.items()})
    print(json.dumps(results, indent=2))
    print(f"backbones in {out}: LLM at {out / 'llm'} (AutoModelForCausalLM), ViT at {out / 'vit'} (spec hf:{out / 'vit'})")
    return 0
