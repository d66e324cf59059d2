"""The `prefer` recipe end to end on the tiny world: DPO learns the pairs, resumes exactly, runs with LoRA and the
feature cache, and stops on data with no usable pair."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from instruct_data.audit import AuditError
from train.errors import exit_code
from train.recipes import run
from train.run_logger import read_metrics

pytestmark = pytest.mark.slow


def test_dpo_loss_falls_and_reward_accuracy_rises(make_prefer_cfg, tmp_path: Path) -> None:
    """16 pairs (the right colour chosen, the next colour rejected), 12 steps of 4 pairs at lr 1e-3."""
    cfg = make_prefer_cfg(schedule={"max_steps": 12}, output_dir=str(tmp_path / "run"))
    result = run(cfg)
    rows = read_metrics(cfg.checkpoint.output_dir)
    assert result.steps == 12 and len(rows) == 12
    # the policy starts as the reference: every pair's loss is log 2, no reward either way
    assert rows[0]["loss"] == pytest.approx(0.6931472, abs=1e-6) and rows[0]["reward_margin"] == 0.0
    first, last = rows[:3], rows[-3:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(last, "loss") < mean(first, "loss") - 0.1
    assert mean(last, "reward_accuracy") > mean(first, "reward_accuracy") + 0.3
    assert mean(last, "reward_margin") > 0.1
    assert rows[-1]["reward_chosen"] > rows[-1]["reward_rejected"]
    assert rows[0]["samples"] == 4.0  # pairs, not rows


def test_resume_continues_exactly(make_prefer_cfg, tmp_path: Path) -> None:
    """A run resumed from step 2 in a fresh directory recomputes its reference from `init_from` (before the
    checkpoint's weights load) and logs the uninterrupted run's losses and rewards."""
    common = dict(schedule={"max_steps": 4})
    full_cfg = make_prefer_cfg(save_every=2, output_dir=str(tmp_path / "full"), **common)
    run(full_cfg)
    resumed_cfg = make_prefer_cfg(resume=str(tmp_path / "full" / "checkpoints" / "step-00000002"),
                                  output_dir=str(tmp_path / "resumed"), **common)
    resumed = run(resumed_cfg)
    full = read_metrics(full_cfg.checkpoint.output_dir)
    again = read_metrics(resumed_cfg.checkpoint.output_dir)
    assert resumed.losses == [r["loss"] for r in full[2:]]
    assert [r["reward_margin"] for r in again[-2:]] == [r["reward_margin"] for r in full[2:]]


def test_lora_with_the_feature_cache(make_prefer_cfg, tmp_path: Path) -> None:
    """LoRA (reference = adapters off) on cached vision features: trains, and the second run reads the reference."""
    cfg = make_prefer_cfg(trainable={"llm_mode": "lora"}, feature_cache={"enabled": True},
                          schedule={"max_steps": 3}, optim={"lr": 5e-3}, output_dir=str(tmp_path / "lora"))
    result = run(cfg)
    assert result.steps == 3 and result.losses[0] == pytest.approx(0.6931472, abs=1e-6)
    assert result.losses[-1] != result.losses[0]
    assert len(list((tmp_path / "lora" / "reference_logps").glob("*.npz"))) == 1
    assert (tmp_path / "lora" / "lora_adapter").is_dir()


def test_no_usable_pair_stops_with_exit_4(make_prefer_cfg, tmp_path: Path, capsys) -> None:
    """Identical replies: the pre-flight audit skips every pair, naming them, and the run stops before any weight."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": f"same{i}", "conversations": [{"from": "human", "value": "Hi"}],
                                "chosen": "Hello.", "rejected": "Hello."} for i in range(4)]))
    cfg = make_prefer_cfg(data={"data_path": [str(bad)]}, output_dir=str(tmp_path / "bad"))
    with pytest.raises(AuditError, match="no supervised token in 4 audited records") as err:
        run(cfg)
    assert exit_code(err.value) == 4
    assert "'same0': record: rejected: identical to 'chosen'" in capsys.readouterr().out
