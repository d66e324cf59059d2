"""ZeRO-3 (2 CPU processes) with gradient checkpointing (HF's non-reentrant recompute around the decoder layers,
plus the loss's own chunked head checkpoint) and a checkpoint every step, which gathers only the trainable
parameters: same losses and weights as one process."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.train import harness

HERE = Path(__file__).resolve()
ZERO3 = HERE.parents[2] / "configs" / "deepspeed" / "zero3.json"



@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_with_gradient_checkpointing_matches_one_process(make_cfg, tmp_path: Path) -> None:
    from train.recipes import run

    common = dict(global_batch_size=8, max_steps=2, save_every=1, gradient_checkpointing=True)
    single_cfg = make_cfg(micro_batch_size=4, output_dir=str(tmp_path / "single"), **common)
    single = run(single_cfg)
    z3_cfg = make_cfg(micro_batch_size=2, strategy="deepspeed", deepspeed_config=str(ZERO3),
                      output_dir=str(tmp_path / "z3"), **common)
    multi = harness.run_distributed(z3_cfg, tmp_path, "z3")
    harness.assert_same_run(single, multi, single_cfg.checkpoint.output_dir, z3_cfg.checkpoint.output_dir, loss_rtol=1e-5,
                            weight_atol=2e-5)
