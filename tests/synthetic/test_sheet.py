"""Scene sheets: nine cells of five words, placed at the VLM's image-token positions of records tokenized exactly
as the VLM tokenizes them, each read as the mean embedding of its words."""
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from conversation.records import parse_record
from conversation.tokenize import tokenize_conversation
from synthetic.corpus import CORPUS_FILE, read_corpus
from synthetic.sheet import (NO_CELL, NUM_CELLS, WORDS_PER_CELL, cell_words, record_ids, scene_sheet, sheet_cells,
                             sheet_embeddings, word_id)
from synthetic.world import Scene, SceneObject


def _scene() -> Scene:
    return Scene(id=7, split="test", background="plain", background_tint=(220, 220, 220), objects=(
        SceneObject("star", "red", "large", 0, 2), SceneObject("circle", "blue", "small", 2, 0)))


def test_sheet_words_are_cells_in_reading_order() -> None:
    cells = cell_words(_scene())
    assert len(cells) == NUM_CELLS and all(len(c) == WORDS_PER_CELL for c in cells)
    assert cells[2] == ["top", "right", "large", "red", "star"]
    assert cells[6] == ["bottom", "left", "small", "blue", "circle"]
    assert cells[4] == ["middle", "center", "empty", "empty", "empty"]
    assert sheet_cells(scene_sheet(_scene())) == cells
    with pytest.raises(ValueError, match="45 words"):
        sheet_cells("top left large red")


def test_every_sheet_word_is_one_token_of_the_world_tokenizer(synth_world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(synth_world / "tokenizer"))
    ids = [word_id(tok, w) for cell in cell_words(_scene()) for w in cell]
    assert len(set(ids)) == len(set(scene_sheet(_scene()).split()))
    with pytest.raises(ValueError, match="not one"):
        word_id(tok, "starcircle")


def test_record_ids_are_the_vlm_tokens_with_the_cells_at_the_image_positions(synth_world: Path) -> None:
    """The stage-0 LLM must see the prompt the VLM builds: same template, same ids, nine image positions."""
    tok = AutoTokenizer.from_pretrained(str(synth_world / "tokenizer"))
    image_id = tok.convert_tokens_to_ids("<image>")
    entries = [e for e in read_corpus(synth_world / CORPUS_FILE) if "sheet" in e][:8]
    assert {e["template"] for e in entries} == {"plain", "vicuna_v1"}
    for entry in entries:
        record = record_ids(entry, tok, entry["template"], entry["sheet"])
        conv = parse_record({**entry, "image": "x.png"}, 0)
        vlm = tokenize_conversation(conv, entry["template"], tok, image_token_id=image_id, num_image_tokens=NUM_CELLS)
        assert record.input_ids == vlm.input_ids and record.labels == vlm.labels, entry["id"]
        start = vlm.input_ids.index(image_id)
        expected = [[word_id(tok, w) for w in cell] for cell in sheet_cells(entry["sheet"])]
        assert record.cell_ids[start: start + NUM_CELLS] == expected, entry["id"]
        others = record.cell_ids[:start] + record.cell_ids[start + NUM_CELLS:]
        assert others == [[NO_CELL] * WORDS_PER_CELL] * len(others)


def test_a_cell_position_holds_the_mean_embedding_of_its_words() -> None:
    embedding = torch.nn.Embedding(20, 4)
    ids = torch.tensor([[3, 4, 4, 5]])
    cells = torch.tensor([[[NO_CELL] * 5, [1, 2, 3, 4, 5], [6, 6, 6, 7, 8], [NO_CELL] * 5]])
    out = sheet_embeddings(embedding, ids, cells)
    w = embedding.weight
    assert torch.allclose(out[0, 0], w[3]) and torch.allclose(out[0, 3], w[5])
    assert torch.allclose(out[0, 1], w[1:6].mean(0)) and torch.allclose(out[0, 2], w[[6, 6, 6, 7, 8]].mean(0))
    plain = torch.tensor([[[NO_CELL] * 5] * 4])
    assert torch.equal(sheet_embeddings(embedding, ids, plain), embedding(ids))
