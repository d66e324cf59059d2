"""bench/gpu_check.sh rehearsed on the CPU: GPU-only steps refused by name with the reason, a CPU-able step run,
one JSON line per step on stdout and in results.jsonl."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


def test_cpu_rehearsal_refuses_gpu_steps_by_name(tmp_path: Path) -> None:
    import sys

    env = {**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path), "--steps", "env,qlora,export,vs_hf_packing"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert [x["step"] for x in lines] == ["env", "qlora", "export", "vs_hf_packing"]
    assert lines == [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    by = {x["step"]: x for x in lines}
    assert by["env"]["status"] == "pass" and by["env"]["torch"] == torch.__version__
    for gpu_only in ("qlora", "vs_hf_packing"):
        assert by[gpu_only]["status"] == "refused" and "needs a CUDA GPU" in by[gpu_only]["reason"]
    assert by["export"]["status"] == "pass" and "config.json" in by["export"]["files"]
    assert all(isinstance(x["seconds"], float) for x in lines)
