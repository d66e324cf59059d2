"""Train-step (forward + backward) tokens/s of our VisionLanguageModel vs HF LlavaForConditionalGeneration, same weights."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from conversation.tokenize import IGNORE_INDEX
from vision_encoders.config import VisionEncoderConfig
from vlm.hf_llava import to_llava
from vlm.model import VisionLanguageModel
from vlm.testing import make_tiny_llm, pad_batch, sample_ids


def build(root: Path, args: argparse.Namespace) -> VisionLanguageModel:
    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=args.vision_width, intermediate_size=4 * args.vision_width,
                                              num_hidden_layers=args.vision_layers, num_attention_heads=4,
                                              image_size=args.image_size, patch_size=args.patch_size))
    vision.save_pretrained(root / "vision")
    llm = make_tiny_llm(root / "llm", "llama", hidden_size=args.llm_width)
    config = VisionEncoderConfig(spec=f"hf:{root / 'vision'}", select_layer=-2)
    return VisionLanguageModel.build(config, "mlp2x_gelu", llm, "vicuna_v1")


def time_interleaved(a, b, steps: int) -> tuple[float, float]:
    """Median seconds per step of `a` and `b`, alternating so that load from other processes hits both alike."""
    for _ in range(2):
        a(), b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(steps):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text", type=int, default=64, help="text tokens per sample besides the image tokens")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--vision-width", type=int, default=128)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--llm-width", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ours = build(Path(tmp), args).to(args.device).train()
        hf = to_llava(ours).to(args.device).train()
    hf.model.vision_tower.requires_grad_(False)  # same trainable set as ours: projector + LLM
    seqs = [sample_ids(ours, 1, num_text=args.text, seed=i) for i in range(args.batch)]
    ids, mask = pad_batch(seqs, ours.config.pad_token_id, "right")
    ids, mask = ids.to(args.device), mask.to(args.device)
    labels = ids.masked_fill((ids == ours.config.image_token_id) | (mask == 0), IGNORE_INDEX)
    pixels = torch.randn(args.batch, 3, args.image_size, args.image_size, device=args.device)
    tokens = int(mask.sum())

    with torch.no_grad():
        gap = (ours(ids, mask, labels, pixel_values=pixels).logits
               - hf(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=pixels).logits).abs().max()

    def step_ours() -> None:
        ours.zero_grad(set_to_none=True)
        ours(ids, mask, labels, pixel_values=pixels).loss.backward()

    def step_hf() -> None:
        hf.zero_grad(set_to_none=True)
        hf(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=pixels).loss.backward()

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    ours_s, hf_s = time_interleaved(lambda: (step_ours(), sync()), lambda: (step_hf(), sync()), args.steps)
    print(f"config: batch {args.batch} x {ids.shape[1]} tokens ({ours.config.num_image_tokens} image), "
          f"vision {args.vision_width}x{args.vision_layers}L @{args.image_size}px, llm width {args.llm_width}, "
          f"device {args.device}, threads {torch.get_num_threads()}; max |logit diff| {gap:.2e}")
    print(f"ours: {tokens / ours_s:,.0f} tokens/s ({ours_s * 1e3:.1f} ms/step)")
    print(f"hf llava: {tokens / hf_s:,.0f} tokens/s ({hf_s * 1e3:.1f} ms/step)")
    print(f"ratio ours/hf: {hf_s / ours_s:.3f}")


if __name__ == "__main__":
    main()
