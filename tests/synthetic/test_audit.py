"""The pre-flight audit on the synthetic world: its numbers against counts made independently of the audit."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from instruct_data.audit import AuditError, audit_records
from instruct_data.mixture import load_mixture
from instruct_data.sources import load_records

K = 16


@pytest.fixture(scope="module")
def tok(synth_world: Path):
    from transformers import AutoTokenizer

    from vlm.tokens import add_special_tokens

    tokenizer = AutoTokenizer.from_pretrained(synth_world / "tokenizer")
    add_special_tokens(tokenizer, "<image>")
    return tokenizer


def _audit(records, tok, max_length, template="plain", **kw):
    return audit_records(records, template, tok, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         num_image_tokens=K, max_length=max_length, **kw)


def _plain_lengths(world: Path, tok) -> tuple[list[int], list[int]]:
    """Under `plain`: bos + K image ids + the caption and its newline, all supervised (counted by hand)."""
    captions = [r["conversations"][1]["value"] + "\n" for r in json.loads((world / "align.json").read_text())]
    supervised = [len(tok(c, add_special_tokens=False)["input_ids"]) for c in captions]
    return [1 + K + s for s in supervised], supervised


def test_audit_counts_every_record_of_the_align_data(synth_world: Path, tok) -> None:
    lengths, supervised = _plain_lengths(synth_world, tok)
    report = _audit(load_records(synth_world / "align.json"), tok, max_length=512)
    d = report.to_dict()
    assert (d["num_records"], d["audited"], d["trained"], d["skipped"]) == (60, 60, 60, {})
    assert d["supervised_tokens"] == sum(supervised) == d["supervised_tokens_per_template"]["plain"]
    assert d["sources"]["align"]["tokens"] == sum(lengths)
    assert sorted(report.lengths) == sorted(lengths)
    assert sum(h["records"] for h in d["tokens_per_record"]["histogram"]) == 60
    assert (d["image_records"], d["image_records_fitting"], d["truncated"]) == (60, 60, 0)
    assert d["errors"] == [] and d["warnings"] == []
    report.check(strict=True)


def test_audit_counts_truncation_at_the_median(synth_world: Path, tok) -> None:
    lengths, _ = _plain_lengths(synth_world, tok)
    cut = sorted(lengths)[len(lengths) // 2]
    report = _audit(load_records(synth_world / "align.json"), tok, max_length=cut)
    over = sum(n > cut for n in lengths)
    assert 0 < over < 60
    assert report.total("truncated") == over and report.total("trained") == 60
    assert report.total("tokens") == sum(min(n, cut) for n in lengths)
    assert any("truncated to max_length" in w for w in report.warnings)


def test_audit_errors_when_no_image_fits(synth_world: Path, tok) -> None:
    report = _audit(load_records(synth_world / "align.json"), tok, max_length=K)  # bos + K image ids > K
    assert report.skipped() == {"max_length": 60}
    assert report.image_records_unfit == 60 and report.min_image_tokens == K
    assert any(f"K={K} image tokens per image" in e and f"max_length={K}" in e for e in report.errors)
    assert any("source 'align': no supervised token in 60 audited records" in e for e in report.errors)
    with pytest.raises(AuditError, match="images do not fit max_length"):
        report.check()


def test_audit_of_a_mixture_counts_per_source_and_samples_evenly(synth_world: Path, tok, tmp_path: Path) -> None:
    n_instruct = len(json.loads((synth_world / "instruct.json").read_text()))
    text_only = sum("image" not in r for r in json.loads((synth_world / "instruct.json").read_text()))
    mix = tmp_path / "mix.yaml"
    mix.write_text(yaml.safe_dump({"datasets": [
        {"json_path": str(synth_world / "align.json"), "name": "align", "sampling_strategy": "first:10"},
        {"json_path": str(synth_world / "instruct.json"), "name": "instruct", "sampling_strategy": "random:50%"}]}))
    records = load_mixture(mix, seed=3)
    full = _audit(records, tok, max_length=2048, template="vicuna_v1")
    assert {k: s.selected for k, s in full.sources.items()} == {"align": 10, "instruct": math.ceil(n_instruct / 2)}
    assert full.total("trained") == len(records) and not full.sampled
    assert full.image_records + sum(r.get("image") is None for r in records) == len(records)
    assert text_only > 0
    sampled = _audit(records, tok, max_length=2048, template="vicuna_v1", sample=20)
    assert sampled.sampled and sampled.audited == 20 and sampled.num_records == len(records)
    assert {k: s.selected for k, s in sampled.sources.items()} == {k: s.selected for k, s in full.sources.items()}
    assert sum(s.audited for s in sampled.sources.values()) == 20
