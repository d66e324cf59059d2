"""Process-group helpers: torchrun's environment read strictly, single-process no-ops, collectives over 2 gloo ranks."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.train.harness import launch
from train import distributed


def test_single_process_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    env = distributed.init_distributed()
    assert (env.rank, env.world_size, env.is_main, env.distributed) == (0, 1, True, False)
    assert env.device == torch.device("cpu")
    assert distributed.all_reduce_sum(torch.tensor([2.5])).item() == 2.5
    distributed.barrier()  # nothing to wait for


def test_bad_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        distributed.read_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 WORLD_SIZE=2"):
        distributed.read_env()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        distributed.read_env()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="'nccl' needs CUDA"):
            distributed.init_distributed("nccl")


def _worker(out: str) -> None:
    env = distributed.init_distributed()
    assert env.backend == "gloo"
    total = distributed.all_reduce_sum(torch.tensor([env.rank + 1.0]))
    distributed.barrier()
    Path(f"{out}.{env.rank}").write_text(json.dumps({"sum": total.item()}))
    distributed.destroy()


@pytest.mark.distributed
def test_collectives_over_two_gloo_processes(tmp_path: Path) -> None:
    out = tmp_path / "result"
    launch(Path(__file__), [str(out)], timeout=120)  # fails with each rank's last lines
    for rank in (0, 1):
        got = json.loads(Path(f"{out}.{rank}").read_text())
        assert got["sum"] == 3.0


if __name__ == "__main__":
    _worker(sys.argv[1])


def test_a_missing_gpu_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    from train.rules import precision_on

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "CUDA_VISIBLE_DEVICES is empty" in distributed.cuda_unavailable_reason()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert "built for CUDA 13.0" in distributed.cuda_unavailable_reason()
    assert "driver older" in distributed.cuda_unavailable_reason()
    with pytest.raises(ValueError, match=r"precision=bf16 needs a GPU.*built for CUDA 13\.0.*nvidia-smi"):
        precision_on("bf16", torch.device("cpu"))
    monkeypatch.setattr(torch.version, "cuda", None)
    assert distributed.cuda_unavailable_reason() == "this torch is a CPU-only build"
