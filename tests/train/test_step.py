"""Tests for train.step.train_step on real tiny-VLM micro-batches, without a training run: the passes every
micro-batch gets (empty ones too), the nothing-supervised step, skips, non-finite stops, image skips."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from train.guards import DataFailure, DataGuard
from train.optim import build_optimizer
from train.recipes import build_data, build_model, prepare_model
from train.errors import NonFiniteLossError
from train.step import SkipTally, StepInputs, train_step
from train.strategies.single import SingleProcessStrategy
from vlm.batch import Batch


class CountingStrategy(SingleProcessStrategy):
    """One process; counts forward passes (of the wrapped model), backward passes and optimizer steps."""

    def __init__(self) -> None:
        super().__init__()
        self.forwards = self.backwards = self.steps = 0

    def setup(self, model, optimizer_factory):  # noqa: ANN001, ANN201
        wrapped, optimizer = super().setup(model, optimizer_factory)
        wrapped.register_forward_pre_hook(lambda *_: setattr(self, "forwards", self.forwards + 1))
        return wrapped, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        self.backwards += 1
        super().backward(loss)

    def clip_and_step(self, max_norm: float) -> float:
        self.steps += 1
        return super().clip_and_step(max_norm)


def _setup(cfg, feature_cache: bool = False):  # noqa: ANN001, ANN202
    from train.feature_source import feature_source

    strategy = CountingStrategy()
    model = build_model(cfg)
    prepare_model(model, cfg)
    features = feature_source(cfg, model, strategy) if feature_cache else None
    data = build_data(cfg, model, strategy, load_pixels=features is None)
    wrapped, _ = strategy.setup(model, lambda m: build_optimizer(m, cfg.optim))
    wrapped.train()
    inputs = StepInputs(wrapped, strategy, "fp32", DataGuard(cfg.data, model.config.num_image_tokens),
                        SkipTally({}), pad_token_id=int(model.config.pad_token_id),
                        max_grad_norm=cfg.optim.max_grad_norm, strict=cfg.data.guards.strict, features=features)
    return inputs, model, data


def _batch(data, indices) -> Batch:  # noqa: ANN001
    return data.collate([data.dataset[i] for i in indices])


def _no_rows() -> Batch:
    """What the collator gives for a micro-batch whose records were all skipped."""
    empty = torch.zeros(0, 0, dtype=torch.long)
    return Batch(empty, empty)


def _weights(model) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_an_empty_micro_batch_gets_a_zero_loss_pass_and_changes_nothing(make_cfg) -> None:
    """Every micro-batch runs one forward and one backward, an empty one too (ZeRO communicates on each), and
    the update equals the step without it."""
    cfg = make_cfg()
    with_empty, model_a, data = _setup(cfg)
    torch.manual_seed(0)
    outcome = train_step(with_empty, [None, _batch(data, [0, 1]), _no_rows()])
    strategy = with_empty.strategy
    assert (strategy.forwards, strategy.backwards, strategy.steps) == (3, 3, 1)
    alone, model_b, data_b = _setup(cfg)
    torch.manual_seed(0)
    reference = train_step(alone, [_batch(data_b, [0, 1])])
    assert outcome.loss == pytest.approx(reference.loss, rel=1e-6) and math.isfinite(outcome.loss)
    assert outcome.supervised_tokens == reference.supervised_tokens > 0
    assert (outcome.records, outcome.rows) == (2, 2) and len(outcome.batches) == 1
    for name, value in _weights(model_a).items():
        torch.testing.assert_close(value, _weights(model_b)[name], rtol=0, atol=0, msg=name)


def test_a_step_without_supervised_tokens_runs_no_pass_and_steps_nothing(make_cfg) -> None:
    cfg = make_cfg()
    inputs, model, _ = _setup(cfg)
    before = _weights(model)
    outcome = train_step(inputs, [None, None])
    assert math.isnan(outcome.loss) and math.isnan(outcome.grad_norm) and outcome.supervised_tokens == 0
    assert (inputs.strategy.forwards, inputs.strategy.backwards, inputs.strategy.steps) == (0, 0, 0)
    assert all(torch.equal(before[n], v) for n, v in _weights(model).items())
    assert inputs.guard.steps == 1 and inputs.guard.supervised == 0


def test_the_guard_stops_before_any_forward(make_cfg) -> None:
    """`data.fail_no_supervised_after` micro-batches without a supervised token stop the run, naming the skips."""
    cfg = make_cfg(data={"fail_no_supervised_after": 2})
    inputs, _, data = _setup(cfg)
    skipped = _no_rows()
    skipped.skipped = [("r9", "image: file not found")]
    with pytest.raises(DataFailure, match="no supervised token.*'r9': image: file not found"):
        no_rows = _no_rows()
        no_rows.skipped = skipped.skipped
        train_step(inputs, [None, no_rows])
    assert inputs.strategy.forwards == 0
    assert inputs.skips.counts == {"image": 1} and inputs.skips.log == [("r9", "image: file not found")]


def test_a_non_finite_loss_stops_before_the_optimizer_steps(make_cfg) -> None:
    cfg = make_cfg()
    inputs, model, data = _setup(cfg)
    with torch.no_grad():
        model.llm.get_output_embeddings().weight.fill_(float("nan"))
    before = _weights(model)
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        train_step(inputs, [_batch(data, [0, 1])])
    assert inputs.strategy.steps == 0
    assert all(torch.equal(before[n], v) or torch.isnan(v).any() for n, v in _weights(model).items())


def test_a_text_only_batch_in_align_still_runs_backward(make_cfg) -> None:
    """In align only the projector trains: a text-only micro-batch's loss has no graph, and the step links it to
    the trainable parameters with a zero, so backward (DDP's gradient sync) still runs on this rank."""
    cfg = make_cfg(recipe="align", model={"template": None})
    inputs, model, data = _setup(cfg)
    text = [i for i in range(len(data.dataset)) if not data.dataset[i].image_keys][:2]
    outcome = train_step(inputs, [_batch(data, text)])
    assert inputs.strategy.backwards == 1 and inputs.strategy.steps == 1 and math.isfinite(outcome.loss)
    assert outcome.grad_norm == 0.0 and outcome.encoder_ran == [False]


def test_a_record_whose_image_cannot_be_decoded_is_dropped_from_its_batch(make_cfg, tiny_world: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    """With the feature cache on, images are decoded on first use: the record is skipped and counted, the rest
    of its batch trains; with data.guards.strict the step stops naming it."""
    import shutil

    good = json.loads(tiny_world["data"].read_text())[:1]
    images = tmp_path / "images"
    shutil.copytree(tiny_world["images"], images)
    (images / "broken.png").write_bytes(b"not a png")
    records = good + [{"id": "bad", "image": "broken.png",
                       "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}]}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    for strict in (False, True):
        cfg = make_cfg(recipe="align", model={"template": None}, feature_cache=True,
                       data={"data_path": [str(path)], "image_folder": str(images), "strict": strict, "max_skip_ratio": 1.0},
                       output_dir=str(tmp_path / f"run{strict}"))
        inputs, _, data = _setup(cfg, feature_cache=True)
        window = [_batch(data, [0, 1])]
        if strict:
            with pytest.raises(Exception, match="data.guards.strict stops on a bad image"):
                train_step(inputs, window)
            continue
        outcome = train_step(inputs, window)
        assert outcome.records == 1 and inputs.skips.counts == {"image": 1} and inputs.skips.log[0][0] == "bad"
        assert math.isfinite(outcome.loss) and outcome.encoder_ran == [False]


class SecondOfTwo(CountingStrategy):
    """Rank 1 of 2 in one process: the step's count all-reduce adds a rank 0 holding 3x these LLM tokens and no
    image tile; every other collective is this rank's alone."""

    world_size, rank = 2, 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.numel() == 4 + 2 * self.world_size:
            tensor[4] += 3 * tensor[5]
        return tensor


def test_each_ranks_tokens_and_tiles_ride_in_the_count_all_reduce(make_cfg) -> None:
    """Rank 1's tokens and tiles land in its own slots of the step's one count collective; max/mean by hand:
    tokens (3m, m) -> 1.5, tiles (0, t) -> 2.0."""
    from train.efficiency import rank_imbalance

    cfg = make_cfg()
    inputs, _, data = _setup(cfg)
    inputs.strategy.__class__ = SecondOfTwo
    batch = _batch(data, [0, 1])
    outcome = train_step(inputs, [batch])
    mine = float(batch.attention_mask.sum())
    tiles = float(batch.pixel_values.shape[0])
    assert tiles > 0 and outcome.rank_tokens == [3 * mine, mine] and outcome.rank_tiles == [0.0, tiles]
    assert rank_imbalance(outcome.rank_tokens, outcome.rank_tiles) == {"token_imbalance": 1.5, "tile_imbalance": 2.0}
