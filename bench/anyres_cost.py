"""The cost of anyres vs pad-to-square: image tokens per image and train-step time, same weights, same wide images."""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel

from vision_encoders.config import VisionEncoderConfig
from vlm.anyres_features import anyres_processor, attach_image_newline, check_anyres
from vlm.batch import Batch
from vlm.inputs import image_token_counter
from vlm.model import VisionLanguageModel
from vlm.testing import make_tiny_llm, pad_batch


def build(root: Path, args: argparse.Namespace) -> tuple[VisionLanguageModel, VisionLanguageModel]:
    """(pad, anyres) models sharing every weight; anyres adds only its image_newline."""
    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=args.vision_width, intermediate_size=4 * args.vision_width,
                                              num_hidden_layers=args.vision_layers, num_attention_heads=4,
                                              image_size=args.tile, patch_size=args.patch))
    vision.save_pretrained(root / "vision")
    llm = make_tiny_llm(root / "llm", "llama", hidden_size=args.llm_width)
    pad = VisionLanguageModel.build(VisionEncoderConfig(spec=f"hf:{root / 'vision'}"), "mlp2x_gelu", llm, "vicuna_v1")
    vision_any = VisionEncoderConfig(spec=f"hf:{root / 'vision'}", image_aspect_ratio="anyres",
                                     image_grid_pinpoints=args.pinpoints)
    anyres = VisionLanguageModel(dataclasses.replace(pad.config, vision=vision_any), pad.vision_encoder,
                                 pad.projector, pad.llm, pad.tokenizer, anyres_processor(vision_any, pad.vision_encoder))
    check_anyres(vision_any, pad.vision_encoder, pad.projector, "mlp2x_gelu")
    attach_image_newline(pad.projector, pad.llm.get_input_embeddings().weight.shape[1])
    return pad, anyres


def batch_for(model: VisionLanguageModel, images: list[Image.Image], text: int) -> tuple[Batch, int]:
    image_id = model.config.image_token_id
    count = image_token_counter(model)
    pixels, sizes, seqs = [], [], []
    for img in images:
        tiles, size = model.image_processor.process(img)
        pixels.append(tiles)
        sizes.append(size)
        k = count(size)
        seqs.append(torch.cat([torch.tensor([1]), torch.full((k,), image_id), torch.randint(3, 100, (text,))]))
    ids, mask = pad_batch(seqs, model.config.pad_token_id, "right")
    labels = ids.masked_fill((ids == image_id) | (mask == 0), -100)
    anyres = model.config.vision.anyres
    batch = Batch(ids, mask, labels=labels, image_counts=torch.ones(len(images), dtype=torch.long),
                  pixel_values=torch.cat(pixels), image_sizes=sizes if anyres else None)
    return batch, int((ids[0] == image_id).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=144, help="image width (height = width / 2)")
    parser.add_argument("--tile", type=int, default=72, help="encoder input side")
    parser.add_argument("--patch", type=int, default=24)
    parser.add_argument("--pinpoints", default="(1x1),...,(2x2)")
    parser.add_argument("--vision-width", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--llm-width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text", type=int, default=24, help="text tokens per sample")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (args.width // 2, args.width, 3), dtype=np.uint8))
              for _ in range(args.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        pad, anyres = build(Path(tmp), args)
        results = {}
        for name, model in (("pad", pad), ("anyres", anyres)):
            model.train()
            batch, tokens = batch_for(model, images, args.text)

            def step() -> None:
                model.zero_grad(set_to_none=True)
                model.loss(batch).loss.backward()

            for _ in range(2):
                step()
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            results[name] = (tokens, batch.pixel_values.shape[0] // args.batch, statistics.median(times))
    for name, (tokens, tiles, seconds) in results.items():
        print(f"{name:>7}: {tokens:>4} image tokens per {args.width}x{args.width // 2} image, {tiles} encoder tile(s), "
              f"{1000 * seconds:.1f} ms per train step (batch {args.batch}, median of {args.steps})")


if __name__ == "__main__":
    main()
