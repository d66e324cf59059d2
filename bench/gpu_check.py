"""The GPU acceptance matrix on one GPU in under 9 minutes: each step a subprocess with its own timeout, one JSON line.

Steps (tiny models of the test world, built here; `--steps a,b` picks some): single bf16 + gradient checkpointing,
ZeRO-2 packed, ZeRO-3 + gradient checkpointing, ZeRO-3 LoRA, QLoRA, anyres, timm encoder under ZeRO-3, eval
(batched greedy == batch 1) and chat (also anyres) in `--dtype auto`, export to HF Llava, `bench/vs_hf.py --device cuda` without
and with packing. Each line: {"step", "status": pass|fail|refused, "seconds", "reason" (fail/refused), figures...}.

Without CUDA it is a rehearsal: the steps that only mean something on a GPU (QLoRA, vs_hf on CUDA) are refused by
name, the others run in fp32 on the CPU, so the script itself is checked before GPU minutes are spent on it. A step
whose package is missing (deepspeed, bitsandbytes) is refused naming it; a step that would start with less than
its minimum time left in `--budget` is refused as out of time. Run: `bash bench/gpu_check.sh [--out DIR]`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
ZERO = REPO / "configs" / "deepspeed"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


@dataclass
class Step:
    """One check: a command (built once the world exists), what it needs, and how to read its figures."""

    name: str
    command: Callable[["World"], list[str]]
    timeout: int
    gpu_only: bool = False  # meaningless on a CPU (refused there)
    needs: tuple[str, ...] = ()  # importable packages
    figures: Callable[["World", str], dict[str, Any]] = field(default=lambda world, out: {})


class World:
    """Tiny saved models (clip / anyres / timm), 4 images, 24 LLaVA records and a config, under `root`."""

    def __init__(self, root: Path, cuda: bool) -> None:
        self.root, self.cuda = root, cuda
        self.precision = "bf16" if cuda else "fp32"

    def build(self) -> None:
        from PIL import Image

        from vlm.testing import make_tiny_vlm

        for name, kwargs in (("base", {}), ("anyres", {"image_aspect_ratio": "anyres",
                                                       "image_grid_pinpoints": "(1x1),...,(2x2)"}),
                             ("timm", {"encoder": "timm"})):
            if not (self.root / name).is_dir():
                make_tiny_vlm(self.root / f"parts_{name}", **kwargs).save(self.root / name)
        images = self.root / "images"
        images.mkdir(parents=True, exist_ok=True)
        for colour, rgb in COLOURS.items():
            image = Image.new("RGB", (40, 32), rgb)
            image.paste((255, 255, 255), (4, 4, 14, 14))
            image.save(images / f"{colour}.png")
        records = []
        for i in range(24):
            colour = list(COLOURS)[i % 4]
            if i % 5 == 4:
                records.append({"id": f"t{i}", "conversations": [
                    {"from": "human", "value": f"Count to {i % 7}."},
                    {"from": "gpt", "value": " ".join(str(k) for k in range(i % 7 + 1))}]})
            else:
                records.append({"id": f"r{i}", "image": f"{colour}.png", "conversations": [
                    {"from": "human", "value": "<image>\nWhat is in the image?"},
                    {"from": "gpt", "value": f"A {colour} picture with a white square."}]})
        (self.root / "data.json").write_text(json.dumps(records))
        config = {"recipe": "instruct", "model": {"init_from": str(self.root / "base"), "template": "vicuna_v1"},
                  "data": {"data_path": [str(self.root / "data.json")], "image_folder": str(images),
                           "max_length": 256},
                  "optim": {"lr": 1e-3, "warmup_ratio": 0.0}, "global_batch_size": 4, "micro_batch_size": 2,
                  "max_steps": 2, "save_every": 1, "seed": 0, "resume": "none", "feature_cache": False,
                  "tensorboard": False, "progress_bar": False}
        (self.root / "tiny.json").write_text(json.dumps(config))

    def train(self, name: str, *overrides: str, model: str = "base") -> list[str]:
        out = self.root / "runs" / name
        shutil.rmtree(out, ignore_errors=True)  # a fresh run each time (an existing output_dir would resume)
        return [sys.executable, "-m", "app.cli", "train", str(self.root / "tiny.json"), f"output_dir={out}",
                f"precision={self.precision}", f"model.init_from={self.root / model}", *overrides]

    def checkpoint(self) -> Path:
        """The single-process run's output when it finished, else the untrained base model."""
        run = self.root / "runs" / "single_bf16_gc"
        return run if (run / "vlm_config.json").is_file() else self.root / "base"

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"


