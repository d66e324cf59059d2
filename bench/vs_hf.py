"""Our trainer's micro-batch step vs HF `LlavaForConditionalGeneration` with its own loss: same weights, same
collated samples, interleaved timing, for phase 1 (projector trains) and phase 2 (full LLM); one JSON line each.

Ours is the loop's own loss path, `train.step.summed_token_loss(model, batch, device, features)`, on a batch from
the real collator over tokenized records; in phase 1 it reads the vision features as the trainer's feature cache
hands them (computed once, outside the timed step), while HF runs its vision tower every step. Both sides run
forward + backward from zeroed gradients (the optimizer step is the same AdamW on both and is left out).

The LLM is Qwen2-shaped with Qwen2's vocabulary of 151,936 rows (tied), small enough for 2 CPU cores; `--device
cuda` runs it (bf16 autocast, as the trainer's `precision: auto`) on a GPU, `--quick` is a smoke run.

Peak memory of a step: on a GPU, torch's allocator peak above what was allocated before the step; on a CPU, each
side runs in a fresh process and the peak resident set (VmHWM, reset through /proc/self/clear_refs after loading)
above the resident memory before the step. Run: `python bench/vs_hf.py [--quick] [--device cuda] [--packing]`.
`--packing`: ours trains the same samples packed into one row (`data.packing`: SDPA per sample), HF unpacked.
Both sides move their (host) batch to the device inside the timed step. On CUDA, `ours_syncs_per_step` counts the
host-device synchronisations of one step of ours (`torch.cuda.set_sync_debug_mode("warn")`), with the lines that
caused them; on a CPU there is nothing to count (CUDA-only).
"""
from __future__ import annotations

import argparse
import collections
import gc
import warnings
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from train.efficiency import StepFlops, padding_ratio, peak_flops  # noqa: E402

QWEN2_VOCAB = 151_936


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_width: int
    vision_layers: int
    image_size: int
    patch_size: int
    batch: int
    words: tuple[int, int]  # answer length range, in words
    steps: int


# The default's geometry is LLaVA's in miniature: 224-px images in 14-px patches give K = 256 image tokens beside
# short captions, so most positions carry no label (LLaVA-1.5: 576 image tokens, ~95 % unsupervised in phase 1).
SHAPES = {
    "default": Shape(hidden=256, layers=2, heads=4, kv_heads=2, intermediate=1024, vision_width=128,
                     vision_layers=2, image_size=224, patch_size=14, batch=4, words=(8, 32), steps=3),
    "quick": Shape(hidden=64, layers=1, heads=2, kv_heads=1, intermediate=128, vision_width=32, vision_layers=1,
                   image_size=64, patch_size=32, batch=2, words=(3, 12), steps=1),
}
WORDS = "the a red blue green small large circle square triangle left right top bottom of in on near".split()
TEMPLATES = {1: "plain", 2: "vicuna_v1"}


