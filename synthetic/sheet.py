"""A scene written the way the VLM's image tokens present it: five words per grid cell, in reading order.

The stage-0 ViT gives one token per grid cell and the `mlp2x_gelu_expand5` projector turns each into five
LLM tokens, so the language model is pretrained on scenes written as exactly those 45 words
(`top left large red circle top center empty empty empty ...`). Phase 1 then only has to make each image
token read like its cell's words, and the question-answering skill the LLM learned on text carries over.
"""
from __future__ import annotations

from typing import Any

from conversation.records import IMAGE_TOKEN, Message, parse_record
from conversation.templates import Span, render_spans
from conversation.tokenize import spans_to_ids
from synthetic.world import COLS, ROWS, Scene

EMPTY_WORD = "empty"
WORDS_PER_CELL = 5


def cell_words(scene: Scene) -> list[list[str]]:
    """Nine lists of five words: row, column, then size, colour, shape (or `empty` three times)."""
    by_cell = {(o.row, o.col): o for o in scene.objects}
    cells = []
    for row in range(3):
        for col in range(3):
            obj = by_cell.get((row, col))
            attributes = [obj.size, obj.colour, obj.shape] if obj else [EMPTY_WORD] * 3
            cells.append([ROWS[row], COLS[col], *attributes])
    return cells


def scene_sheet(scene: Scene) -> str:
    """The 45-word sheet of `scene`, words separated by single spaces."""
    return " ".join(word for cell in cell_words(scene) for word in cell)


def spans_with_sheet(spans: list[Span], sheet: str) -> list[Span]:
    """Template spans with each `<image>` replaced by the sheet as a span of its own.

    The VLM tokenizes the text on either side of an image separately (`spans_to_ids`); giving the sheet its own
    span keeps exactly that split, so the tokens around the sheet are the tokens around the image block.
    """
    out: list[Span] = []
    for span in spans:
        if span.token is not None or IMAGE_TOKEN not in span.text:
            out.append(span)
            continue
        for k, piece in enumerate(span.text.split(IMAGE_TOKEN)):
            if k:
                out.append(Span(sheet, span.supervised))
            if piece:
                out.append(Span(piece, span.supervised))
    return out


def record_messages(record: dict, sheet: str | None, generation: bool = False) -> list[Message]:
    """A LLaVA-format record's messages through the one record parser (a generation prompt ends with the question,
    which a training record may not: it gets a placeholder reply, dropped again); the image path is nominal, the
    sheet stands in for the pixels."""
    turns = record["conversations"] + ([{"from": "gpt", "value": "-"}] if generation else [])
    conv = parse_record({**record, "conversations": turns, **({"image": "sheet"} if sheet is not None else {})}, 0)
    return conv.messages[:-1] if generation else conv.messages


def record_ids(record: dict, tokenizer: Any, template: str, sheet: str | None,
               generation: bool = False) -> tuple[list[int], list[int]]:
    """(ids, labels) of a LLaVA-format record through the VLM's own template and tokenization, sheet for image."""
    record_id = str(record.get("id"))
    spans = render_spans(record_messages(record, sheet, generation), template, tokenizer, generation=generation,
                         record_id=record_id)
    if sheet is not None:
        spans = spans_with_sheet(spans, sheet)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids, labels, _ = spans_to_ids(spans, tokenizer, image_token_id=image_token_id, num_image_tokens=1, record_id=record_id)
    return ids, labels