def train_figures(world: World, name: str) -> dict[str, Any]:
    metrics = world.root / "runs" / name / "metrics.jsonl"
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.is_file() else []
    if not lines:
        raise RuntimeError(f"no metrics.jsonl lines in runs/{name}")
    last = lines[-1]
    return {"steps_done": last.get("step"),
            **{k: last[k] for k in ("loss", "grad_norm", "mfu", "peak_mem_mb", "tokens_per_s") if k in last}}


def json_line_figures(keys: tuple[str, ...]) -> Callable[[World, str], dict[str, Any]]:
    def read(world: World, out: str) -> dict[str, Any]:
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        if not lines:
            raise RuntimeError("no JSON line in the output")
        return {k: lines[-1].get(k) for k in keys}

    return read


def eval_figures(world: World, out: str) -> dict[str, Any]:
    """Questions/s per batch size, and whether batched greedy answers equal batch 1's (bench/eval_generation.py)."""
    rates = {int(m[1]): float(m[2]) for m in re.finditer(r"batch\s+(\d+):\s+([\d.]+) questions/s", out)}
    same = re.findall(r"identical predictions: (True|False)", out)
    if not rates:
        raise RuntimeError("no 'batch N: X questions/s' line")
    return {"questions_per_s": rates, "batched_equals_batch1": bool(same) and all(x == "True" for x in same)}


def chat_figures(world: World, out: str) -> dict[str, Any]:
    """The answer's length (an untrained tiny model answers noise; the point is that it answers in its dtype)."""
    answer = json_line_figures(("answer",))(world, out)["answer"]
    return {"answer_chars": len(answer or "")}


def _train_step(name: str, *overrides: str, model: str = "base", needs: tuple[str, ...] = (),
                timeout: int = 75) -> Step:
    return Step(name, lambda w: w.train(name, *overrides, model=model), timeout, needs=needs,
                figures=lambda w, out: train_figures(w, name))


ZERO3 = f"deepspeed_config={ZERO / 'zero3.json'}"
STEPS = [
    Step("env", lambda w: [sys.executable, "-c", ENV_REPORT], 30,
         figures=json_line_figures(("torch", "cuda", "device_name", "bf16", "packages"))),
    _train_step("single_bf16_gc", "strategy=single", "gradient_checkpointing=true", "data.num_workers=2"),
    _train_step("zero2_packed", "strategy=deepspeed", f"deepspeed_config={ZERO / 'zero2.json'}", "data.packing=true",
                needs=("deepspeed",)),
    _train_step("zero3_gc", "strategy=deepspeed", ZERO3, "gradient_checkpointing=true", needs=("deepspeed",)),
    _train_step("zero3_lora", "strategy=deepspeed", ZERO3, "llm_mode=lora", needs=("deepspeed",)),
    Step("qlora", lambda w: w.train("qlora", "strategy=single", "llm_mode=qlora"), 75, gpu_only=True,
         needs=("bitsandbytes",), figures=lambda w, out: train_figures(w, "qlora")),
    _train_step("anyres", "strategy=single", model="anyres"),
    _train_step("timm_zero3", "strategy=deepspeed", ZERO3, model="timm", needs=("deepspeed",)),
    Step("eval_auto", lambda w: [sys.executable, str(REPO / "bench" / "eval_generation.py"), "--model",
                                 str(w.checkpoint()), "--questions", "16", "--device", w.device], 90,
         figures=eval_figures),
    Step("chat_auto", lambda w: [sys.executable, "-m", "app.cli", "chat", "--model", str(w.checkpoint()),
                                 "--device", w.device, "--dtype", "auto", "--image", str(w.root / "images" / "red.png"),
                                 "--question", "What is in the image?", "--json"], 60,
         figures=chat_figures),
    Step("chat_anyres", lambda w: [sys.executable, "-m", "app.cli", "chat", "--model", str(w.root / "anyres"),
                                   "--device", w.device, "--dtype", "auto", "--image",
                                   str(w.root / "images" / "red.png"), "--question", "What is in the image?", "--json"],
         60, figures=chat_figures),
    Step("export", lambda w: [sys.executable, "-m", "app.cli", "export-hf", str(w.checkpoint()), "--out",
                              str(w.root / "export")], 60,
         figures=lambda w, out: {"files": sorted(p.name for p in (w.root / "export").iterdir())}),
    Step("vs_hf", lambda w: [sys.executable, str(REPO / "bench" / "vs_hf.py"), "--device", "cuda", "--phases", "2",
                             "--steps", "3"], 120, gpu_only=True,
         figures=json_line_figures(("loss_rel_gap", "ratio_tokens_per_s", "ratio_peak_memory", "mfu",
                                    "ours_syncs_per_step", "ours_sync_sources"))),
    Step("vs_hf_packing", lambda w: [sys.executable, str(REPO / "bench" / "vs_hf.py"), "--device", "cuda",
                                     "--phases", "2", "--steps", "3", "--packing"], 120, gpu_only=True,
         figures=json_line_figures(("loss_rel_gap", "ratio_tokens_per_s", "ratio_peak_memory", "mfu",
                                    "ours_syncs_per_step", "ours_sync_sources"))),
]

