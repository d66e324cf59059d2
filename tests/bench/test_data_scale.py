"""bench/data_scale.py: the generator's shape, and a small run printing one JSON line per measurement."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from bench.data_scale import SHORT, make_record, make_words

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "data_scale.py"


def test_records_are_shaped_like_llava_mix665k() -> None:
    rng = random.Random(0)
    words = make_words(rng)
    recs = [make_record(i, rng, words, 50) for i in range(4000)]
    text = [r for r in recs if "image" not in r]
    assert 0.04 < len(text) / len(recs) < 0.08
    assert all(len(r["conversations"]) <= 16 for r in text)
    vqa = [r for r in recs if "image" in r]
    turns = [len(r["conversations"]) // 2 for r in vqa]
    assert min(turns) == 1 and max(turns) == 10
    short = sum(SHORT in r["conversations"][0]["value"] for r in vqa) / len(vqa)
    assert 0.45 < short < 0.55
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in vqa)


def test_small_run_prints_the_lines(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--records", "300", "--images", "10", "--vocab", "600",
                          "--only", "index,validate,audit,balance", "--workers", "2", "--dir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [(r["what"], r.get("workers")) for r in lines[:6]] == [
        ("generate", None), ("index", None), ("validate", 1), ("validate", 2), ("audit", 1), ("audit", 2)]
    assert lines[1]["index_bytes_per_record"] > 0
    assert all(r["rc"] == 0 and r["wall_s"] > 0 and r["peak_rss_mb"] > 0 for r in lines[2:6])
    balance = {(r["ranks"], r["data"], r["balance"]): r for r in lines[6:]}
    assert sorted(balance) == [(ranks, data, how) for ranks in (2, 8) for data in ("anyres", "pad")
                               for how in ("cost", "count")]
    for ranks, data, _ in balance:  # by cost: every rank's LLM tokens within a few percent, and never worse
        cost, count = balance[ranks, data, "cost"], balance[ranks, data, "count"]
        assert cost["steps"] == count["steps"] > 0 and cost["token_imbalance_mean"] <= count["token_imbalance_mean"]