# ------------------------------------------------------------------------------------------- model and samples
def build_model(root: Path, shape: Shape) -> Path:
    """A random-init CLIP + Qwen2-shaped VLM saved as our checkpoint under root/ckpt; returns that path."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, Qwen2Config, Qwen2ForCausalLM

    from vision_encoders.config import VisionEncoderConfig
    from vlm.model import VisionLanguageModel
    from vlm.testing import make_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = make_tiny_tokenizer(root / "llm")
    config = Qwen2Config(vocab_size=QWEN2_VOCAB, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    Qwen2ForCausalLM(config).save_pretrained(root / "llm")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=shape.vision_width, intermediate_size=4 * shape.vision_width,
                                     num_hidden_layers=shape.vision_layers, num_attention_heads=4,
                                     image_size=shape.image_size, patch_size=shape.patch_size)
                    ).save_pretrained(root / "vision")
    vision = VisionEncoderConfig(spec=f"hf:{root / 'vision'}", select_layer=-1 if shape.vision_layers == 1 else -2)
    model = VisionLanguageModel.build(vision, "mlp2x_gelu", str(root / "llm"), "vicuna_v1")
    return model.save(root / "ckpt")


def make_batch(model: Any, root: Path, phase: int, shape: Shape, seed: int = 0, packed: bool = False) -> Any:
    """Tokenized records (one image each, answers of varied length) through the dataset and the real collator
    (`packed`: all of them in one row, through the packed collator)."""
    import random

    from instruct_data.collate import collate
    from instruct_data.dataset import InstructDataset
    from instruct_data.sources import load_records
    from conversation.testing import noise_image

    rng = random.Random(seed)
    records = []
    for i in range(shape.batch):
        noise_image((shape.image_size, shape.image_size), seed=i).save(root / f"img{i}.png")
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*shape.words)))
        question = "<image>" if phase == 1 else "<image>\nwhat is " + " ".join(rng.choice(WORDS) for _ in range(4))
        records.append({"id": f"r{i}", "image": f"img{i}.png",
                        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]})
    path = root / f"records_phase{phase}.json"
    path.write_text(json.dumps(records))
    dataset = InstructDataset(load_records(path, image_roots=[root]), TEMPLATES[phase], model.tokenizer,
                              image_token_id=model.config.image_token_id,
                              num_image_tokens=model.config.num_image_tokens,
                              image_processor=model.image_processor, image_roots=[root])
    items = [dataset[i] for i in range(len(dataset))]
    if packed:
        from instruct_data.packed_collate import collate_packed

        return collate_packed([items], model.config.pad_token_id)
    return collate(items, model.config.pad_token_id)


def set_phase(ours: Any, hf: Any, phase: int) -> None:
    """Phase 1: the projector trains; phase 2: the projector and the whole LLM. The vision tower stays frozen."""
    from train.freezing import set_trainable
    from train.recipe_registry import get_recipe

    if ours is not None:
        set_trainable(ours, recipe=get_recipe("align" if phase == 1 else "instruct"), llm_mode="full")
        ours.train()
    if hf is not None:
        for name, param in hf.named_parameters():
            param.requires_grad_("multi_modal_projector" in name or (phase == 2 and "vision_tower" not in name))
        hf.train()


def load_side(root: Path, side: str, phase: int, device: str) -> Any:
    from vlm.model import VisionLanguageModel

    if side == "ours":
        model = VisionLanguageModel.load(root / "ckpt", device=device)
        set_phase(model, None, phase)
        return model
    from transformers import LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(root / "hf", dtype=torch.float32).to(device)
    set_phase(None, hf, phase)
    return hf


# ------------------------------------------------------------------------------------------- one step each
def cached_features(model: Any, batch: Any, device: str) -> torch.Tensor:
    """What the trainer's feature cache returns for the batch's images (the frozen tower's output)."""
    with torch.no_grad():
        param = next(model.vision_encoder.parameters())
        return model.vision_encoder(batch.pixel_values.to(device, param.dtype))


def step_fns(side: str, model: Any, batch: Any, phase: int, device: str) -> tuple[Callable[[], float], bool]:
    """A step function returning the mean token loss, and whether the vision tower runs in it."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    if side == "ours":
        from train.step import summed_token_loss

        features = cached_features(model, batch, device) if phase == 1 else None
        labels = batch.labels
        supervised = int((labels[:, 1:] != -100).sum())

        def ours() -> float:
            model.zero_grad(set_to_none=True)
            with autocast:
                loss = summed_token_loss(model, batch, torch.device(device), features)
            loss.backward()
            return float(loss.detach()) / supervised

        return ours, features is None
    host = {k: getattr(batch, k) for k in ("input_ids", "attention_mask", "labels", "pixel_values")}

    def hf() -> float:
        model.zero_grad(set_to_none=True)
        inputs = {k: v.to(device, non_blocking=True) for k, v in host.items()}  # as ours does, inside the step
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        return float(loss.detach())

    return hf, True


def count_syncs(model: Any, batch: Any, phase: int, device: str) -> dict[str, Any]:
    """Host-device synchronisations in one forward + backward of ours (the bench's own loss read-back excluded),
    and the source lines that caused them; CUDA-only."""
    if not device.startswith("cuda"):
        return {"ours_syncs_per_step": None, "sync_count": "CUDA-only: nothing to count on a CPU"}
    from train.step import summed_token_loss

    features = cached_features(model, batch, device) if phase == 1 else None
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = summed_token_loss(model, batch, torch.device(device), features)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    return {"ours_syncs_per_step": len(syncs), "ours_sync_sources": dict(where.most_common(8))}


def synced(fn: Callable[[], float], device: str) -> Callable[[], float]:
    if not device.startswith("cuda"):
        return fn

    def run() -> float:
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def time_interleaved(a: Callable[[], Any], b: Callable[[], Any], steps: int) -> tuple[float, float]:
    """Median seconds per call of `a` and `b` (each already called once), alternated so that load from other
    processes hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(steps):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


# ------------------------------------------------------------------------------------------- peak memory
def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def step_peak_mb(step: Callable[[], float], device: str, steps: int = 2) -> float:
    """Peak memory of `steps` steps above what was in use before them (see the module docstring)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _status_kib("VmRSS")
    for _ in range(steps):
        step()
    return (_status_kib("VmHWM") - base) / 1024


def child_memory(root: Path, side: str, phase: int, device: str) -> float:
    """Step peak of one side in a fresh process (CPU: the allocator keeps freed memory, so sides must not share)."""
    out = subprocess.run([sys.executable, __file__, "--child", side, "--phase", str(phase), "--workdir", str(root),
                          "--device", device], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{side} phase {phase} memory run failed:\n{out.stderr[-3000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])


def run_child(args: argparse.Namespace) -> None:
    root = Path(args.workdir)
    model = load_side(root, args.child, args.phase, args.device)
    packed = root / f"batch{args.phase}_packed.pt"
    if args.child == "ours" and packed.is_file():
        from vlm.packing import use_varlen_attention

        use_varlen_attention(model.llm)
    else:
        packed = root / f"batch{args.phase}.pt"
    batch = torch.load(packed, weights_only=False)
    step, _ = step_fns(args.child, model, batch, args.phase, args.device)
    print(json.dumps({"peak_mb": step_peak_mb(step, args.device)}))


# ------------------------------------------------------------------------------------------- a phase
def bench_phase(root: Path, ours: Any, hf: Any, phase: int, shape: Shape, device: str,
                memory: str, packing: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    batch = make_batch(ours, root, phase, shape)
    torch.save(batch, root / f"batch{phase}.pt")
    ours_batch = make_batch(ours, root, phase, shape, packed=True) if packing else batch
    if packing:
        torch.save(ours_batch, root / f"batch{phase}_packed.pt")
    set_phase(ours, hf, phase)
    ours_step, ours_tower = step_fns("ours", ours, ours_batch, phase, device)
    hf_step, _ = step_fns("hf", hf, batch, phase, device)
    ours_loss, hf_loss = ours_step(), hf_step()  # also the warm-up
    ours_s, hf_s = time_interleaved(synced(ours_step, device), synced(hf_step, device), shape.steps)
    if device.startswith("cuda"):
        ours_mb, hf_mb = step_peak_mb(ours_step, device), step_peak_mb(hf_step, device)
        method = "torch.cuda.max_memory_allocated above the allocation before the step, same process"
    elif memory == "inline":
        ours_mb, hf_mb = step_peak_mb(ours_step, device), step_peak_mb(hf_step, device)
        method = "VmHWM after /proc/self/clear_refs above VmRSS, both sides in this process (rough: freed memory stays)"
    else:
        ours_mb, hf_mb = child_memory(root, "ours", phase, device), child_memory(root, "hf", phase, device)
        method = "VmHWM after /proc/self/clear_refs above VmRSS, each side in a fresh process"
    syncs = count_syncs(ours, ours_batch, phase, device)
    tokens = int(batch.attention_mask.sum())
    flops = StepFlops(ours)
    peak, peak_source = peak_flops(torch.device(device), "bf16" if device.startswith("cuda") else "fp32")
    ours_flops, hf_flops = flops.batch_flops(ours_batch, ours_tower), flops.batch_flops(batch, True)
    ids = batch.input_ids
    return {
        "phase": phase, "ratio_tokens_per_s": hf_s / ours_s,
        "ratio_peak_memory": ours_mb / hf_mb if hf_mb else math.nan,
        "ours_tokens_per_s": tokens / ours_s, "hf_tokens_per_s": tokens / hf_s,
        "ours_peak_memory_mb": ours_mb, "hf_peak_memory_mb": hf_mb,
        "padding_ratio": padding_ratio([ours_batch]), "hf_padding_ratio": padding_ratio([batch]),
        "packing": packing, "mfu": ours_flops / ours_s / peak, "hf_mfu": hf_flops / hf_s / peak,
        "loss_rel_gap": abs(ours_loss - hf_loss) / max(abs(hf_loss), 1e-12),
        "ours_vision": "cached features (as the trainer's feature cache)" if phase == 1 else "pixels, frozen tower",
        "batch": list(ids.shape), "tokens": tokens, "vocab": QWEN2_VOCAB, "device": device,
        "dtype": "bf16 autocast" if device.startswith("cuda") else "fp32", "threads": torch.get_num_threads(),
        "steps": shape.steps, "peak_flops_source": peak_source, "memory_method": method,
        **syncs, "wall_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny widths, 1 timed step")
    parser.add_argument("--phases", default="1,2", help="comma-separated phases to run")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per side (default: by shape)")
    parser.add_argument("--memory", choices=["process", "inline"], default=None,
                        help="CPU peak memory: each side in a fresh process (default), or both here (--quick's)")
    parser.add_argument("--packing", action="store_true", help="ours packs the samples into one row (data.packing)")
    parser.add_argument("--child", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--phase", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args)
        return
    shape = SHAPES["quick" if args.quick else "default"]
    if args.steps:
        shape = Shape(**{**shape.__dict__, "steps": args.steps})
    from vlm.hf.llava import to_llava
    from vlm.model import VisionLanguageModel

    with tempfile.TemporaryDirectory(prefix="vs_hf_") as tmp:
        root = Path(tmp)
        build_model(root, shape)
        ours = VisionLanguageModel.load(root / "ckpt", device=args.device)
        hf = to_llava(ours).to(args.device)
        if args.packing:  # as `vlm train` does with data.packing
            from vlm.packing import use_varlen_attention

            use_varlen_attention(ours.llm)
        hf.save_pretrained(root / "hf")
        for phase in (int(p) for p in args.phases.split(",")):
            memory = args.memory or ("inline" if args.quick else "process")
            print(json.dumps(bench_phase(root, ours, hf, phase, shape, args.device, memory, args.packing)), flush=True)


if __name__ == "__main__":
    main()
