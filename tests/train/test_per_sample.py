"""Per-record losses from the chunked head: they add up to the step loss, packed equals unpacked, per-group gradient
norms add up to the total, quarantined records leave their batches, the spike detector's verdicts."""
from __future__ import annotations

import math

import pytest
import torch

from tests.train.test_step import _batch, _setup
from train.per_sample import gather, record_losses, table, wanted
from train.quarantine import quarantined_ids
from train.spikes import SpikeDetector, group_norms_reader, part_name
from train.step import train_step


def test_record_losses_add_up_to_the_step_loss(make_cfg) -> None:
    """Two micro-batches (image and text-only records): each record's tokens and loss sum, weighted by tokens, give
    the step's loss; the ids are the batches' in order; per-group gradient norms make up the total norm."""
    cfg = make_cfg()
    inputs, model, data = _setup(cfg)
    inputs.group_norms = group_norms_reader(model)
    window = [_batch(data, [0, 4]), _batch(data, [1, 9])]  # 4 and 9 are text-only
    ids = [rid for b in window for rid in b.ids]
    outcome = train_step(inputs, window)
    assert [r.id for r in outcome.samples] == ids == ["r0", "t4", "r1", "t9"]
    assert sum(r.tokens for r in outcome.samples) == outcome.supervised_tokens > 0
    assert all(r.tokens > 0 for r in outcome.samples)
    total = sum(r.loss_sum for r in outcome.samples) / sum(r.tokens for r in outcome.samples)
    assert total == pytest.approx(outcome.loss, rel=1e-6)
    assert len({round(r.loss, 6) for r in outcome.samples}) == 4  # not one number spread over the records
    assert outcome.samples[0].images and outcome.samples[0].images[0].endswith(".png")
    assert outcome.samples[1].images == []
    norms = outcome.group_grad_norms
    assert norms is not None and set(norms) == {"projector", "llm"}  # instruct: vision frozen
    assert math.sqrt(sum(v * v for v in norms.values())) == pytest.approx(outcome.grad_norm, rel=1e-5)
    assert "mean loss" in table(outcome.samples) and gather(inputs.strategy, outcome.samples) == outcome.samples


def test_packed_per_record_losses_equal_unpacked(make_cfg) -> None:
    """Three records packed into one row (a seam between each): each record's tokens and loss sum equal the ones
    of the same records unpacked, so packing never moves a token's loss to its neighbour."""
    from train.recipes import build_data, build_model, prepare_model
    from train.strategies.single import SingleProcessStrategy

    cfg = make_cfg(data={"packing": True, "pack_length": 1024, "max_length": 256})
    model = build_model(cfg)
    prepare_model(model, cfg)
    from vlm.packing import use_varlen_attention

    use_varlen_attention(model.llm)
    data = build_data(cfg, model, SingleProcessStrategy())
    packed, plain = data.check_pair([(0, 4, 1), (2,)])
    assert packed.sample_lengths is not None and len(packed.sample_lengths[0]) == 3
    with torch.no_grad():
        got = [record_losses(packed, model.loss(packed).per_token), record_losses(plain, model.loss(plain).per_token)]
    (tokens_packed, sums_packed), (tokens_plain, sums_plain) = got
    assert packed.ids == plain.ids and tokens_packed == tokens_plain and min(tokens_plain) > 0
    torch.testing.assert_close(sums_packed, sums_plain, rtol=1e-5, atol=1e-5)


def test_a_quarantined_record_leaves_its_batch_and_is_counted_not_failed(make_cfg, tmp_path) -> None:
    listed = tmp_path / "bad_ids.txt"
    listed.write_text("# from a spike report\nr1\n")
    cfg = make_cfg(data={"quarantine": ["t4"], "quarantine_file": str(listed), "max_skip_ratio": 0.0,
                         "skip_warmup": 1})
    assert quarantined_ids(cfg.data) == {"t4", "r1"}
    inputs, _, data = _setup(cfg)
    inputs.quarantine = quarantined_ids(cfg.data)
    outcome = train_step(inputs, [_batch(data, [0, 4]), _batch(data, [1, 2])])
    assert [r.id for r in outcome.samples] == ["r0", "r2"] and outcome.records == 2
    assert inputs.skips.counts == {"quarantine": 2}  # no DataFailure although max_skip_ratio=0
    assert [rid for rid, _ in inputs.skips.log] == ["t4", "r1"]


