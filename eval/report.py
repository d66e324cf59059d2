"""Scores JSON records, one-line markdown rows and the results table gathered from many runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HEADER = "| model | benchmark | split | metric | score | n | notes |\n|---|---|---|---|---|---|---|"


def scores_record(benchmark: str, split: str, model: str, headline: str, scores: dict[str, Any], *,
                  blank_images: bool = False, limit: int | None = None) -> dict[str, Any]:
    """The scores JSON: identity of the run, the headline metric and every metric computed."""
    if headline not in scores:
        raise KeyError(f"headline metric {headline!r} not in the scores of {benchmark}: {sorted(scores)}")
    return {"benchmark": benchmark, "split": split, "model": model, "metric": headline,
            "score": scores[headline], "n": scores.get("n"), "blank_images": blank_images, "limit": limit,
            "scores": scores}


def markdown_row(record: dict[str, Any]) -> str:
    """`| model | benchmark | split | metric | score | n | notes |` for one scores record."""
    notes = []
    if record.get("blank_images"):
        notes.append("blank images")
    if record.get("limit") is not None:
        notes.append(f"first {record['limit']}")
    return (f"| {record['model']} | {record['benchmark']} | {record['split']} | {record['metric']} | "
            f"{record['score']} | {record['n']} | {', '.join(notes)} |")


def results_table(paths: list[Path]) -> str:
    """Markdown table of every `scores.json` found under `paths` (files or folders), sorted."""
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(p.rglob("scores.json")) if p.is_dir() else [p])
    if not files:
        raise FileNotFoundError(f"no scores.json under {[str(p) for p in paths]}")
    records = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    records.sort(key=lambda r: (r["model"], r["benchmark"], r["split"], bool(r.get("blank_images"))))
    return "\n".join([HEADER, *(markdown_row(r) for r in records)])
