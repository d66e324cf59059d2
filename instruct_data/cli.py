"""`vlm data validate|convert`: check record files before training; convert public datasets to LLaVA format."""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from instruct_data.converters.common import ConversionError, write_records
from instruct_data.converters.registry import CONVERTERS, get_converter
from instruct_data.parallel import default_workers
from conversation.errors import RecordFileError
from conversation.images import DEFAULT_MAX_PIXELS


def register(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """Add the nested `validate` and `convert <converter>` subcommands; returns them for the application to extend."""
    sub = parser.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    val = sub.add_parser("validate", help="check every record (schema, roles, images, token lengths)")
    val.add_argument("file", type=Path, help="records: .json (LLaVA list), .jsonl or .parquet")
    val.add_argument("--image-folder", type=Path, action="append", required=True, dest="image_folders",
                     help="image root; repeat for several (tried in order)")
    val.add_argument("--report", type=Path, help="write the problems here as JSONL")
    val.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                     help=f"decompression-bomb limit on declared width*height (default {DEFAULT_MAX_PIXELS})")
    val.add_argument("--no-decode", action="store_true", help="check that images exist, but do not decode them")
    val.add_argument("--aspect-ratio", choices=("pad", "crop", "resize"), default="pad",
                     help="the training image processor's aspect_ratio (default pad): images whose pad-to-square "
                          "canvas or resize would be too large are flagged")
    val.add_argument("--image-size", type=int, default=336, help="the encoder's image side (default 336)")
    val.add_argument("--workers", type=int, default=None,
                     help="processes checking records (decoding images, tokenizing; default: every core); the "
                          "output is the same as one process's")
    tok = val.add_argument_group("token lengths (all of --tokenizer, --template, --num-image-tokens)")
    tok.add_argument("--tokenizer", help="tokenizer directory (AutoTokenizer; trust_remote_code stays off)")
    tok.add_argument("--template", help="conversation template name, e.g. vicuna_v1")
    tok.add_argument("--num-image-tokens", type=int, help="K, the image tokens per image (576 for CLIP-L/336)")
    tok.add_argument("--image-token", default="<image>", help="the image placeholder token (added if missing)")
    tok.add_argument("--max-length", type=int, help="flag records longer than this")
    tok.add_argument("--model", type=Path, help="a checkpoint directory instead of the three above: its tokenizer, "
                                                  "template and image tokens (anyres: counted per image size)")

    conv = sub.add_parser("convert", help="convert a public dataset's official files to LLaVA-format JSON")
    conv_sub = conv.add_subparsers(dest="converter", metavar="CONVERTER", required=True)
    for name, converter in CONVERTERS.items():
        p = conv_sub.add_parser(name, help=converter.help, description=converter.help)
        converter.add_arguments(p)
        p.add_argument("--out", required=True, type=Path, help="output .json (LLaVA list) or .jsonl")
    return sub


def main(args: argparse.Namespace) -> int:
    if args.data_command == "validate":
        return _validate(args)
    return _convert(args)


def _load_tokenizer(args: argparse.Namespace) -> tuple[Any, int]:
    """The tokenizer with the image placeholder as a special token (as the model adds it), and its id."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, trust_remote_code=False)
    if args.image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [args.image_token]})
    return tokenizer, tokenizer.convert_tokens_to_ids(args.image_token)


def _from_model(directory: Path) -> tuple[Any, Any, int, Any]:
    """(tokenizer, template, image token id, image-token counter) of a checkpoint, without loading weights."""
    from transformers import AutoTokenizer

    from conversation.templates import get_template
    from vlm.config import VLMConfig
    from vlm.inputs import checkpoint_token_counter

    config = VLMConfig.load(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer", trust_remote_code=False)
    counter = checkpoint_token_counter(directory, config)
    return tokenizer, get_template(config.template), config.image_token_id, counter


def _validate(args: argparse.Namespace) -> int:
    from instruct_data.validate import ValidationConfig, validate_file

    if not args.file.is_file():
        print(f"vlm data validate: no such file {args.file}", file=sys.stderr)
        return 2
    for folder in args.image_folders:
        if not folder.is_dir():
            print(f"vlm data validate: --image-folder {folder} is not a directory", file=sys.stderr)
            return 2
    config = ValidationConfig(image_roots=list(args.image_folders), max_pixels=args.max_pixels,
                              decode_images=not args.no_decode, max_length=args.max_length,
                              aspect_ratio=args.aspect_ratio, image_size=args.image_size)
    token_args = (args.tokenizer, args.template, args.num_image_tokens)
    if getattr(args, "model", None) is not None:
        if any(a is not None for a in token_args):
            print("vlm data validate: --model replaces --tokenizer, --template and --num-image-tokens", file=sys.stderr)
            return 2
        try:
            config.tokenizer, config.template, config.image_token_id, config.num_image_tokens = _from_model(args.model)
        except (OSError, ValueError) as exc:
            print(f"vlm data validate: --model {args.model}: {exc}", file=sys.stderr)
            return 2
    elif any(a is not None for a in token_args):
        if any(a is None for a in token_args):
            print("vlm data validate: token checks need --tokenizer, --template and --num-image-tokens together",
                  file=sys.stderr)
            return 2
        from conversation.templates import get_template

        try:
            config.template = get_template(args.template)
        except ValueError as exc:
            print(f"vlm data validate: {exc}", file=sys.stderr)
            return 2
        config.tokenizer, config.image_token_id = _load_tokenizer(args)
        config.num_image_tokens = args.num_image_tokens
    elif args.max_length is not None:
        print("vlm data validate: --max-length needs --tokenizer, --template and --num-image-tokens", file=sys.stderr)
        return 2

    with contextlib.ExitStack() as stack:
        report = None
        if args.report is not None:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            report = stack.enter_context(args.report.open("w", encoding="utf-8"))
        try:
            workers = args.workers if args.workers is not None else default_workers()
            summary = validate_file(args.file, config, report, workers=workers, progress=True)
        except RecordFileError as exc:  # not a record file at all (e.g. an unsupported suffix)
            print(f"vlm data validate: {exc}", file=sys.stderr)
            return 2
    print(summary.table())
    if args.report is not None:
        print(f"problems written to {args.report}")
    return 1 if summary.failed else 0


def _convert(args: argparse.Namespace) -> int:
    converter = get_converter(args.converter)
    try:
        result = converter.run(args)
    except (ConversionError, ValueError) as exc:
        print(f"vlm data convert {converter.name}: {exc}", file=sys.stderr)
        return 1
    if not result.records:
        print(f"vlm data convert {converter.name}: no records produced ({result.summary()})", file=sys.stderr)
        return 1
    count = write_records(result.records, args.out)
    print(f"{converter.name}: wrote {count} records to {args.out} ({result.summary()})")
    return 0
