"""`vlm chat`: ask a trained model about images, interactively (streamed, multi-turn) or once (scriptable)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from vlm.chat_session import ChatError, ChatSession
from vlm.config import DTYPE_CHOICES
from vlm.dtypes import inference_dtype
from vlm.loading import NotAModelError, load_model_dir

HELP_TEXT = "commands: /image PATH (attach an image to the next question), /reset (forget the conversation), /exit"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory (ours, or a HF Llava directory)")
    parser.add_argument("--image", action="append", default=[], help="image to ask about (repeatable)")
    parser.add_argument("--question", help="answer this one question and exit")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--json", action="store_true", help="with --question: print one JSON object")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="auto (bfloat16 on a GPU, float32 on a CPU), bfloat16, float16 or float32")
    parser.add_argument("--strict-fingerprint", "--strict", action="store_true",
                        help="stop (exit 2) when the model's preprocessing (pixels, token ids) drifted from its checkpoint's")


def load_model(path: str, device: str | None, dtype: str | None = "auto", strict_fingerprint: bool = False):
    """Load our checkpoint or a HF Llava directory, or raise ChatError naming what is wrong."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would bury the one-line answer and errors
    hf_logging.set_verbosity_error()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return load_model_dir(path, device=device, torch_dtype=inference_dtype(dtype, device),
                              strict_fingerprint=strict_fingerprint)
    except NotAModelError as err:
        raise ChatError(str(err)) from None
    except (FileNotFoundError, ValueError, OSError) as err:
        raise ChatError(f"cannot load model from {path}: {err}") from None


def _streamer(tokenizer):
    from transformers import TextStreamer

    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def run_once(session: ChatSession, question: str, as_json: bool, out: TextIO) -> int:
    answer, _ = session.ask(question)
    out.write((json.dumps({"question": question, "answer": answer}) if as_json else answer) + "\n")
    return 0


def run_interactive(session: ChatSession, inp: TextIO, out: TextIO) -> int:
    out.write(HELP_TEXT + "\n")
    while True:
        out.write(">>> ")
        out.flush()
        line = inp.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            session.reset()
            out.write("[conversation reset]\n")
            continue
        if line.startswith("/image"):
            path = line[len("/image"):].strip()
            try:
                session.add_image(path)
                out.write(f"[image attached: {path}]\n")
            except ChatError as err:
                out.write(f"error: {err}\n")
            continue
        if line.startswith("/"):
            out.write(f"unknown command {line.split()[0]}; {HELP_TEXT}\n")
            continue
        try:
            _, dropped = session.ask(line, streamer=_streamer(session.model.tokenizer))
        except ChatError as err:
            out.write(f"error: {err}\n")
            continue
        out.flush()
        if dropped:
            out.write(f"[{dropped} oldest turn(s) dropped to fit the context length]\n")
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        model = load_model(args.model, args.device, args.dtype, args.strict_fingerprint)
        session = ChatSession(model, args.max_new_tokens, args.temperature, args.top_p)
        for image in args.image:
            session.add_image(image)
        if args.question is not None:
            return run_once(session, args.question, args.json, sys.stdout)
    except ChatError as err:
        print(f"vlm chat: error: {err}", file=sys.stderr)
        return 2
    return run_interactive(session, sys.stdin, sys.stdout)
