"""Batched generation with the real tiny model: left padding, batch = one-by-one, blank images, CLI run."""
import json
from pathlib import Path

import pytest
from PIL import Image

from eval.generation import ModelGenerator, cut_at_stop, load_generator, open_image
from eval.items import EvalItem
from app.cli import main
from vision_encoders.preprocess import ImageProcessor
from vlm.inputs import left_pad


def test_left_pad_and_cut():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert cut_at_stop([4, 9, 2, 4], {2}, pad_id=0) == [4, 9]
    assert cut_at_stop([4, 0, 0], {2}, pad_id=0) == [4]


def test_blank_image_keeps_size():
    item = EvalItem(1, Image.new("RGB", (7, 3), (250, 10, 10)), "q")
    blank = open_image(item, ImageProcessor(size=8, mean=(0.5,) * 3, std=(0.5,) * 3), blank=True)
    assert blank.size == (7, 3) and blank.getextrema() == ((0, 0), (0, 0), (0, 0))


@pytest.mark.slow  # building the tiny model takes 5-20 s on a shared CPU
def test_batched_equals_one_by_one(tiny_vlm_dir: Path):
    gen = load_generator(str(tiny_vlm_dir), max_new_tokens=6)
    assert isinstance(gen, ModelGenerator)
    items = [EvalItem(i, Image.new("RGB", (9 + i, 8), (30 * i, 90, 0)), "What colour?" + " very" * i)
             for i in range(5)]
    items.append(EvalItem("text", None, "Say something."))  # text-only rows mix with image rows
    one_by_one = [gen([it])[0] for it in items]
    assert gen(items) == one_by_one
    blind = ModelGenerator(gen.model, max_new_tokens=6, blank_images=True)
    assert blind(items[:2]) == [blind([it])[0] for it in items[:2]]


@pytest.mark.slow
def test_cli_run_with_real_model(tiny_vlm_dir: Path, vqav2_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    base = ["eval", "run", "--model", str(tiny_vlm_dir), "--benchmark", "vqav2", "--data-root", str(vqav2_root),
            "--batch-size", "2", "--max-new-tokens", "4", "--no-progress"]
    assert main(base + ["--out", str(out)]) == 0
    record = json.loads((out / "scores.json").read_text())
    assert record["benchmark"] == "vqav2" and record["n"] == 3 and record["model"] == "ckpt"
    from vlm import fingerprint  # scored under the checkpoint's preprocessing: its probes, this run's versions

    assert record["preprocessing_fingerprint"] == fingerprint.load(tiny_vlm_dir) | {"versions": fingerprint.library_versions()}
    assert (out / "vqav2_results.json").is_file()
    assert (out / "results.md").read_text().startswith("| ckpt | vqav2 | val2014 | accuracy |")
    whole = (out / "predictions.jsonl").read_text()
    chunked = tmp_path / "chunked"
    for i in range(2):
        assert main(base + ["--out", str(chunked), "--num-chunks", "2", "--chunk-idx", str(i)]) == 0
    assert (chunked / "predictions.jsonl").read_text() == whole


def test_cli_run_bad_model_dir_is_one_line(tmp_path: Path, vqav2_root: Path, capsys, monkeypatch):
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    monkeypatch.chdir(tmp_path)  # the default --out is relative: nothing may be written there
    code = main(["eval", "run", "--model", str(not_a_model), "--benchmark", "vqav2", "--data-root", str(vqav2_root)])
    assert code == 2 and "not a model directory" in capsys.readouterr().err
    assert not (tmp_path / "eval_results").exists()


@pytest.mark.slow
def test_hf_llava_directory_gives_the_same_answers(tiny_vlm_dir: Path, tmp_path: Path):
    from vlm.hf.convert import export_hf
    from vlm.model import VisionLanguageModel

    export_hf(VisionLanguageModel.load(tiny_vlm_dir), tmp_path / "hf")
    ours = load_generator(str(tiny_vlm_dir), max_new_tokens=5, device="cpu")
    theirs = load_generator(str(tmp_path / "hf"), max_new_tokens=5, device="cpu")
    items = [EvalItem(i, Image.new("RGB", (12, 10), (40 * i, 0, 90)), "Which shape?" + " x" * i) for i in range(3)]
    assert theirs(items) == ours(items)
