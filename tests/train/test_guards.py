"""Fail loud, at the command line: runs that would train nothing or skip too much stop non-zero, naming the cause."""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli import main
from train.config import TrainConfig


def _write(cfg: TrainConfig, path: Path) -> str:
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return str(path)


def _train(cfg: TrainConfig, tmp_path: Path, capsys: pytest.CaptureFixture, *overrides: str) -> tuple[int, str, str]:
    rc = main(["train", _write(cfg, tmp_path / "c.yaml"), *overrides])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _bad_image_records(tiny_world: dict[str, Path], n_bad: int) -> list[dict[str, Any]]:
    records = json.loads(tiny_world["data"].read_text())
    for k in range(n_bad):
        records[3 * k + 1] = {"id": f"gone{k}", "image": "nope.png", "conversations": [
            {"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}]}
    return records


def test_images_that_fit_no_max_length_stop_before_the_model_loads(make_cfg, tmp_path, capsys, monkeypatch) -> None:
    import train.recipes

    def no_model(cfg: TrainConfig) -> None:
        raise AssertionError("the pre-flight audit should have stopped the run before the model loads")

    monkeypatch.setattr(train.recipes, "build_model", no_model)
    rc, out, err = _train(make_cfg(), tmp_path, capsys, "data.max_length=8", "schedule.max_steps=3")
    assert rc == 4, err
    assert "images do not fit max_length: K=16 image tokens per image" in err and "max_length=8" in err
    assert "ERROR" in out and "records with images: 20, fitting max_length: 0" in out
    audit = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert audit["skipped"] == {"max_length": 24} and audit["trained"] == 0 and audit["errors"]


def test_all_records_skipped_at_run_time_stops_and_saves_no_model(make_cfg, tmp_path, capsys) -> None:
    """The audit off, the run-time guard catches the same run: non-zero, the cause, the first records."""
    rc, _, err = _train(make_cfg(), tmp_path, capsys, "data.max_length=8", "schedule.max_steps=3", "data.audit.sample=0")
    assert rc == 4, err
    assert "the run trained nothing: no supervised token reached the model in its 3 step(s)" in err
    assert "0 records trained, 12 skipped" in err
    assert "first skipped: 'r" in err and "images do not fit" in err
    assert "K=16 image tokens per image vs max_length=8" in err
    assert "done:" not in err
    assert not (tmp_path / "run" / "vlm_config.json").exists(), "no 'trained' model may be saved"
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))


def test_no_supervised_token_in_the_first_micro_batches_stops_early(make_cfg, tmp_path, capsys) -> None:
    cfg = make_cfg(max_steps=50)
    rc, _, err = _train(cfg, tmp_path, capsys, "data.max_length=8", "data.audit.sample=0", "data.guards.max_skip_ratio=1",
                        "data.guards.fail_no_supervised_after=4")
    assert rc == 4, err
    assert "no supervised token reached the model in the first 4 micro-batches" in err
    assert "data.guards.fail_no_supervised_after=4" in err and "8 skipped" in err


def test_skip_share_above_the_ratio_stops_after_the_warm_up(make_cfg, tiny_world, tmp_path, capsys) -> None:
    data = tmp_path / "bad.json"
    data.write_text(json.dumps(_bad_image_records(tiny_world, 3)))  # 3 of 24: images the audit does not open
    cfg = make_cfg(data={"data_path": [str(data)]}, max_steps=-1, epochs=1)
    rc, out, err = _train(cfg, tmp_path, capsys, "data.guards.skip_warmup=8")
    assert rc == 4, err
    assert "above data.guards.max_skip_ratio=0.01" in err
    assert "first skipped: 'gone" in err and "image: image 'nope.png': missing file" in err
    assert "data audit: all 24 records" in out  # the audit ran and passed: it does not open images

    # The same data under a ratio it respects trains, and the summary counts trained and skipped records.
    rc, out, err = _train(cfg, tmp_path, capsys, "data.guards.max_skip_ratio=0.2", "checkpoint.resume=none")
    assert rc == 0, err
    assert "trained 21 records, skipped 3 (image: 3)" in out


def test_a_short_run_is_judged_on_all_it_saw(make_cfg, tiny_world, tmp_path, capsys) -> None:
    """Fewer records than the warm-up window: the share is still checked, at the end of the run."""
    data = tmp_path / "bad.json"
    data.write_text(json.dumps(_bad_image_records(tiny_world, 3)))
    rc, _, err = _train(make_cfg(data={"data_path": [str(data)]}, max_steps=-1, epochs=1), tmp_path, capsys)
    assert rc == 4 and "3 of 24 records seen were skipped (12.5%)" in err, err


def test_a_source_without_supervised_tokens_stops_the_run(make_cfg, tiny_world, tmp_path, capsys) -> None:
    """A mixture whose second file has empty assistant turns: the loss-0 bug, named by source."""
    good = json.loads(tiny_world["data"].read_text())
    empty = [{"id": f"e{i}", "conversations": [{"from": "human", "value": "Say something."},
                                               {"from": "gpt", "value": ""}]} for i in range(6)]
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(yaml.safe_dump({"datasets": [
        {"json_path": str(tiny_world["data"]), "name": "good", "image_folder": str(tiny_world["images"])},
        {"json_path": "empty.json", "name": "silent"}]}))
    assert len(good) == 24
    cfg = make_cfg(data={"data_path": [], "mixture": str(mixture)})
    rc, out, err = _train(cfg, tmp_path, capsys)
    assert rc == 4, err
    assert "source 'silent': no supervised token in 6 audited records" in err and "'good'" not in err
    assert "it would train at loss 0" in err


def test_a_template_that_supervises_nothing_stops_the_run(make_cfg, tmp_path, capsys, monkeypatch) -> None:
    from conversation import templates

    def silent(messages, tokenizer, generation, record_id):  # noqa: ANN001, ANN202
        return [templates.Span(f"{m.role}: {m.content}\n", False) for m in messages]

    monkeypatch.setitem(templates.TEMPLATES, "silent", templates.Template("silent", silent, None))
    rc, _, err = _train(make_cfg(model={"template": "silent"}), tmp_path, capsys)
    assert rc == 4, err
    assert "no supervised token in 24 audited records under template 'silent'" in err


def test_a_malformed_record_file_stops_with_its_name(make_cfg, tiny_world, tmp_path, capsys) -> None:
    bad = tmp_path / "cut.json"
    bad.write_text(tiny_world["data"].read_text()[:-40])
    rc, _, err = _train(make_cfg(data={"data_path": [str(bad)]}), tmp_path, capsys)
    assert rc != 0
    assert str(bad) in err and "malformed JSON" in err and "Traceback" not in err


@pytest.mark.parametrize("audit", ["2000", "0"])
def test_an_empty_record_file_stops_with_its_name(make_cfg, tmp_path, capsys, audit) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    rc, _, err = _train(make_cfg(data={"data_path": [str(empty)]}), tmp_path, capsys, f"data.audit.sample={audit}")
    # bad input (exit 2, as any unreadable record file), named before any model loads
    assert rc == 2 and f"{empty}: no records in the file" in err, err


def test_audit_command_writes_report_and_manifest(make_cfg, tiny_world, tmp_path, capsys) -> None:
    path = _write(make_cfg(), tmp_path / "c.yaml")
    assert main(["data", "audit", path, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "data audit: all 24 records" in out and "tokens per record" in out
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert (audit["audited"], audit["trained"], audit["skipped"], audit["errors"]) == (24, 24, {}, [])
    assert audit["sources"]["data"]["selected"] == 24
    with gzip.open(tmp_path / "a" / "data_manifest.json.gz", "rt") as fh:
        manifest = json.load(fh)
    assert manifest["ids"] == [r["id"] for r in json.loads(tiny_world["data"].read_text())]

    assert main(["data", "audit", path, "data.max_length=8", "--out", str(tmp_path / "b")]) == 1
    assert "images do not fit max_length" in capsys.readouterr().err
    # A warning (one record skipped, above the 1% ratio) fails only with --strict.
    records = json.loads(tiny_world["data"].read_text())
    records[0]["conversations"][1]["value"] = ""
    (tmp_path / "one_bad.json").write_text(json.dumps(records))
    args = ["data", "audit", path, f"data.data_path=[{tmp_path / 'one_bad.json'}]", "--out", str(tmp_path / "c")]
    assert main(args) == 0
    assert main(args + ["--strict"]) == 1
    assert "skipped, above data.guards.max_skip_ratio" in capsys.readouterr().err


def test_train_writes_audit_and_manifest_into_the_run(make_cfg, tmp_path) -> None:
    from train.recipes import run

    cfg = make_cfg(max_steps=1)
    result = run(cfg)
    assert result.trained == 4
    audit = json.loads((Path(cfg.checkpoint.output_dir) / "audit.json").read_text())
    assert audit["audited"] == 24 and audit["supervised_tokens"] > 0
    assert (Path(cfg.checkpoint.output_dir) / "data_manifest.json.gz").is_file()


def test_guard_counts_across_processes(monkeypatch) -> None:
    """The skip count is summed over processes before the verdict (every rank raises alike)."""
    import torch

    from train.config import DataConfig, DataGuardsConfig
    from train.guards import DataFailure, DataGuard

    class TwoRanks:
        device = torch.device("cpu")

        def all_reduce_sum(self, t: torch.Tensor) -> None:
            t.mul_(2)  # the other rank skipped as many

    guard = DataGuard(DataConfig(guards=DataGuardsConfig(max_skip_ratio=0.05, skip_warmup=20)))
    guard.after_step(TwoRanks(), 2, trained=16.0, supervised=40.0, skipped_here=1, skip_log=[("a", "image: x")])
    assert (guard.trained, guard.skipped) == (16, 2)  # 18 seen < warm-up: no verdict yet
    with pytest.raises(DataFailure, match=r"2 of 21 records seen were skipped \(9.5%\).*'a': image: x"):
        guard.after_step(TwoRanks(), 2, trained=3.0, supervised=9.0, skipped_here=0, skip_log=[("a", "image: x")])
    assert guard.skipped == 2 and guard.trained == 19



def test_audit_reports_samples_per_pack_and_padding_left(make_cfg, tmp_path, capsys) -> None:
    path = _write(make_cfg(data={"packing": True, "pack_length": 1024}), tmp_path / "p.yaml")
    assert main(["data", "audit", path, "--out", str(tmp_path / "a")]) == 0
    packing = json.loads((tmp_path / "a" / "audit.json").read_text())["packing"]
    # 24 records of at most max_length=256 tokens, 4 a step (global batch 4): each step's 4 fit one row of 1024,
    # alone in its micro-batch, so nothing is padded
    assert packing["pack_length"] == 1024 and packing["samples"] == 24 and packing["rows"] == 6
    assert packing["samples_per_row"] == 4.0 and packing["padding_ratio"] == 0.0
    assert "packing into rows of 1024 tokens: 4.0 samples per row, padding left 0.0%" in capsys.readouterr().out


def test_audit_command_with_workers_writes_the_same_report(make_cfg, tmp_path, capsys, monkeypatch) -> None:
    from instruct_data import audit

    monkeypatch.setattr(audit, "AUDIT_CHUNK", 5)  # 24 records: 5 chunks over 2 processes
    path = _write(make_cfg(), tmp_path / "c.yaml")
    outs = []
    for workers in (1, 2):
        assert main(["data", "audit", path, "--workers", str(workers), "--out", str(tmp_path / f"w{workers}")]) == 0
        out = capsys.readouterr().out.replace(f"w{workers}", "w")
        outs.append((out, (tmp_path / f"w{workers}" / "audit.json").read_text()))
    assert outs[0] == outs[1]
