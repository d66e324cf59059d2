"""Smoke test of bench/vs_hf.py --quick: one JSON line per phase with the promised keys, all finite (figures not
asserted: they depend on the machine)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "vs_hf.py"
KEYS = ["phase", "ratio_tokens_per_s", "ratio_peak_memory", "ours_tokens_per_s", "hf_tokens_per_s", "padding_ratio",
        "mfu"]


@pytest.mark.parametrize("packing", [False, True], ids=["unpacked", "packed"])
def test_quick_run_prints_one_finite_line_per_phase(packing: bool) -> None:
    """Packed, ours trains the samples in one row and HF Llava unpadded rows: still the same loss."""
    # large blocks mmapped (returned to the OS when freed), so the in-process peak of each side is its own
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MALLOC_MMAP_THRESHOLD_": "1048576"}
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", *(["--packing"] if packing else [])],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [line["phase"] for line in lines] == [1, 2]
    for line in lines:
        for key in KEYS:
            assert isinstance(line[key], (int, float)) and math.isfinite(line[key]), (key, line[key])
        assert line["ours_tokens_per_s"] > 0 and line["hf_tokens_per_s"] > 0 and 0 <= line["padding_ratio"] < 1
        assert line["loss_rel_gap"] < 1e-4  # same weights and samples: the same loss
        assert line["packing"] is packing and (line["padding_ratio"] == 0.0 if packing else True)
        assert line["ours_syncs_per_step"] is None and "CUDA-only" in line["sync_count"]  # counted on CUDA only
