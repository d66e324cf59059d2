"""Exact resume: a `vlm train` process killed with SIGKILL and resumed logs the same losses as an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from train.checkpointing import list_checkpoints
from train.run_logger import read_metrics

pytestmark = pytest.mark.slow

STEPS = 24


def _write_config(make_cfg, out: Path, path: Path, packing: bool = False, strategy: str = "single") -> None:
    # dropout in the LoRA-free LLM is 0; data order, AdamW state and the schedule carry the exactness
    data = {"group_by": "modality_length", **({"packing": True, "pack_length": 1024} if packing else {})}
    cfg = make_cfg(output_dir=str(out), max_steps=STEPS, save_every=3, keep_last=2, resume="auto",
                   global_batch_size=2 * (1 + packing), micro_batch_size=1, data=data,
                   optim={"lr": 1e-3, "warmup_ratio": 0.1}, engine={"strategy": strategy})
    path.write_text(yaml.safe_dump(cfg.to_dict()))


def _cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "app.cli", "train", str(config)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize(("packing", "strategy"), [(False, "single"), (True, "single"), (True, "fsdp")],
                         ids=["unpacked", "packed", "fsdp_packed"])
def test_kill9_then_resume_gives_identical_losses(make_cfg, tmp_path, packing: bool, strategy: str) -> None:
    """Packed (4 samples a step packed into rows), the packer's state comes back with the checkpoint too. FSDP2 (one
    process): its sharded checkpoints (torch.distributed.checkpoint) resume as exactly."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _write_config(make_cfg, straight, tmp_path / "a.yaml", packing, strategy)
    _write_config(make_cfg, killed, tmp_path / "b.yaml", packing, strategy)
    subprocess.run(_cmd(tmp_path / "a.yaml"), check=True, env=_env(), capture_output=True, timeout=300)
    reference = {r["step"]: r["loss"] for r in read_metrics(straight)}
    assert sorted(reference) == list(range(1, STEPS + 1))

    proc = subprocess.Popen(_cmd(tmp_path / "b.yaml"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        # kill once a checkpoint exists and the run has gone past it (work after it is lost)
        while time.time() < deadline:
            ckpts = list_checkpoints(killed)
            steps = [r["step"] for r in _safe_metrics(killed)]
            if ckpts and steps and max(steps) > int(ckpts[-1].name.split("-")[1]) + 1:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    resumed_at = int(list_checkpoints(killed)[-1].name.split("-")[1])
    assert resumed_at < STEPS
    done = subprocess.run(_cmd(tmp_path / "b.yaml"), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stderr
    if packing:  # the exact lengths were cached by the first start and read back by the resume
        assert len(list((killed / "lengths").glob("lengths-*.npz"))) == 1
    if strategy == "fsdp":
        assert (list_checkpoints(killed)[-1] / "model_shards" / ".metadata").is_file()
    after = {r["step"]: r["loss"] for r in read_metrics(killed)}
    assert sorted(after) == list(range(1, STEPS + 1))  # the lost steps' lines were dropped, then redone
    for step in range(resumed_at + 1, STEPS + 1):
        assert after[step] == reference[step], f"step {step}: {after[step]} != {reference[step]}"


def _safe_metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows
