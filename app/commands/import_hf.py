"""`vlm import-hf`: convert a HF Llava directory (e.g. llava-hf/llava-1.5-7b-hf) into our checkpoint format."""
from __future__ import annotations

import argparse
import sys


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="HF Llava directory (config.json with model_type llava)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--template", default="vicuna_v1", help="conversation template name (default vicuna_v1)")
    parser.add_argument("--image-aspect-ratio", choices=["pad", "crop", "resize"], default="pad")
    parser.add_argument("--torch-dtype", default=None)


def main(args: argparse.Namespace) -> int:
    from vlm.hf.convert import ExportError, import_hf

    try:
        import_hf(args.source, args.out, template=args.template, image_aspect_ratio=args.image_aspect_ratio,
                  torch_dtype=args.torch_dtype)
    except ExportError as err:
        print(f"vlm import-hf: {err}", file=sys.stderr)
        return 2
    print(f"imported {args.source} -> {args.out}")
    return 0
