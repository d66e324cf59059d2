"""Torchrun harness for the multi-process tests (CPU, gloo): launcher, recipe worker (this file as a script), comparisons."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
NO_ENCODER_IN_FIT = "--no-encoder-in-fit"


def launch(script: Path, args: list[str], nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N script args` with one thread per process, no hub access, and the
    lockstep debug mode on (`train.lockstep`: ranks that run different passes or collectives stop by name).

    The repository root goes first on the workers' PYTHONPATH, so a test file run as the script imports
    `tests.train.harness` (and this checkout's packages) as the test process does."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", DS_ACCELERATOR="cpu", VLM_LOCKSTEP="1", PYTHONPATH=path,
               CUDA_VISIBLE_DEVICES="")  # gloo on CPU even on a GPU machine
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(script), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        lines = done.stderr.splitlines()
        per_rank = "\n".join("\n".join([x for x in lines if x.startswith(f"[rank{r}]")][-25:]) for r in range(nproc))
        raise AssertionError(f"torchrun failed ({done.returncode}):\n{done.stdout[-2000:]}\n{per_rank}\n"
                             f"{done.stderr[-3000:]}")
    return done


def run_ranks(cfg: Any, tmp_path: Path, name: str, *, no_encoder_in_fit: bool = False,
              nproc: int = 2) -> tuple[list[dict[str, Any]], str]:
    """Train `cfg` (a TrainConfig) under torchrun: each rank's result (losses, steps, skipped) and the run's output.

    With `no_encoder_in_fit`, a forward of the vision encoder during `Trainer.fit` fails the run on that rank."""
    cfg_path, out_path = tmp_path / f"{name}.json", tmp_path / f"{name}_out.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    done = launch(HERE, [str(cfg_path), str(out_path), *([NO_ENCODER_IN_FIT] if no_encoder_in_fit else [])],
                  nproc=nproc)
    ranks = [json.loads(Path(f"{out_path}.{rank}").read_text()) for rank in range(nproc)]
    return ranks, done.stdout + done.stderr


def run_distributed(cfg: Any, tmp_path: Path, name: str) -> dict[str, Any]:
    """Train `cfg` on 2 ranks; rank 0's losses and steps."""
    return run_ranks(cfg, tmp_path, name)[0][0]


def final_weights(output_dir: str | Path) -> dict[str, torch.Tensor]:
    """The trainable weights of the run's last checkpoint."""
    step_dirs = sorted((Path(output_dir) / "checkpoints").glob("step-*"))
    return load_file(str(step_dirs[-1] / "trainable.safetensors"))


def assert_same_run(single: Any, multi: dict[str, Any], dir_single: str, dir_multi: str, *, loss_rtol: float,
                    weight_atol: float) -> None:
    """A distributed run (`multi`, from `run_distributed`) took the steps, losses and final weights of `single`."""
    assert multi["steps"] == single.steps
    assert multi["losses"] == pytest.approx(single.losses, rel=loss_rtol, abs=0)
    ws, wm = final_weights(dir_single), final_weights(dir_multi)
    assert ws.keys() == wm.keys() and ws
    for key in ws:
        torch.testing.assert_close(wm[key], ws[key], rtol=0, atol=weight_atol, msg=key)


def refuse_encoder_during_fit() -> None:
    """From the first step to the end of `fit`, any forward of the vision encoder raises on the rank that runs it."""
    import train.loop

    real_fit = train.loop.Trainer.fit

    def fit(self):  # noqa: ANN001, ANN202
        encoder = self.strategy.unwrap(self.model).vision_encoder

        def refuse(*_):  # noqa: ANN002, ANN202
            raise AssertionError(f"rank {self.strategy.rank} ran the vision encoder during training")

        handle = encoder.register_forward_pre_hook(refuse)
        try:
            return real_fit(self)
        finally:
            handle.remove()

    train.loop.Trainer.fit = fit


def worker(config_json: str, out_json: str, no_encoder_in_fit: bool = False) -> None:
    """Inside torchrun: run the recipe; each rank writes its result to OUT.<rank> (skips are counted per rank)."""
    from train.config import config_from_dict
    from train.recipes import run

    if no_encoder_in_fit:
        refuse_encoder_during_fit()
    result = run(config_from_dict(json.loads(Path(config_json).read_text())))
    Path(f"{out_json}.{os.environ.get('RANK', '0')}").write_text(
        json.dumps({"losses": result.losses, "steps": result.steps, "skipped": result.skipped}))


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], no_encoder_in_fit=NO_ENCODER_IN_FIT in sys.argv[3:])
    # The run is done and its result written: leave without the interpreter's teardown, where a library thread
    # still alive after the process group closed has, under heavy CPU load, aborted a finished rank (SIGABRT,
    # "terminate called without an active exception"), failing a run whose training had completed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
