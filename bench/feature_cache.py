"""Phase-1 samples/s with the vision-feature cache vs without, and the share of an uncached step spent on images.

Runs the real align recipe pieces (dataset, collator, loop step, feature hook) on a model of the synthetic
config's shape (ViT 128 wide x 3 blocks, 64 px images, patch 8; Llama 128 wide x 3 layers), random weights.
Every step is timed (process CPU time) including data loading (num_workers=0, one core), on a second epoch so the
cache is warm. Run: `OMP_NUM_THREADS=1 .venv/bin/python bench/feature_cache.py`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw


def build_synthetic_model(root: Path, template: str = "plain") -> Path:
    """A VLM of the synthetic world's shape, saved as a checkpoint under `root/base`."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from vision_encoders.config import VisionEncoderConfig
    from vlm.model import VisionLanguageModel
    from vlm.testing import make_tiny_tokenizer

    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                                     num_attention_heads=4, image_size=64, patch_size=8)).save_pretrained(root / "vit")
    tokenizer = make_tiny_tokenizer(root / "llm")
    LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=4, max_position_embeddings=1024, vocab_size=len(tokenizer),
                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 tie_word_embeddings=False)).save_pretrained(root / "llm")
    model = VisionLanguageModel.build(VisionEncoderConfig(spec=f"hf:{root / 'vit'}", select_layer=-2), "mlp2x_gelu",
                                      str(root / "llm"), template)
    model.save(root / "base")
    return root / "base"


COLOURS = [(220, 30, 30), (30, 200, 60), (40, 60, 220), (230, 220, 40), (160, 60, 200), (250, 140, 20)]
WORDS = "red green blue yellow purple orange circle square triangle star small large left right top bottom".split()


def write_align_data(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """`n` 64x64 PNG scenes of a few shapes and LLaVA alignment records describing them."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        img = Image.new("RGB", (64, 64), tuple(int(c) for c in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 5))):
            x, y, r = (int(v) for v in rng.integers([8, 8, 4], [56, 56, 12]))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=COLOURS[int(rng.integers(len(COLOURS)))])
        img.save(images / f"{i:05d}.png")
        caption = " ".join(rng.choice(WORDS, size=int(rng.integers(6, 14))))
        records.append({"id": str(i), "image": f"{i:05d}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the picture."}, {"from": "gpt", "value": caption}]})
    data = root / "align.json"
    data.write_text(json.dumps(records))
    return data, images


def make_trainer(root: Path, base: Path, data: Path, images: Path, *, cache: bool, skip_decode: bool,
                 global_batch: int, micro_batch: int) -> Any:
    from conversation.images import resolve_image_path
    from train.config import config_from_dict
    from train.feature_source import feature_source
    from train.loop import Trainer
    from train.recipes import build_data, build_model, prepare_model
    from train.runtime import seed_everything
    from train.strategies.single import SingleProcessStrategy

    name = f"{'cache' if cache else 'nocache'}{'_nodecode' if skip_decode else ''}"
    cfg = config_from_dict({
        "recipe": "align", "model": {"init_from": str(base), "template": "plain"},
        "data": {"data_path": [str(data)], "image_folder": str(images), "max_length": 256},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
        "schedule": {"global_batch_size": global_batch, "micro_batch_size": micro_batch, "max_steps": 10**6},
        "engine": {"precision": "fp32"}, "checkpoint": {"output_dir": str(root / name), "resume": "none"},
        "feature_cache": {"enabled": cache, "dir": str(root / "features")},
        "log": {"tensorboard": False, "progress_bar": False},
    })
    strategy = SingleProcessStrategy()
    seed_everything(cfg.schedule.seed)
    model = build_model(cfg)
    prepare_model(model, cfg)
    train_data = build_data(cfg, model, strategy)
    if skip_decode:
        # What the requested dataset flag does: resolve (and confine) the paths, decode nothing.
        def keys_only(refs: list[str], roots: list[Path]) -> tuple[None, list[str]]:
            return None, [str(resolve_image_path(ref, roots)) for ref in refs]

        train_data.dataset._images = keys_only
    return Trainer(cfg, model, train_data, strategy, features=feature_source(cfg, model, strategy))


def time_epoch(trainer: Any, epoch: int) -> list[float]:
    """CPU seconds of this process for every optimizer step of `epoch`, data loading included.

    CPU time, not wall time: everything runs in this one single-threaded process, and on a machine shared
    with other jobs wall time mostly measures their load."""
    it = trainer._loader(epoch, 0)
    times = []
    for _ in range(trainer.steps_per_epoch):
        start = time.process_time()
        window = [next(it) for _ in range(trainer.accum)]
        trainer._step(window)
        times.append(time.process_time() - start)
    return times


def image_share(trainer: Any, epoch: int) -> tuple[float, float]:
    """CPU seconds per step spent (decoding + preprocessing, running the frozen encoder) on the step's images."""
    from conversation.images import load_image

    model = trainer.strategy.unwrap(trainer.model)
    decode = encode = 0.0
    for batch_indices in trainer.data.epoch_batches(epoch)[: trainer.steps_per_epoch * trainer.accum]:
        items = [trainer.data.dataset[i] for i in batch_indices]
        paths = [k for it in items for k in it.image_keys]
        start = time.process_time()
        pixels = torch.stack([model.image_processor(load_image(p)) for p in paths])
        middle = time.process_time()
        with torch.no_grad():
            model.vision_encoder(pixels)
        decode, encode = decode + middle - start, encode + time.process_time() - middle
    return decode / trainer.steps_per_epoch, encode / trainer.steps_per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = build_synthetic_model(root)
        data, images = write_align_data(root, args.images)
        kw = dict(global_batch=args.global_batch, micro_batch=args.micro_batch)
        runs = {
            "no cache": make_trainer(root, base, data, images, cache=False, skip_decode=False, **kw),
            "cache (images still decoded)": make_trainer(root, base, data, images, cache=True, skip_decode=False, **kw),
            "cache + skip decode": make_trainer(root, base, data, images, cache=True, skip_decode=True, **kw),
        }
        time_epoch(runs["cache (images still decoded)"], 0)  # fills the cache (and warms up)
        runs["cache (images still decoded)"].features.flush()
        step_times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):  # interleaved rounds: load from other processes hits every variant alike
            for name, trainer in runs.items():
                step_times[name].extend(time_epoch(trainer, 1))
        shares = [image_share(runs["no cache"], 1) for _ in range(args.rounds)]
        decode_t = statistics.median(d for d, _ in shares)
        encode_t = statistics.median(e for _, e in shares)
        share = decode_t + encode_t
        samples = args.global_batch
        base_t = statistics.median(step_times["no cache"])
        print(f"phase-1 step, synthetic shape, global batch {samples}, micro {args.micro_batch}, "
              f"{len(step_times['no cache'])} timed steps per variant (median CPU time of this process):")
        for name, times in step_times.items():
            t = statistics.median(times)
            print(f"  {name:30s} {t * 1000:8.1f} ms/step  {samples / t:8.1f} samples/s  speedup x{base_t / t:.2f}")
        fraction = share / base_t
        print(f"  decode+preprocess+encode share of an uncached step: {fraction:.3f} "
              f"({decode_t * 1000:.1f} ms decode+preprocess + {encode_t * 1000:.1f} ms encode of {base_t * 1000:.1f} ms); "
              f"ideal speedup 1/(1-f) = x{1 / (1 - fraction):.2f}")


if __name__ == "__main__":
    main()
