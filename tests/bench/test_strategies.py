"""bench/strategies.py: every variant is a valid training config for its strategy (the runs themselves take minutes)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.strategies import VARIANTS, train_config


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_is_a_valid_config(name: str, tmp_path: Path) -> None:
    from train.config import config_from_dict
    from train.rules import check_config

    cfg = config_from_dict(train_config(tmp_path / "base", tmp_path / "d.json", tmp_path / "images", tmp_path / "out",
                                        4, VARIANTS[name], gpu=False))
    check_config(cfg)
    assert cfg.engine.strategy == VARIANTS[name]["strategy"] and cfg.engine.precision == "fp32"
    assert (cfg.schedule.global_batch_size, cfg.schedule.micro_batch_size, cfg.schedule.max_steps) == (8, 2, 4)
