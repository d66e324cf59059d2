"""Scene sheets: five words per cell in reading order, and records tokenized exactly as the VLM tokenizes them."""
from pathlib import Path

from transformers import AutoTokenizer

from conversation.records import parse_record
from conversation.tokenize import IGNORE_INDEX, tokenize_conversation
from synthetic.corpus import CORPUS_FILE, read_corpus
from synthetic.sheet import WORDS_PER_CELL, cell_words, record_ids, scene_sheet
from synthetic.world import Scene, SceneObject


def _scene() -> Scene:
    return Scene(id=7, split="test", background="plain", background_tint=(220, 220, 220), objects=(
        SceneObject("star", "red", "large", 0, 2), SceneObject("circle", "blue", "small", 2, 0)))


def test_sheet_words_are_cells_in_reading_order() -> None:
    cells = cell_words(_scene())
    assert len(cells) == 9 and all(len(c) == WORDS_PER_CELL for c in cells)
    assert cells[2] == ["top", "right", "large", "red", "star"]
    assert cells[6] == ["bottom", "left", "small", "blue", "circle"]
    assert cells[4] == ["middle", "center", "empty", "empty", "empty"]
    assert scene_sheet(_scene()).split(" ")[10:15] == cells[2]


def test_the_world_tokenizer_reads_a_sheet_as_one_token_per_word(world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    assert len(tok(scene_sheet(_scene()), add_special_tokens=False)["input_ids"]) == 9 * WORDS_PER_CELL


def test_record_ids_are_the_vlm_tokens_with_the_sheet_for_the_image_block(world: Path) -> None:
    """The stage-0 LLM must see the prompt the VLM builds: same template, same split around the image."""
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    image_id = tok.convert_tokens_to_ids("<image>")
    entries = [e for e in read_corpus(world / CORPUS_FILE) if "sheet" in e][:6]
    assert {e["template"] for e in entries} == {"plain", "vicuna_v1"}
    for entry in entries:
        ids, labels = record_ids(entry, tok, entry["template"], entry["sheet"])
        conv = parse_record({**entry, "image": "x.png"}, 0)
        vlm = tokenize_conversation(conv, entry["template"], tok, image_token_id=image_id, num_image_tokens=3)
        start = vlm.input_ids.index(image_id)
        sheet_ids = tok(entry["sheet"], add_special_tokens=False)["input_ids"]
        assert ids == vlm.input_ids[:start] + sheet_ids + vlm.input_ids[start + 3:], entry["id"]
        assert labels == vlm.labels[:start] + [IGNORE_INDEX] * len(sheet_ids) + vlm.labels[start + 3:], entry["id"]
