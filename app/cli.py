"""The `vlm` console entry point: one subcommand per job, each living in the package that owns it."""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand name -> module (the application sits on top of every layer, so it may name any of them). Each module defines `register(parser)` (adds its arguments, or its own
# nested subcommands) and `main(args) -> int`. Modules are imported only when their command runs, so
# `vlm chat` never pays for importing deepspeed and a broken optional import names itself.
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("app.commands.build", "assemble a model from an encoder spec, a projector and an LLM, and save it"),
    "export-hf": ("app.commands.export_hf", "export a checkpoint to a HF LlavaForConditionalGeneration directory"),
    "import-hf": ("app.commands.import_hf", "import a HF Llava directory into this trainer's checkpoint format"),
    "data": ("app.commands.data", "validate, convert and audit datasets (LLaVA format, official public formats)"),
    "synth": ("synthetic.cli", "generate the synthetic world (images, captions, questions, eval files)"),
    "onpolicy": ("app.commands.onpolicy", "corrective pairs from a checkpoint's own wrong answers on the synthetic world"),
    "pretrain-backbones": ("synthetic.stage0.cli", "stage 0: pretrain the tiny LLM and ViT of the synthetic world"),
    "train": ("train.cli", "run a training recipe (align, instruct, prefer) from a YAML config"),
    "merge-lora": ("train.merge_lora", "merge LoRA adapters into a full checkpoint"),
    "eval": ("eval.cli", "run or score benchmarks"),
    "chat": ("app.chat", "ask questions about images (interactive or one-shot)"),
    "demo": ("app.commands.demo", "the main job: synthetic world, backbones, both phases, benchmarks, chat, report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm", description="LLaVA-style vision-language model trainer")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vlm: unknown command {name!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"vlm {name}", description=help_text)
    module.register(parser)
    try:  # lets `vlm train CONFIG --resume auto key=value` mix options and overrides freely
        args = parser.parse_intermixed_args(rest)
    except TypeError:  # argparse cannot intermix with nested subcommands (vlm data ..., vlm eval ...)
        args = parser.parse_args(rest)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