ENV_REPORT = """
import importlib.util as u, json, torch
cuda = torch.cuda.is_available()
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "device_name": torch.cuda.get_device_name(0) if cuda else None,
                  "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
                  "packages": {m: bool(u.find_spec(m)) for m in ("deepspeed", "bitsandbytes", "flash_attn", "timm",
                                                                  "open_clip", "peft")}}))
"""


def refusal(step: Step, cuda: bool, left: float) -> str | None:
    """Why `step` is not run here, or None."""
    if step.gpu_only and not cuda:
        return "needs a CUDA GPU (torch.cuda.is_available() is False): refused in the CPU rehearsal"
    missing = [m for m in step.needs if importlib.util.find_spec(m) is None]
    if missing:
        return f"package(s) not installed: {', '.join(missing)} (pip install -e .[gpu])"
    if left < min(step.timeout, 30):
        return f"out of time: {left:.0f} s of the budget left"
    return None


def run_step(step: Step, world: World, left: float, log_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    line: dict[str, Any] = {"step": step.name, "device": world.device}
    why = refusal(step, world.cuda, left)
    if why is not None:
        return {**line, "status": "refused", "seconds": 0.0, "reason": why}
    limit = int(min(step.timeout, left))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if not world.cuda:
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    try:
        done = subprocess.run(step.command(world), cwd=REPO, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as err:
        _write_log(log_dir, step.name, err.stdout, err.stderr)
        return {**line, "status": "fail", "seconds": round(time.perf_counter() - started, 1),
                "reason": f"timed out after {limit} s"}
    _write_log(log_dir, step.name, done.stdout, done.stderr)
    seconds = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        tail = [x for x in done.stderr.strip().splitlines() if x.strip()][-3:]
        return {**line, "status": "fail", "seconds": seconds, "reason": f"exit {done.returncode}: {' | '.join(tail)}"}
    try:
        figures = step.figures(world, done.stdout)
    except Exception as err:  # noqa: BLE001 - a figure that cannot be read fails the step, with the reason
        return {**line, "status": "fail", "seconds": seconds, "reason": f"figures: {err}"}
    return {**line, "status": "pass", "seconds": seconds, **figures}


def _write_log(log_dir: Path, name: str, stdout: Any, stderr: Any) -> None:
    def text(value: Any) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")

    (log_dir / f"{name}.log").write_text(text(stdout) + "\n--- stderr ---\n" + text(stderr))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check_out"), help="world, runs, logs and results.jsonl")
    parser.add_argument("--steps", default=None, help=f"comma-separated subset of {[s.name for s in STEPS]}")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole matrix (default 540)")
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    chosen = STEPS
    if args.steps:
        names = args.steps.split(",")
        unknown = sorted(set(names) - {s.name for s in STEPS})
        if unknown:
            parser.error(f"unknown steps {unknown}; known: {[s.name for s in STEPS]}")
        chosen = [s for s in STEPS if s.name in names]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    world = World(args.out.resolve() / "world", cuda)
    world.build()
    failed = 0
    with open(args.out / "results.jsonl", "w") as results:
        for step in chosen:
            line = run_step(step, world, args.budget - (time.perf_counter() - begin), args.out / "logs")
            failed += line["status"] == "fail"
            print(json.dumps(line), flush=True)
            results.write(json.dumps(line) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
