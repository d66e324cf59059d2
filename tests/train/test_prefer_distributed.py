"""The `prefer` recipe on 2 processes (DDP, ZeRO-3; gloo on CPU) gives one process's losses and weights: the
reference pre-pass shares the records between ranks (ZeRO-3: every rank runs the same forwards) and each step's
DPO loss is averaged over the pairs of all ranks."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.harness import REPO, assert_same_run, run_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.mark.parametrize("engine", ["ddp", "zero3"])
def test_two_processes_match_one(engine: str, make_prefer_cfg, tmp_path: Path) -> None:
    from train.recipes import run

    common: dict = dict(global_batch_size=8, max_steps=3, save_every=0)
    single_cfg = make_prefer_cfg(micro_batch_size=4, output_dir=str(tmp_path / "single"), **common)
    single = run(single_cfg)
    strategy = {"strategy": "ddp"} if engine == "ddp" else {
        "strategy": "deepspeed", "deepspeed_config": str(REPO / "configs" / "deepspeed" / "zero3.json")}
    multi_cfg = make_prefer_cfg(micro_batch_size=2, output_dir=str(tmp_path / engine), **strategy, **common)
    ranks, log = run_ranks(multi_cfg, tmp_path, engine)
    assert "reference log-probabilities of 16 of 16 pair(s) computed" in log
    # rounding: the pre-pass batches pairs 2 at a time instead of 4 (padding), gradients reduce in another order
    assert_same_run(single, ranks[0], single_cfg.checkpoint.output_dir, multi_cfg.checkpoint.output_dir,
                    loss_rtol=1e-5, weight_atol=2e-5)
    assert ranks[1]["losses"] == ranks[0]["losses"]
