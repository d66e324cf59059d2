"""DDP under torchrun (2 CPU processes, gloo) through the real recipe: same losses and weights as one process."""
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


def launch(script: Path, args: list[str], nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N script args` with one thread per process and no hub access."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", DS_ACCELERATOR="cpu",
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


def run_worker(config_json: str, out_json: str) -> None:
    """Entry point inside torchrun: run the recipe, rank 0 writes the losses."""
    from train.config import config_from_dict
    from train.recipes import run

    cfg = config_from_dict(json.loads(Path(config_json).read_text()))
    result = run(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(out_json).write_text(json.dumps({"losses": result.losses, "steps": result.steps}))


def final_weights(output_dir: str | Path) -> dict[str, torch.Tensor]:
    step_dirs = sorted((Path(output_dir) / "checkpoints").glob("step-*"))
    return load_file(str(step_dirs[-1] / "trainable.safetensors"))


def run_distributed(cfg: Any, tmp_path: Path, name: str) -> dict[str, Any]:
    cfg_path, out_path = tmp_path / f"{name}.json", tmp_path / f"{name}_out.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    launch(HERE, [str(cfg_path), str(out_path)])
    return json.loads(out_path.read_text())


def assert_same_run(single: Any, multi: dict[str, Any], dir_single: str, dir_multi: str, *, loss_rtol: float,
                    weight_atol: float) -> None:
    assert multi["steps"] == single.steps
    assert multi["losses"] == pytest.approx(single.losses, rel=loss_rtol, abs=0)
    ws, wm = final_weights(dir_single), final_weights(dir_multi)
    assert ws.keys() == wm.keys() and ws
    for key in ws:
        torch.testing.assert_close(wm[key], ws[key], rtol=0, atol=weight_atol, msg=key)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True], ids=["unpacked", "packed"])
def test_ddp_two_processes_match_one(make_cfg, tmp_path: Path, packing: bool) -> None:
    """Instruct (LLM + projector train, text-only micro-batches included), 2 accumulation steps per rank.

    One process with micro-batch 4 sees exactly the samples of 2 ranks x micro-batch 2 at every step
    (the sampler cuts global micro-steps of world x micro samples), so only the reduction order differs.
    Packed, each rank packs its share of the step (rows differ from one process's), the samples do not.
    """
    from train.recipes import run

    common: dict[str, Any] = dict(global_batch_size=8, max_steps=3, save_every=0)
    if packing:
        common["data"] = {"packing": True, "pack_length": 1024}
    single_cfg = make_cfg(micro_batch_size=4, output_dir=str(tmp_path / "single"), **common)
    single = run(single_cfg)
    ddp_cfg = make_cfg(micro_batch_size=2, strategy="ddp", output_dir=str(tmp_path / "ddp"), **common)
    multi = run_distributed(ddp_cfg, tmp_path, "ddp")
    # Gloo sums two fp32 gradients in another order than autograd's accumulation: ~1e-7 relative.
    assert_same_run(single, multi, single_cfg.checkpoint.output_dir, ddp_cfg.checkpoint.output_dir, loss_rtol=1e-5, weight_atol=1e-5)
    # The final model was saved once (rank 0) and loads as a full model.
    from vlm.model import VisionLanguageModel

    loaded = VisionLanguageModel.load(ddp_cfg.checkpoint.output_dir)
    trained = final_weights(ddp_cfg.checkpoint.output_dir)
    params = dict(loaded.named_parameters())
    for key, value in trained.items():
        torch.testing.assert_close(params[key].detach(), value, rtol=0, atol=0, msg=key)


def test_ddp_strategy_single_process_fallback() -> None:
    """Without torchrun's environment DDP degrades to one plain process (no wrapper, rank 0 of 1)."""
    from train.strategies.ddp import DDPStrategy

    if "WORLD_SIZE" in os.environ:
        pytest.skip("running under torchrun")
    strategy = DDPStrategy()
    model = torch.nn.Linear(3, 1)
    wrapped, opt = strategy.setup(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    assert wrapped is model and (strategy.rank, strategy.world_size) == (0, 1)
    with strategy.no_sync(wrapped):
        strategy.backward(wrapped(torch.ones(1, 3)).sum())
    norm = strategy.clip_and_step(0.5)
    assert norm == pytest.approx(2.0)  # grad = [1, 1, 1, 1] (weights and bias)
    assert strategy.all_reduce_sum(torch.tensor([2.0])).item() == 2.0


if __name__ == "__main__":
    run_worker(sys.argv[1], sys.argv[2])
