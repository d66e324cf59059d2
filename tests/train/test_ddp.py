"""DDP under torchrun (2 CPU processes, gloo) through the real recipe: same losses and weights as one process."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.train.harness import assert_same_run, final_weights, run_distributed


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
    assert strategy.unwrap(wrapped) is model and (strategy.rank, strategy.world_size) == (0, 1)
    assert not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    with strategy.no_sync(wrapped):
        strategy.backward(model(torch.ones(1, 3)).sum())
    norm = strategy.clip_and_step(0.5)
    assert norm == pytest.approx(2.0)  # grad = [1, 1, 1, 1] (weights and bias)
    assert strategy.all_reduce_sum(torch.tensor([2.0])).item() == 2.0
