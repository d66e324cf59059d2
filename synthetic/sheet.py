"""A scene the way the VLM's image tokens present it: one position per grid cell, holding the cell's five words.

The stage-0 ViT gives one token per grid cell and the `mlp2x_gelu` projector turns each into one LLM token, so
the language model is pretrained on scenes written as nine *cell tokens*: each is the mean of the input embeddings
of its cell's words (row, column, size, colour, shape, or `empty` three times), and sits exactly where the VLM puts
an image token. Phase 1 then only has to make each image token read like its cell's words, and the
question-answering skill the LLM learned on text carries over.

Why one position per cell and not the 45 words in a row (measured, `bench/text_gate.py`): with all of a cell's
attributes in one position, finding "the star" and reading its colour is one attention step, which a 4-layer
model learns in a few hundred steps; with five words per cell it must also learn to carry an attribute across
positions, and stayed near chance on colour and shape questions after 3,000 steps.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from conversation.records import IMAGE_TOKEN, Message, parse_record
from conversation.templates import render_spans
from conversation.tokenize import spans_to_ids
from synthetic.world import COLS, ROWS, Scene

EMPTY_WORD = "empty"
WORDS_PER_CELL = 5
NUM_CELLS = 9
NO_CELL = -1  # cell-word id of a position that is an ordinary token


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
    """The sheet as stored in the corpus: the 45 words of the nine cells, separated by single spaces."""
    return " ".join(word for cell in cell_words(scene) for word in cell)


def sheet_cells(sheet: str) -> list[list[str]]:
    """A stored sheet back into its nine cells of five words."""
    words = sheet.split(" ")
    if len(words) != NUM_CELLS * WORDS_PER_CELL:
        raise ValueError(f"a sheet has {NUM_CELLS * WORDS_PER_CELL} words, got {len(words)}: {sheet[:60]!r}")
    return [words[i: i + WORDS_PER_CELL] for i in range(0, len(words), WORDS_PER_CELL)]


# Per tokenizer, the id of each sheet word asked for so far: `record_ids` asks 45 times a record, which was half of
# the time stage 0 spent tokenizing its corpus.
_WORD_IDS: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


def word_id(tokenizer: Any, word: str) -> int:
    """The one token the tokenizer writes `word` as mid-sentence (with its leading space)."""
    known = _WORD_IDS.setdefault(tokenizer, {})
    if word not in known:
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"sheet word {word!r} is {len(ids)} tokens for this tokenizer, not one")
        known[word] = ids[0]
    return known[word]


@dataclass(frozen=True)
class SheetRecord:
    """A record's token ids and labels as the VLM builds them (nine image-token ids per image) and, per position,
    the ids of the cell words whose mean embedding goes there (`NO_CELL` x5 at ordinary tokens)."""

    input_ids: list[int]
    labels: list[int]
    cell_ids: list[list[int]]


def record_messages(record: dict, sheet: str | None, generation: bool = False) -> list[Message]:
    """A LLaVA-format record's messages through the one record parser (a generation prompt ends with the question,
    which a training record may not: it gets a placeholder reply, dropped again); the image path is nominal, the
    sheet stands in for the pixels."""
    turns = record["conversations"] + ([{"from": "gpt", "value": "-"}] if generation else [])
    conv = parse_record({**record, "conversations": turns, **({"image": "sheet"} if sheet is not None else {})}, 0)
    return conv.messages[:-1] if generation else conv.messages


def record_ids(record: dict, tokenizer: Any, template: str, sheet: str | None, generation: bool = False) -> SheetRecord:
    """A LLaVA-format record through the VLM's own template and tokenization (so the ids are the VLM's, image block
    included), with the sheet's cells at the image positions."""
    record_id = str(record.get("id"))
    spans = render_spans(record_messages(record, sheet, generation), template, tokenizer, generation=generation,
                         record_id=record_id)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids, labels, starts = spans_to_ids(spans, tokenizer, image_token_id=image_token_id, num_image_tokens=NUM_CELLS,
                                       record_id=record_id)
    cell_ids = [[NO_CELL] * WORDS_PER_CELL for _ in ids]
    if sheet is not None:
        cells = [[word_id(tokenizer, w) for w in cell] for cell in sheet_cells(sheet)]
        for start in starts:
            cell_ids[start: start + NUM_CELLS] = cells
    return SheetRecord(ids, labels, cell_ids)


def sheet_embeddings(embedding: torch.nn.Embedding, input_ids: torch.Tensor, cell_ids: torch.Tensor) -> torch.Tensor:
    """Input embeddings `[B, T, H]` of ids `[B, T]`, the positions with cell words (`cell_ids [B, T, 5]`) replaced by
    the mean embedding of their five words."""
    embeds = embedding(input_ids)
    is_cell = cell_ids[..., 0] != NO_CELL
    if not bool(is_cell.any()):
        return embeds
    return embeds.masked_scatter(is_cell.unsqueeze(-1), embedding(cell_ids[is_cell]).mean(1))
