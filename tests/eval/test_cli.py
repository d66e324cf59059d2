"""`vlm eval score` on other systems' result files, `vlm eval table`, and clear errors."""
import json
from pathlib import Path

from app.cli import main


def test_score_vqav2_results_file(vqav2_root: Path, tmp_path: Path, capsys):
    preds = tmp_path / "results.json"
    preds.write_text(json.dumps([{"question_id": 420, "answer": "two"}, {"question_id": 421, "answer": "no"},
                                 {"question_id": 70, "answer": "red"}]))
    assert main(["eval", "score", "--benchmark", "vqav2", "--data-root", str(vqav2_root),
                 "--predictions", str(preds)]) == 0
    out = capsys.readouterr().out
    assert "| external | vqav2 | val2014 | accuracy | 66.67 | 3 |  |" in out
    record = json.loads((tmp_path / "results.vqav2_scores.json").read_text())
    assert record["scores"]["per_answer_type"]["yes/no"] == 0.0


def test_score_missing_predictions_is_a_clear_error_unless_subset(vqav2_root: Path, tmp_path: Path, capsys):
    preds = tmp_path / "answers.jsonl"
    preds.write_text(json.dumps({"question_id": 70, "text": "red"}) + "\n")
    args = ["eval", "score", "--benchmark", "vqav2", "--data-root", str(vqav2_root), "--predictions", str(preds)]
    assert main(args) == 2
    assert "2 question(s) have no prediction" in capsys.readouterr().err
    assert main(args + ["--subset"]) == 0
    assert "| 100.0 | 1 |" in capsys.readouterr().out


def test_score_coco_caption_results(tmp_path: Path, capsys):
    ann = tmp_path / "captions_test.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
                               "annotations": [{"image_id": 1, "caption": "a red square"},
                                               {"image_id": 2, "caption": "a blue circle"}]}))
    preds = tmp_path / "caps.json"
    preds.write_text(json.dumps([{"image_id": 1, "caption": "a red square"},
                                 {"image_id": 2, "caption": "a blue circle"}]))
    assert main(["eval", "score", "--benchmark", "coco_captions", "--annotations", str(ann), "--data-root",
                 str(tmp_path), "--predictions", str(preds), "--no-meteor"]) == 0
    record = json.loads((tmp_path / "caps.coco_captions_scores.json").read_text())
    assert record["scores"]["BLEU-1"] == 100.0 and record["metric"] == "CIDEr"


def test_table_gathers_scores(tmp_path: Path, capsys):
    for bench, score in (("pope", 80.5), ("gqa", 40.0)):
        d = tmp_path / bench
        d.mkdir()
        (d / "scores.json").write_text(json.dumps({"benchmark": bench, "split": "s", "model": "m", "metric": "x",
                                                   "score": score, "n": 3}))
    assert main(["eval", "table", str(tmp_path), "--out", str(tmp_path / "table.md")]) == 0
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert lines[2] == "| m | gqa | s | x | 40.0 | 3 |  |" and lines[3].startswith("| m | pope")


def test_unknown_benchmark_lists_known(capsys):
    try:
        main(["eval", "score", "--benchmark", "nope", "--predictions", "x"])
    except SystemExit as err:
        assert err.code == 2
    assert "vqav2" in capsys.readouterr().err
