"""bench/vs_trl.py's equality check on a tiny VLM: our prefer step and TRL's DPOTrainer see the same tokens, give
the same policy reply log-probabilities and the same DPO loss, before and after one identical SGD update."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("trl")

from bench.vs_trl import OursSide, TrlSide, equality, export, make_pairs  # noqa: E402
from vlm.testing import make_tiny_vlm  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize(("label_smoothing", "ref", "compact"), [(0.0, "live", False), (0.2, "precomputed", True)],
                         ids=["dpo-live-ref", "conservative-precomputed-ref-compact-head"])
def test_ours_and_trl_agree_on_logps_and_loss(tmp_path: Path, label_smoothing: float, ref: str, compact: bool
                                              ) -> None:
    """Both TRL reference modes and both of its head paths; label smoothing through TRL's weighted losses."""
    make_tiny_vlm(tmp_path / "parts", arch="qwen2").save(tmp_path / "ckpt")
    export(tmp_path)
    make_pairs(tmp_path, count=3, image_size=32, reply_words=(2, 9))
    trl_side = TrlSide(tmp_path, "cpu", beta=0.5, label_smoothing=label_smoothing, ref=ref, compact=compact)
    ours = OursSide(tmp_path, "cpu", beta=0.5, label_smoothing=label_smoothing)
    out = equality(trl_side, ours)
    assert out["tokens_equal"] and out["trainable_equal"]
    assert out["logps_max_rel_gap"] < 1e-5
    # policy = reference before any update: the loss is log 2 on both sides, whatever the smoothing
    assert out["trl_loss"] == pytest.approx(math.log(2), abs=1e-6) and out["loss_abs_gap"] < 1e-5
    # after the same SGD update the policy has moved (the loss left log 2), identically on both sides
    assert abs(out["ours_loss_after_sgd"] - math.log(2)) > 1e-3
    assert out["loss_after_sgd_abs_gap"] < 1e-5