def test_the_detector_flags_jumps_up_only_after_its_history() -> None:
    detector = SpikeDetector("zscore", threshold=6.0, window=20, min_history=5)
    losses = [2.0, 1.9, 1.95, 1.85, 1.9, 1.88, 1.86]
    assert all(detector.observe({"loss": x, "grad_norm": 1.0}) == {} for x in losses)
    spiked = detector.observe({"loss": 4.0, "grad_norm": 1.01})
    assert list(spiked) == ["loss"] and spiked["loss"] > 6
    assert detector.observe({"loss": 0.5, "grad_norm": 1.0}) == {}  # a drop is no spike
    ratio = SpikeDetector("ratio", threshold=3.0, window=4, min_history=3)
    assert [bool(ratio.observe({"grad_norm": x})) for x in (1.0, 1.0, 1.0, 2.9, 9.0)] == [False] * 4 + [True]
    falling = SpikeDetector("zscore", threshold=6.0, window=50, min_history=10)  # a trend is not noise
    assert not any(falling.observe({"loss": 6.0 * 0.85 ** k + 0.02 * (-1) ** k}) for k in range(30))
    assert list(falling.observe({"loss": 1.0})) == ["loss"]  # far above the ~0.06 the loss had fallen to
    early = SpikeDetector("zscore", threshold=6.0, window=20, min_history=5)
    assert early.observe({"loss": 1.0}) == {} and early.observe({"loss": 100.0}) == {}  # too little history


def test_group_names() -> None:
    assert [part_name(n) for n in ("vision_encoder.encoder.layers.1.mlp.fc1.weight", "projector.linear_1.bias",
                                   "llm.model.embed_tokens.weight",
                                   "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight")] == \
        ["vision", "projector", "llm", "lora"]


def test_per_sample_modes() -> None:
    assert [wanted("sampled", 3, s) for s in range(1, 7)] == [False, False, True, False, False, True]
    assert wanted("every_step", 100, 7) and not wanted("off", 1, 1)


def test_config_rules(make_cfg, tmp_path) -> None:
    from train.errors import ConfigError
    from train.rules import check_config

    with pytest.raises(ConfigError, match="min_history"):
        check_config(make_cfg(log={"spikes": {"window": 5, "min_history": 8}}))
    with pytest.raises(ConfigError, match="threshold"):
        check_config(make_cfg(log={"spikes": {"method": "ratio", "threshold": 1.0}}))
    with pytest.raises(ConfigError, match="quarantine_file"):
        check_config(make_cfg(data={"quarantine_file": str(tmp_path / "missing.txt")}))
    (tmp_path / "ids.txt").write_text("r1\n")
    with pytest.raises(ConfigError, match="give it as data.quarantine_file"):
        check_config(make_cfg(data={"quarantine": str(tmp_path / "ids.txt")}))  # a path where ids belong
    with pytest.raises(ConfigError, match="per_sample"):
        make_cfg(log={"per_sample": "sometimes"})


QUARANTINED = ["r0", "r1", "r2", "r3", "r5", "r6", "r7"]


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", pytest.param("zero3", marks=pytest.mark.slow)])
def test_two_ranks_gather_every_record_to_rank_0(make_cfg, tmp_path, strategy: str) -> None:
    """2 processes (DDP; ZeRO-3, whose padded head calls give no per-position loss): each step's rows in
    per_sample.jsonl hold the records of both ranks (8 a step), and they make up the step's logged loss and
    supervised tokens. Quarantined records leave the rows of whichever rank drew them."""
    import json
    from pathlib import Path

    from tests.train.harness import run_ranks
    from train.run_logger import read_metrics

    out = tmp_path / strategy
    engine = {"strategy": "ddp"} if strategy == "ddp" else {
        "strategy": "deepspeed", "deepspeed_config": str(Path(__file__).parents[2] / "configs/deepspeed/zero3.json")}
    cfg = make_cfg(global_batch_size=8, micro_batch_size=2, max_steps=2, engine=engine, output_dir=str(out),
                   log={"per_sample": "every_step"}, data={"quarantine": QUARANTINED})
    ranks, _ = run_ranks(cfg, tmp_path, strategy)
    dropped = sum(rank["skipped"].get("quarantine", 0) for rank in ranks)
    rows = [json.loads(line) for line in (out / "per_sample.jsonl").read_text().splitlines()]
    assert dropped > 0 and len(rows) + dropped == 16 and not {r["id"] for r in rows} & set(QUARANTINED)
    for record in read_metrics(out):
        mine = [r for r in rows if r["step"] == record["step"]]
        assert len(mine) == record["samples"] and len({r["id"] for r in mine}) == len(mine)
        assert sum(r["supervised_tokens"] for r in mine) == record["supervised_tokens"]
        weighted = sum(r["loss_sum"] for r in mine) / record["supervised_tokens"]
        assert weighted == pytest.approx(record["loss"], rel=1e-6)
