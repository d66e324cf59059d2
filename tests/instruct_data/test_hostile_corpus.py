"""A hostile corpus (bad images, bad records, bad files) through `vlm data validate`, `vlm train`, `vlm eval run`
and `vlm chat`: exit codes, a message naming the file / record, never a traceback, good records kept."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli import main as vlm
from conversation.testing import (
    RAW_BAD_ENTRIES,
    broken_record_files,
    hostile_images,
    hostile_records,
    record_lines_bytes,
    record_list_bytes,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hostile")
    images = hostile_images(root / "images", root / "outside")
    pairs = hostile_records(images)
    records = [r for r, _ in pairs]
    (root / "corpus.json").write_bytes(record_list_bytes(records, list(RAW_BAD_ENTRIES.values())))
    (root / "corpus.jsonl").write_bytes(record_lines_bytes(records, list(RAW_BAD_ENTRIES.values()), bom=True))
    good = [r for r, reason in pairs if reason is None and isinstance(r, dict) and r["id"] != "long"][:4]
    broken = broken_record_files(root / "broken", good)
    return {"root": root, "images": images, "pairs": pairs, "broken": broken, "good": good}


def _run(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, *argv: str) -> tuple[int, str]:
    """Exit code and everything printed or logged; an exception escaping the CLI fails the test by itself."""
    code = vlm(list(argv))
    out, err = capsys.readouterr()
    text = out + err + caplog.text
    caplog.clear()
    assert "Traceback" not in text, text
    return code, text


# ------------------------------------------------------------------------------------------------- validate
def _validate(corpus, capsys, caplog, path: Path, tmp_path: Path) -> tuple[int, str, list[dict]]:
    report = tmp_path / f"{path.name}.problems.jsonl"
    code, text = _run(capsys, caplog, "data", "validate", str(path), "--image-folder", str(corpus["root"] / "images"),
                      "--report", str(report))
    return code, text, [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", ["corpus.json", "corpus.jsonl"])
def test_validate_names_every_bad_record_and_passes_the_good(corpus, capsys, caplog, tmp_path, name) -> None:
    code, text, rows = _validate(corpus, capsys, caplog, corpus["root"] / name, tmp_path)
    assert code == 1
    errors: dict[str, set[str]] = {}
    warnings: dict[str, set[str]] = {}
    for row in rows:
        (errors if row["severity"] == "error" else warnings).setdefault(row["record_id"], set()).add(row["reason"])
    for index, (record, reason) in enumerate(corpus["pairs"]):
        rid = record["id"] if isinstance(record, dict) else None
        if reason is None:
            assert rid not in errors, (rid, errors.get(rid))
        elif rid is not None:
            assert reason in errors.get(rid, set()), (rid, reason, errors.get(rid))
    assert "just a string" not in text and any(r["reason"] == "schema" and r["record_id"].startswith("#") for r in rows)
    # the raw entries decode per record: named by their id (or line), the rest of the file still read
    malformed = [r["record_id"] for r in rows if r["reason"] == "malformed json"]
    assert {"nan", "utf8"} <= set(malformed) and len(malformed) == len(RAW_BAD_ENTRIES) + (name == "corpus.jsonl")
    assert warnings["dup"] == {"duplicate id"} and warnings["img-1"] == {"extension mismatch"}
    n_good = sum(reason is None for _, reason in corpus["pairs"])
    assert f"{'ok':<34}{n_good:>10}" in text
    if name == "corpus.jsonl":  # the malformed line is named by its line number, after the BOM and raw lines
        assert [r["line"] for r in rows if r["record_id"] == "line 5"] == [5]


@pytest.mark.parametrize("name", ["truncated.json", "missing_comma.json", "python_repr.json", "object.json",
                                  "jsonl_named.json", "trailing.json", "empty_list.json", "blank_lines.jsonl",
                                  "utf16.json", "zero.json", "garbage.parquet"])
def test_validate_unreadable_files_say_where(corpus, capsys, caplog, tmp_path, name) -> None:
    path = corpus["root"] / "broken" / name
    code, text, rows = _validate(corpus, capsys, caplog, path, tmp_path)
    assert code == 1
    assert corpus["broken"][name] in text or any(corpus["broken"][name] in r["detail"] for r in rows), text
    assert str(path) in text or rows
    ok_before = {"truncated.json": 2, "missing_comma.json": 1}  # records before the break: checked, and fine
    if name in ok_before:
        assert f"{'ok':<34}{ok_before[name]:>10}" in text
        assert [r["reason"] for r in rows if r["severity"] == "error"] == ["malformed json"]
        assert "the records after line" in text


# ------------------------------------------------------------------------------------------------------ train
def _train_config(corpus, model_dir: Path, tmp_path: Path, data_path: Path, n: int) -> Path:
    data: dict[str, Any] = {"data_path": [str(data_path)], "image_folder": str(corpus["root"] / "images"),
                            "max_length": 256, "guards": {"max_skip_ratio": 1.0}}  # mostly bad on purpose
    cfg = {"recipe": "instruct", "model": {"init_from": str(model_dir), "template": "vicuna_v1"}, "data": data,
           "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
           "schedule": {"global_batch_size": n, "micro_batch_size": 1, "epochs": 1, "seed": 0},
           "engine": {"precision": "fp32"}, "checkpoint": {"output_dir": str(tmp_path / "run"), "resume": "none"},
           "feature_cache": {"enabled": False}, "log": {"tensorboard": False, "progress_bar": False}}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("name", ["corpus.json", "corpus.jsonl"])
def test_train_skips_each_bad_record_and_trains_the_good(corpus, tiny_vlm_dir, capsys, caplog, tmp_path, name) -> None:
    n_entries = len(corpus["pairs"]) + len(RAW_BAD_ENTRIES) + (name == "corpus.jsonl")  # + the cut line
    config = _train_config(corpus, tiny_vlm_dir, tmp_path, corpus["root"] / name, n_entries)
    code, text = _run(capsys, caplog, "train", str(config))
    assert code == 0, text
    bad = sum(reason is not None for _, reason in corpus["pairs"])
    # every bad record is skipped (the over-long one by max_length), every good one trained: one epoch, one step
    skipped = bad + len(RAW_BAD_ENTRIES) + 1 + (name == "corpus.jsonl")
    assert f"skipped records {skipped} (" in text, text
    assert "done: 1 steps" in text
    if name == "corpus.jsonl":
        assert "corpus.jsonl line 5: malformed JSON" in text or "line 5" in text


@pytest.mark.parametrize("name", ["truncated.json", "python_repr.json", "utf16.json", "zero.json", "empty_list.json",
                                  "blank_lines.jsonl", "jsonl_named.json", "garbage.parquet"])
def test_train_on_an_unreadable_file_is_one_clear_error(corpus, tiny_vlm_dir, capsys, caplog, tmp_path, name) -> None:
    path = corpus["root"] / "broken" / name
    code, text = _run(capsys, caplog, "train", str(_train_config(corpus, tiny_vlm_dir, tmp_path, path, 2)))
    assert code == 2
    assert f"vlm train: {path}: " in text and corpus["broken"][name] in text
    assert "batch_size" not in text


# ------------------------------------------------------------------------------------------------ eval, chat
def test_eval_answers_the_rest_and_counts_failed_items(corpus, tiny_vlm_dir, capsys, caplog, tmp_path) -> None:
    # refs leaving the image root are refused when the benchmark loads (a malformed benchmark file, one message)
    images = {ref: reason for ref, reason in corpus["images"].items() if reason != "outside image root"}
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "image": ref, "text": "What colour?", "answer": "red"})
                                 + "\n" for i, ref in enumerate(images))
                         + json.dumps({"question_id": "s", "text": "Why\ud800?", "answer": "x"}) + "\n")
    out = tmp_path / "eval"
    code, text = _run(capsys, caplog, "eval", "run", "--model", str(tiny_vlm_dir), "--benchmark", "llava_jsonl",
                      "--questions", str(questions), "--image-root", str(corpus["root"] / "images"),
                      "--out", str(out), "--max-new-tokens", "2", "--batch-size", "4", "--no-progress")
    assert code == 0, text
    n_failed = sum(reason is not None for reason in images.values()) + 1  # + the question with a lone surrogate
    assert f"{n_failed} of {len(images) + 1} questions failed" in text
    scores = json.loads((out / "scores.json").read_text())
    assert scores["n"] == len(images) + 1 and scores["failed"] == n_failed
    assert "not valid Unicode" in scores["failed_items"]["s"]
    for i, (ref, reason) in enumerate(images.items()):
        if reason is not None:
            assert reason in scores["failed_items"][str(i)] and Path(ref).name in scores["failed_items"][str(i)]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sum("failed" in r for r in rows) == n_failed and len(rows) == len(images) + 1

    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text(json.dumps({"question_id": 1, "image": "zero.png", "text": "?", "answer": "x"}) + "\n")
    code, text = _run(capsys, caplog, "eval", "run", "--model", str(tiny_vlm_dir), "--benchmark", "llava_jsonl",
                      "--questions", str(only_bad), "--image-root", str(corpus["root"] / "images"),
                      "--out", str(tmp_path / "eval_bad"), "--no-progress")
    assert code == 1 and "every one of the 1 questions failed" in text and "empty file" in text


def test_chat_answers_usable_images_and_names_bad_ones(corpus, tiny_vlm_dir, capsys, caplog) -> None:
    folder = corpus["root"] / "images"
    for ref, reason in corpus["images"].items():
        if ref.startswith(("..", "/")) or ref in ("link_out.png", "a_dir.png"):
            continue  # chat opens the path it is given: there is no image root to leave
        code, text = _run(capsys, caplog, "chat", "--model", str(tiny_vlm_dir), "--image", str(folder / ref),
                          "--question", "What is it?", "--max-new-tokens", "2", "--device", "cpu")
        if reason is None:
            assert code == 0, (ref, text)
        else:
            assert code == 2 and "vlm chat: error:" in text and ref in text, (ref, text)
            assert reason.split()[0] in text or (reason == "missing file" and "not found" in text), (ref, text)


def test_validate_token_checks_flag_the_over_long_record(corpus, tiny_vlm_dir, capsys, caplog, tmp_path) -> None:
    k = json.loads((tiny_vlm_dir / "vlm_config.json").read_text())["num_image_tokens"]
    path = tmp_path / "long.json"
    long_records = [r for r, _ in corpus["pairs"] if isinstance(r, dict) and r["id"] in ("long", "text-ok", "img-0")]
    path.write_text(json.dumps(long_records))
    report = tmp_path / "p.jsonl"
    code, text = _run(capsys, caplog, "data", "validate", str(path), "--image-folder", str(corpus["root"] / "images"),
                      "--tokenizer", str(tiny_vlm_dir / "tokenizer"), "--template", "vicuna_v1",
                      "--num-image-tokens", str(k), "--max-length", "256", "--report", str(report))
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert code == 1 and [(r["record_id"], r["reason"]) for r in rows] == [
        ("long", "no supervised token within max length")]


def test_chat_question_with_invalid_utf8_is_one_line(corpus, tiny_vlm_dir, capsys, caplog) -> None:
    code, text = _run(capsys, caplog, "chat", "--model", str(tiny_vlm_dir), "--image",
                      str(corpus["root"] / "images" / "good.png"), "--question", "why \udcff?", "--device", "cpu")
    assert code == 2 and "vlm chat: error: the question is not valid Unicode" in text


@pytest.mark.parametrize("mixture, message", [
    ("datasets: [{json_path: nope.json}]", "record file not found"),
    ("datasets: [{json_path: broken/zero.json}]", "no records"),
    ("datasets: [oops", "data.mixture"),
    ("datasets: [{json_path: corpus.json, sampling_strategy: 'first:x'}]", "bad count"),
])
def test_train_on_a_bad_mixture_is_one_clear_error(corpus, tiny_vlm_dir, capsys, caplog, tmp_path, mixture, message):
    path = corpus["root"] / f"mix_{abs(hash(mixture))}.yaml"
    path.write_text(mixture)
    config = _train_config(corpus, tiny_vlm_dir, tmp_path, corpus["root"] / "corpus.json", 2)
    code, text = _run(capsys, caplog, "train", str(config), "data.data_path=[]", f"data.mixture={path}")
    assert code == 2 and message in text, text
