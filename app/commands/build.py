"""`vlm build`: assemble a model from an encoder spec, a projector name and an LLM path, and save it."""
from __future__ import annotations

import argparse
import sys

from projectors.registry import known_projectors
from vision_encoders.config import VisionEncoderConfig


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vision", required=True, help="encoder spec: hf:<id-or-path>, timm:<name>[@<ckpt>], open_clip:<arch>[@<ckpt>]")
    parser.add_argument("--projector", default="mlp2x_gelu", help=f"one of: {', '.join(known_projectors())}")
    parser.add_argument("--llm", required=True, help="AutoModelForCausalLM hub id or path")
    parser.add_argument("--template", required=True, help="conversation template name (e.g. vicuna_v1)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--select-layer", type=int, default=-2)
    parser.add_argument("--select-feature", choices=["patch", "cls_patch"], default="patch")
    parser.add_argument("--image-aspect-ratio", choices=["pad", "crop", "resize", "anyres"], default="pad")
    parser.add_argument("--image-grid-pinpoints", default=None,
                        help="anyres: '(1x1),...,(3x3)' (tiles of the encoder's size) or JSON '[[336, 672], ...]' ([h, w])")
    parser.add_argument("--anyres-max-tiles", type=int, default=None, help="anyres: cap the grid's features at N tiles")
    parser.add_argument("--attn-implementation", default="sdpa")
    parser.add_argument("--torch-dtype", default=None, help="float32 | bfloat16 | float16 (half needs a GPU)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the LLM's own Python code (off by default)")
    parser.add_argument("--projector-only", action="store_true", help="save projector + references to encoder and LLM")


def main(args: argparse.Namespace) -> int:
    from vlm.model import VisionLanguageModel

    import json

    pinpoints = args.image_grid_pinpoints
    if pinpoints is not None and pinpoints.lstrip().startswith("[["):
        pinpoints = json.loads(pinpoints)
    try:
        vision = VisionEncoderConfig(spec=args.vision, select_layer=args.select_layer, select_feature=args.select_feature,
                                     image_aspect_ratio=args.image_aspect_ratio, image_grid_pinpoints=pinpoints,
                                     anyres_max_tiles=args.anyres_max_tiles)
    except ValueError as exc:
        print(f"vlm build: {exc}", file=sys.stderr)
        return 2
    model = VisionLanguageModel.build(vision, args.projector, args.llm, args.template,
                                      attn_implementation=args.attn_implementation,
                                      trust_remote_code=args.trust_remote_code, torch_dtype=args.torch_dtype)
    model.save(args.out, projector_only=args.projector_only)
    c = model.config
    print(f"saved {args.out}: T={c.vision_num_tokens} -> K={c.num_image_tokens} image tokens, "
          f"image_token_id={c.image_token_id}, pad_token_id={c.pad_token_id}")
    return 0
