"""`vlm export-hf`: write a checkpoint as a HF `LlavaForConditionalGeneration` + `LlavaProcessor` directory."""
from __future__ import annotations

import argparse
import sys


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="our checkpoint directory")
    parser.add_argument("--out", required=True, help="HF directory to write")
    parser.add_argument("--strict-fingerprint", "--strict", action="store_true",
                        help="stop (exit 2) when the model's preprocessing (pixels, token ids) drifted from its checkpoint's")


def main(args: argparse.Namespace) -> int:
    from vlm import fingerprint
    from vlm.hf.convert import ExportError, export_hf
    from vlm.model import VisionLanguageModel

    model = VisionLanguageModel.load(args.checkpoint)
    try:
        fingerprint.check_directory(model, args.checkpoint, strict=args.strict_fingerprint)
        export_hf(model, args.out)
    except (ExportError, fingerprint.FingerprintDrift) as err:
        print(f"vlm export-hf: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {args.out}")
    return 0
