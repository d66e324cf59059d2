"""`vlm data validate` and the audit with worker processes: the very output of one process."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from app.cli import main as vlm_main
from instruct_data import audit as audit_mod
from instruct_data.audit import audit_records
from instruct_data.sources import load_records
from instruct_data.length_cache import compute_lengths
from tests.instruct_data.test_length_cache import make, write_records


@pytest.fixture()
def world(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (12, 9), (1, 2, 3)).save(tmp_path / "img" / "x.png")
    path = write_records(tmp_path / "data.json", 300)
    recs = json.loads(path.read_text())
    recs[7]["image"] = "missing.png"
    recs[40]["conversations"][1]["value"] = ""
    recs[41]["id"] = recs[40]["id"]  # a duplicate id: found across chunks only by the parent
    recs[250]["id"] = recs[3]["id"]
    path.write_text(json.dumps(recs))
    return path, tmp_path / "img"


def test_audit_workers_give_the_same_report(world, bpe_tokenizer, monkeypatch):
    monkeypatch.setattr(audit_mod, "AUDIT_CHUNK", 16)
    path, _ = world
    reports = [audit_records(load_records(path), "vicuna_v1", bpe_tokenizer,
                             image_token_id=bpe_tokenizer.convert_tokens_to_ids("<image>"), num_image_tokens=5,
                             max_length=150, workers=w).to_dict() for w in (1, 2)]
    assert reports[0] == reports[1]
    exact = [audit_records(load_records(path), "vicuna_v1", bpe_tokenizer,
                           image_token_id=bpe_tokenizer.convert_tokens_to_ids("<image>"), num_image_tokens=5,
                           max_length=150, workers=w).exact for w in (1, 2)]
    assert exact[0] == exact[1] == compute_lengths(make(path, bpe_tokenizer, max_length=150), workers=1).tolist()
    assert reports[0]["skipped"] and reports[0]["truncated"] and reports[0]["audited"] == 301


def test_validate_workers_print_and_report_the_same(world, bpe_tokenizer, tmp_path, capsys):
    path, root = world
    bpe_tokenizer.save_pretrained(tmp_path / "tok")
    outs = []
    for w in (1, 2):
        rc = vlm_main(["data", "validate", str(path), "--image-folder", str(root), "--tokenizer", str(tmp_path / "tok"),
                       "--template", "vicuna_v1", "--num-image-tokens", "5", "--max-length", "150",
                       "--report", str(tmp_path / f"r{w}.jsonl"), "--workers", str(w)])
        out = capsys.readouterr().out.replace(f"r{w}.jsonl", "r.jsonl")
        outs.append((rc, out, (tmp_path / f"r{w}.jsonl").read_text()))
    assert outs[0] == outs[1]
    assert outs[0][0] == 1 and "duplicate id" in outs[0][2] and "missing.png" in outs[0][2]
