"""The reference pre-pass: cached values equal a live reference model's, the cache is keyed and rebuilt when stale,
and with LoRA the reference is the base model (adapters off)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import train.reference as reference
from instruct_data.preference import PreferenceCollator
from train.errors import DataFailure
from train.recipes import build_data, build_model
from train.strategies.registry import build_strategy


def live_logps(model, dataset, index: int) -> tuple[float, float]:
    """One pair through the model on its own (no batching, no cache): its (chosen, rejected) reply log-probs."""
    batch = PreferenceCollator(model.config.pad_token_id)([dataset[index]])
    with torch.no_grad():
        out = model.loss(batch, per_row=True)
    return -float(out.per_row[0]), -float(out.per_row[1])


def setup(cfg):
    strategy = build_strategy("single", cfg)
    model = build_model(cfg, strategy).eval()
    data = build_data(cfg, model, strategy)
    return strategy, model, data.dataset


def test_cached_reference_equals_the_live_model_and_is_reused(make_prefer_cfg, monkeypatch, capsys) -> None:
    cfg = make_prefer_cfg(schedule={"micro_batch_size": 3})  # 16 pairs in batches of 3: padding rows differ
    strategy, model, dataset = setup(cfg)
    values = reference.reference_logps(cfg, model, dataset, strategy, "fp32")
    assert values.shape == (16, 2) and np.isfinite(values).all()
    assert dataset.reference is values and dataset[5].reference == (values[5, 0], values[5, 1])
    for i in (0, 5, 15):
        assert values[i].tolist() == pytest.approx(live_logps(model, dataset, i), abs=1e-5)
    assert (values[:, 0] != values[:, 1]).all()
    files = sorted((Path(cfg.checkpoint.output_dir) / "reference_logps").glob("*.npz"))
    assert len(files) == 1

    def refuse(*_, **__):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("recomputed although the cache holds these inputs")

    monkeypatch.setattr(reference, "compute_block", refuse)
    again = reference.reference_logps(cfg, model, dataset, strategy, "fp32")
    np.testing.assert_array_equal(again, values)
    assert "read from" in capsys.readouterr().out
    monkeypatch.undo()
    # other inputs (max_length) -> another key, computed again beside the first file
    cfg.data.max_length = 240
    dataset.max_length = 240
    reference.reference_logps(cfg, model, dataset, strategy, "fp32")
    assert len(list(files[0].parent.glob("*.npz"))) == 2
    # a damaged file is recomputed, not trusted
    files[0].write_bytes(b"not a zip")
    cfg.data.max_length = dataset.max_length = 256
    np.testing.assert_array_equal(reference.reference_logps(cfg, model, dataset, strategy, "fp32"), values)


def test_lora_reference_is_the_base_model(make_prefer_cfg) -> None:
    from train.lora import apply_lora

    cfg = make_prefer_cfg(trainable={"llm_mode": "lora"}, prefer={"reference_cache": "off"})
    strategy, model, dataset = setup(cfg)
    base = [live_logps(model, dataset, i) for i in (0, 1)]
    apply_lora(model, cfg.trainable.lora)
    model.eval()  # no LoRA dropout: the live numbers are deterministic
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # adapters that change the outputs (fresh ones are zero)
            param.data.normal_(0, 0.5)
    adapted = [live_logps(model, dataset, i) for i in (0, 1)]
    assert abs(adapted[0][0] - base[0][0]) > 1e-2
    values = reference.reference_logps(cfg, model, dataset, strategy, "fp32")
    np.testing.assert_allclose(values[:2], np.array(base), rtol=0, atol=1e-4)
    assert not (Path(cfg.checkpoint.output_dir) / "reference_logps").exists()  # reference_cache: off
    assert live_logps(model, dataset, 0) == pytest.approx(adapted[0])  # adapters back on afterwards


def test_no_usable_pair_fails_loud(make_prefer_cfg, tmp_path) -> None:
    import json

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": f"b{i}", "conversations": [{"from": "human", "value": "Hi"}],
                                "chosen": "Same.", "rejected": "Same."} for i in range(4)]))
    cfg = make_prefer_cfg(data={"data_path": [str(bad)]})
    strategy, model, dataset = setup(cfg)
    with pytest.raises(DataFailure, match="no usable preference pair among 4"):
        reference.reference_logps(cfg, model, dataset, strategy, "fp32")
