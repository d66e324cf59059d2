"""`vlm export-hf`: write a checkpoint as a HF `LlavaForConditionalGeneration` + `LlavaProcessor` directory."""
from __future__ import annotations

import argparse
import sys


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="our checkpoint directory")
    parser.add_argument("--out", required=True, help="HF directory to write")


def main(args: argparse.Namespace) -> int:
    from vlm.hf.convert import ExportError, export_hf
    from vlm.model import VisionLanguageModel

    model = VisionLanguageModel.load(args.checkpoint)
    try:
        export_hf(model, args.out)
    except ExportError as err:
        print(f"vlm export-hf: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {args.out}")
    return 0
