"""Runner: answers appended as they come, resume after interruption, chunked run = unchunked run."""
import json
from pathlib import Path

import pytest

from eval.benchmarks import BenchmarkPaths
from eval.runner import RunConfig, chunk, run
from eval.items import BenchmarkFileError, EvalItem


def echo_answers(items: list[EvalItem]) -> list[str]:
    """A deterministic stand-in model: the right answer to question 420 ('two'), 'yes' otherwise."""
    return ["two" if it.question_id == 420 else "yes" for it in items]


def _config(root: Path, out: Path, **kw) -> RunConfig:
    return RunConfig("vqav2", BenchmarkPaths(root), out, model_name="fake", progress=False, **kw)


def test_run_scores_writes_submission_and_row(vqav2_root: Path, tmp_path: Path):
    result = run(_config(vqav2_root, tmp_path / "out", batch_size=2), echo_answers)
    # q420: 'two' -> '2' matches 4 of 10 humans -> 1.0; q421 'yes' unanimous -> 1.0; q70 -> 0
    assert result.scores["score"] == 66.67
    assert result.scores["scores"]["per_answer_type"] == {"number": 100.0, "other": 0.0, "yes/no": 100.0}
    sub = json.loads((tmp_path / "out" / "vqav2_results.json").read_text())
    assert sub[0] == {"question_id": 420, "answer": "2"}
    assert result.row == "| fake | vqav2 | val2014 | accuracy | 66.67 | 3 |  |"
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x)["question_id"] for x in lines] == [420, 421, 70]


def test_resume_after_interruption_skips_done(vqav2_root: Path, tmp_path: Path):
    calls: list[list] = []

    def dies_after_first_batch(items):
        if calls:
            raise KeyboardInterrupt
        calls.append([it.question_id for it in items])
        return echo_answers(items)

    with pytest.raises(KeyboardInterrupt):
        run(_config(vqav2_root, tmp_path / "out", batch_size=2), dies_after_first_batch)
    part = tmp_path / "out" / "chunks" / "0_of_1.jsonl"
    with part.open("a") as f:
        f.write('{"question_id": 70, "te')  # a write torn by the kill
    seen: list = []

    def records(items):
        seen.extend(it.question_id for it in items)
        return echo_answers(items)

    result = run(_config(vqav2_root, tmp_path / "out", batch_size=2), records)
    assert calls == [[420, 421]] and seen == [70]
    assert result.scores["score"] == 66.67


def test_restart_with_other_settings_is_refused(vqav2_root: Path, tmp_path: Path):
    run(_config(vqav2_root, tmp_path / "out"), echo_answers)
    with pytest.raises(BenchmarkFileError, match="different run"):
        run(_config(vqav2_root, tmp_path / "out", limit=1), echo_answers)


def test_chunked_equals_unchunked(vqav2_root: Path, tmp_path: Path):
    whole = run(_config(vqav2_root, tmp_path / "whole"), echo_answers)
    first = run(_config(vqav2_root, tmp_path / "chunked", num_chunks=2, chunk_idx=0), echo_answers)
    assert first.scores is None  # chunk 1 still missing
    second = run(_config(vqav2_root, tmp_path / "chunked", num_chunks=2, chunk_idx=1), echo_answers)
    assert second.scores["scores"] == whole.scores["scores"]
    merged = (tmp_path / "chunked" / "predictions.jsonl").read_text()
    assert merged == (tmp_path / "whole" / "predictions.jsonl").read_text()


def test_chunks_are_contiguous_and_cover_everything():
    items = [EvalItem(i, None, "") for i in range(7)]
    parts = [chunk(items, 3, i) for i in range(3)]
    assert [[it.question_id for it in p] for p in parts] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError):
        chunk(items, 3, 3)


def test_limit(vqav2_root: Path, tmp_path: Path):
    result = run(_config(vqav2_root, tmp_path / "out", limit=2), echo_answers)
    assert result.scores["n"] == 2 and result.scores["score"] == 100.0 and "first 2" in result.row


def test_parallel_chunks_leave_merging_to_a_last_call_that_loads_no_model(vqav2_root: Path, tmp_path: Path):
    for i in range(2):
        assert run(_config(vqav2_root, tmp_path / "out", num_chunks=2, chunk_idx=i, finalize=False),
                   echo_answers).scores is None
    assert not (tmp_path / "out" / "predictions.jsonl").exists()

    def must_not_run(items):
        raise AssertionError("nothing is left to answer")

    final = run(_config(vqav2_root, tmp_path / "out", num_chunks=2), must_not_run)
    assert final.answered == 0 and final.scores["score"] == 66.67


def test_failed_items_are_recorded_scored_wrong_and_asked_again(vqav2_root: Path, tmp_path: Path, capsys):
    from eval.items import Failed

    def image_420_unreadable(items):
        return [Failed("image 42.jpg: truncated") if it.question_id == 420 else "yes" for it in items]

    result = run(_config(vqav2_root, tmp_path / "out", batch_size=2), image_420_unreadable)
    # q420 failed (counted wrong), q421 'yes' right, q70 'yes' wrong: 1 of 3
    assert result.scores["score"] == 33.33 and result.scores["n"] == 3
    assert result.scores["failed"] == 1 and result.failed == {"420": "image 42.jpg: truncated"}
    out = capsys.readouterr().out
    assert "1 of 3 questions failed and are scored as wrong (first: 420: image 42.jpg: truncated)" in out
    rows = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert rows[0] == {"question_id": 420, "prompt": rows[0]["prompt"], "text": "", "model_id": "fake",
                       "failed": "image 42.jpg: truncated"}
    asked: list = []

    def fixed(items):  # the image was repaired: a rerun over the same folder asks only the failed question
        asked.extend(it.question_id for it in items)
        return echo_answers(items)

    again = run(_config(vqav2_root, tmp_path / "out", batch_size=2), fixed)
    assert asked == [420] and again.failed == {} and again.scores["score"] == 66.67


def test_failed_pope_item_counts_as_wrong_whatever_its_label(tmp_path: Path):
    from eval.benchmarks import get_benchmark

    pope = get_benchmark("pope")
    items = [EvalItem("a", None, "q", {"label": "yes", "split": "s"}),
             EvalItem("b", None, "q", {"label": "no", "split": "s"})]
    # LLaVA's parser reads an empty answer as "yes": the failed answer must be the opposite of each label
    scores = pope.score(items, {it.key: pope.failed_answer(it) for it in items})
    assert scores["accuracy"] == 0.0
