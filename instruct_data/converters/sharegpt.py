"""ShareGPT conversations JSON -> text-only LLaVA records (human/gpt), dropping unusable ones with counts."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from instruct_data.converters.common import IMAGE_TOKEN, ConversionError, ConversionResult, load_json, turn

# Exact role names seen in ShareGPT dumps -> LLaVA roles.
ROLE_MAP: dict[str, str] = {
    "human": "human",
    "user": "human",
    "gpt": "gpt",
    "assistant": "gpt",
    "chatgpt": "gpt",
    "bing": "gpt",
    "bard": "gpt",
}


def _convert_one(raw: Any, index: int) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) or (None, the reason it was dropped)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("conversations"), list):
        return None, "no conversations list"
    record_id = str(raw.get("id", index))
    turns: list[dict[str, str]] = []
    for message in raw["conversations"]:
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            return None, "malformed turn"
        role = ROLE_MAP.get(str(message.get("from", "")).lower())
        if role is None:
            return None, "unknown role"
        turns.append(turn(role, message["value"]))
    if turns and turns[-1]["from"] == "human":
        turns = turns[:-1]  # an unanswered final question teaches nothing
    if not turns:
        return None, "empty conversation"
    if any(not t["value"].strip() for t in turns):
        return None, "empty turn"
    expected = ["human", "gpt"] * (len(turns) // 2)
    if [t["from"] for t in turns] != expected:
        return None, "mis-ordered roles"
    if any(IMAGE_TOKEN in t["value"] for t in turns):
        return None, f"text contains {IMAGE_TOKEN}"  # it would be read as an image placeholder
    return {"id": record_id, "conversations": turns}, None


def convert_sharegpt(input_file: str | Path) -> ConversionResult:
    """Keep conversations that alternate human/gpt from the first turn, after mapping role names."""
    data = load_json(input_file, "ShareGPT JSON: a list of {id, conversations: [{from, value}]}")
    if not isinstance(data, list):
        raise ConversionError(input_file, f"expected a list of conversations, got {type(data).__name__}")
    result = ConversionResult(records=[])
    for index, raw in enumerate(data):
        record, reason = _convert_one(raw, index)
        if record is None:
            result.drop(reason or "unknown")
        else:
            result.records.append(record)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=Path, help="ShareGPT JSON list")


def run(args: argparse.Namespace) -> ConversionResult:
    return convert_sharegpt(args.input)
