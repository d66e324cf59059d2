"""Whole-world generation: byte-identical for a seed (any worker count), different across seeds, held-out pairs kept out."""
import json
import re
from pathlib import Path

import pytest

from eval.items import CAPTION_PROMPT
from synthetic.generate import generate_world
from synthetic.world import HELD_OUT, SHAPE_PLURALS

IMAGE_TRAINING_FILES = ("align.json", "instruct.json", "prefer_train.json", "scenes/train.json")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(synth_world: Path, tmp_path: Path, make_config) -> None:
    again = tmp_path / "again"
    generate_world(make_config(again, seed=0, num_workers=1))  # the fixture used 2 workers
    a, b = _tree(synth_world), _tree(again)
    assert sorted(a) == sorted(b)
    different = [name for name in a if a[name] != b[name]]
    assert not different, different[:5]
    assert any(name.startswith("images/train/") for name in a) and "tokenizer/tokenizer.json" in a


def test_different_seed_gives_different_images_and_text(synth_world: Path, tmp_path: Path, make_config) -> None:
    other = tmp_path / "other"
    generate_world(make_config(other, seed=1))
    a, b = _tree(synth_world), _tree(other)
    for name in ("images/train/000000.png", "images/test/000005.png", "align.json", "instruct.json",
                 "eval/vqav2/questions.json"):
        assert a[name] != b[name], name


def test_held_out_pairs_never_occur_in_image_training_files(synth_world: Path) -> None:
    patterns = [re.compile(rf"\b{c} {s}(?:{SHAPE_PLURALS[s][len(s):]})?\b", re.IGNORECASE) for c, s in HELD_OUT]
    for name in IMAGE_TRAINING_FILES:
        text = (synth_world / name).read_text()
        for pattern in patterns:
            assert not pattern.search(text), f"{name} mentions held-out {pattern.pattern}"
    train = json.loads((synth_world / "scenes" / "train.json").read_text())
    assert all((o["colour"], o["shape"]) not in HELD_OUT for s in train for o in s["objects"])
    # ... while the test split does use them, so this check can fail
    test_text = (synth_world / "eval" / "vqav2" / "questions.json").read_text()
    assert any(p.search(test_text) for p in patterns)
    # The LLM's text corpus does name them, as a real LLM's text mentions red stars: held out of the images only.
    assert any(p.search((synth_world / "text_corpus.jsonl").read_text()) for p in patterns)


def test_training_answers_are_balanced(synth_world: Path) -> None:
    answers = [t["value"] for r in json.loads((synth_world / "instruct.json").read_text()) if r["id"].startswith("vqa-")
               for t in r["conversations"][1::2] if t["value"] in ("yes", "no")]
    assert len(answers) > 30
    assert 0.35 < answers.count("yes") / len(answers) < 0.65


def test_instruct_mix_has_caption_chats_asked_like_the_captioning_benchmark(synth_world: Path) -> None:
    """LLaVA-1.5's mix has TextCaps captions under this prompt; without them phase 2 answers it like a question."""
    records = json.loads((synth_world / "instruct.json").read_text())
    captions = [r for r in records if r["id"].startswith("caption-")]
    images = {r["image"] for r in records if "image" in r}
    assert 0.1 < len(captions) / len(images) < 0.4  # caption_share 0.25 of the training images
    for record in captions:
        human, gpt = record["conversations"]
        assert human["value"] == f"<image>\n{CAPTION_PROMPT}" and gpt["value"].endswith(".")
        assert len(gpt["value"].split()) >= 4 and "\n" not in gpt["value"]


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path, make_config) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no world.json"):
        generate_world(make_config(tmp_path))


def test_bad_config_is_a_clear_error(tmp_path: Path, make_config) -> None:
    cfg = make_config(tmp_path / "w")
    with pytest.raises(ValueError, match="too small"):
        type(cfg)(out=str(tmp_path / "w"), image_size=16)


def test_wide_world_has_wide_images_and_records_their_size(tmp_path: Path, make_config) -> None:
    import dataclasses

    from PIL import Image

    cfg = dataclasses.replace(make_config(tmp_path / "wide"), num_train=6, num_test=4, image_width=216)
    generate_world(cfg)
    root = Path(cfg.out)
    assert Image.open(root / "images" / "train" / "000000.png").size == (216, 72)
    assert Image.open(root / "images" / "test" / "000003.png").size == (216, 72)
    images = json.loads((root / "eval" / "coco" / "captions_test.json").read_text())["images"]
    assert {(i["width"], i["height"]) for i in images} == {(216, 72)}
    assert json.loads((root / "world.json").read_text())["config"]["image_width"] == 216


def test_square_world_manifest_does_not_name_image_width(synth_world: Path) -> None:
    assert "image_width" not in json.loads((synth_world / "world.json").read_text())["config"]


@pytest.mark.parametrize("width, message", [(100, "multiple of 3"), (69, ">= image_size")])
def test_bad_image_width_is_a_clear_error(tmp_path: Path, width: int, message: str) -> None:
    from synthetic.generate import SynthConfig

    with pytest.raises(ValueError, match=message):
        SynthConfig(out=str(tmp_path / "w"), image_size=72, image_width=width)
