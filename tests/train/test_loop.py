"""Tests for train.loop: accumulation, token-weighted loss, non-finite stop, skipped records, precision."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch
from safetensors.torch import load_file

from train.checkpointing import list_checkpoints
from train.runtime import grad_accum_steps, resolve_precision
from train.errors import NonFiniteLossError
from train.recipes import run


def test_grad_accum_steps() -> None:  # sizes that do not divide: tests/train/test_rules.py
    assert grad_accum_steps(256, 32, 8) == 1
    assert grad_accum_steps(128, 4, 2) == 16


def test_auto_precision_on_cpu() -> None:  # bf16 refused on a CPU: tests/train/test_rules.py
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_accumulation_equals_one_big_batch(make_cfg, tmp_path) -> None:
    """Token-weighted loss: 2 micro-batches of 2 == 1 micro-batch of 4 (same samples, same update)."""
    small = run(make_cfg(micro_batch_size=2, output_dir=str(tmp_path / "a"), data={"group_by": "length"}))
    big = run(make_cfg(micro_batch_size=4, output_dir=str(tmp_path / "b"), data={"group_by": "length"}))
    assert len(small.losses) == len(big.losses) == 3
    assert small.losses == pytest.approx(big.losses, rel=1e-5, abs=1e-6)
    a = (tmp_path / "a" / "checkpoints").glob("step-*")
    wa = load_file(str(next(a) / "trainable.safetensors"))
    wb = load_file(str(next((tmp_path / "b" / "checkpoints").glob("step-*")) / "trainable.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(make_cfg, tmp_path) -> None:
    cfg = make_cfg(optim={"lr": 1e30, "max_grad_norm": 0.0}, save_every=1, max_steps=4)
    with pytest.raises(NonFiniteLossError, match="non-finite") as err:
        run(cfg)
    kept = list_checkpoints(cfg.checkpoint.output_dir)
    assert kept, "the step-1 checkpoint must exist"
    assert str(kept[-1]) in str(err.value)
    last = json.loads((kept[-1] / "trainer_state.json").read_text())["step"]
    assert last < 4
    weights = load_file(str(kept[-1] / "trainable.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_bad_records_are_skipped_and_counted(make_cfg, tiny_world, tmp_path) -> None:
    records = json.loads(tiny_world["data"].read_text())[:8]
    records[1] = {"id": "missing-img", "image": "nope.png",
                  "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}]}
    records[2] = {"id": "bad-roles", "conversations": [{"from": "gpt", "value": "first"}]}
    records[3] = {"id": "escape", "image": "../../etc/passwd",
                  "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    result = run(make_cfg(data={"data_path": [str(path)], "max_skip_ratio": 1.0}, global_batch_size=4,
                          micro_batch_size=2, max_steps=-1,
                          epochs=1))
    assert result.steps == 2
    assert result.skipped == {"image": 2, "record": 1}, result.skipped
    assert all(v == v for v in result.losses)  # finite: good records still trained


def test_metrics_and_loss_curve_written(make_cfg) -> None:
    cfg = make_cfg(tensorboard=True)
    run(cfg)
    from pathlib import Path

    out = Path(cfg.checkpoint.output_dir)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "supervised_tokens", "peak_mem_mb"} <= set(lines[0])
    assert lines[0]["peak_mem_mb"] > 10 and lines[0]["tokens_per_s"] > 0
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_param_groups_lrs_and_no_decay(make_cfg) -> None:
    from train.config import OptimConfig
    from train.optim import build_optimizer, build_scheduler, summarize
    from train.recipes import build_model, prepare_model

    cfg = make_cfg(unfreeze_vision_last_n=1)
    model = build_model(cfg)
    prepare_model(model, cfg)
    opt = build_optimizer(model, OptimConfig(lr=2e-5, projector_lr=1e-3, vision_lr=1e-6, weight_decay=0.1))
    groups = {g.name: g for g in summarize(opt)}
    assert set(groups) == {"llm", "llm_no_decay", "projector", "projector_no_decay", "vision", "vision_no_decay"}
    assert (groups["llm"].lr, groups["projector"].lr, groups["vision"].lr) == (2e-5, 1e-3, 1e-6)
    assert groups["llm"].weight_decay == 0.1 and groups["llm_no_decay"].weight_decay == 0.0
    for group in opt.param_groups:
        assert all((p.ndim < 2) == group["name"].endswith("_no_decay") for p in group["params"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(g.num_params for g in groups.values()) == trainable
    sched = build_scheduler(opt, OptimConfig(lr=2e-5, warmup_ratio=0.03, scheduler="cosine"), total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"] / groups[opt.param_groups[0]["name"]].lr)
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[3] == pytest.approx(1.0) and lrs[2] < 1.0  # ceil(0.03 * 100) = 3 warmup steps
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_worker_processes_and_epochs_keep_the_numbers(make_cfg, tmp_path) -> None:
    """DataLoader workers must not change data order; 1.5 epochs of 24 records at batch 4 = 9 steps."""
    inline = run(make_cfg(max_steps=-1, epochs=1.5, output_dir=str(tmp_path / "a")))
    workers = run(make_cfg(max_steps=-1, epochs=1.5, data={"num_workers": 2}, output_dir=str(tmp_path / "b")))
    assert inline.steps == workers.steps == 9
    assert workers.losses == inline.losses


def _trainer(cfg, batches, strategy=None):
    """A Trainer over the recipe's model and dataset, with the micro-batches (index lists) fixed by the test."""
    from train.loop import Trainer
    from train.recipes import build_data, build_model, prepare_model
    from train.strategies.single import SingleProcessStrategy

    strategy = strategy or SingleProcessStrategy()
    model = build_model(cfg)
    prepare_model(model, cfg)
    data = build_data(cfg, model, strategy)
    data.epoch_batches = lambda epoch: [list(b) for b in batches]
    return Trainer(cfg, model, data, strategy), model


def test_fit_trains_in_training_mode_and_restores_eval(make_cfg) -> None:
    """`VisionLanguageModel.load` returns eval mode; without model.train() dropout (and LoRA dropout) is off."""
    trainer, model = _trainer(make_cfg(max_steps=1), [[0, 1], [2, 3]])
    assert not model.training  # as loaded
    seen: list[tuple[bool, bool, bool]] = []
    model.llm.model.register_forward_pre_hook(lambda module, args: seen.append(
        (module.training, all(m.training for m in module.modules()), model.vision_encoder.training)))
    trainer.fit()
    assert seen and all(llm and every_llm_module and not encoder for llm, every_llm_module, encoder in seen), seen
    assert not any(m.training for m in model.modules()), "fit() must leave the caller's (eval) mode"


def test_the_head_sees_supervised_rows_only_in_a_run(make_cfg) -> None:
    """The LM head runs on the hidden states of supervised positions only (no [B, T, V] logits in training)."""
    from pathlib import Path

    cfg = make_cfg(max_steps=1)
    trainer, model = _trainer(cfg, [[0, 1], [2, 3]])
    calls: list[tuple[int, ...]] = []
    model.llm.get_output_embeddings().register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))
    trainer.fit()
    metrics = json.loads((Path(cfg.checkpoint.output_dir) / "metrics.jsonl").read_text().splitlines()[0])
    assert calls and all(len(shape) == 2 for shape in calls)  # [rows, hidden], never [B, T, hidden]
    assert sum(shape[0] for shape in calls) == 2 * metrics["supervised_tokens"]  # forward + recomputed in backward


def test_empty_last_micro_batch_still_syncs_and_matches_absent_records(make_cfg, tiny_world, tmp_path) -> None:
    """A window whose last micro-batch is all skipped must still run its last backward outside no_sync
    (DDP/ZeRO reduce gradients only there); the update equals a run where the bad records are absent."""
    from train.strategies.single import SingleProcessStrategy

    class Recording(SingleProcessStrategy):
        def __init__(self) -> None:
            super().__init__()
            self.in_no_sync = False
            self.backwards: list[bool] = []  # per backward: was it synchronised (outside no_sync)?

        @contextlib.contextmanager
        def no_sync(self, model):  # noqa: ANN001, ANN201
            self.in_no_sync = True
            try:
                yield
            finally:
                self.in_no_sync = False

        def backward(self, loss: torch.Tensor) -> None:
            self.backwards.append(not self.in_no_sync)
            super().backward(loss)

    good = json.loads(tiny_world["data"].read_text())[:2]
    bad = [{"id": f"gone{i}", "image": "nope.png",
            "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Yo"}]}
           for i in range(2)]
    with_bad, without = tmp_path / "with_bad.json", tmp_path / "without.json"
    with_bad.write_text(json.dumps(good + bad))
    without.write_text(json.dumps(good))
    common = dict(max_steps=1, global_batch_size=4, micro_batch_size=2)
    strategy = Recording()
    trainer, skipped_model = _trainer(make_cfg(data={"data_path": [str(with_bad)], "max_skip_ratio": 1.0},
                                               output_dir=str(tmp_path / "a"),
                                               **common), [[0, 1], [2, 3]], strategy)
    result = trainer.fit()
    assert result.steps == 1 and result.skipped == {"image": 2}
    assert strategy.backwards == [False, True], "the window's last backward must synchronise"
    # Same samples, one micro-batch each (token-weighted loss: the split does not change the update).
    reference, absent_model = _trainer(make_cfg(data={"data_path": [str(without)]}, output_dir=str(tmp_path / "b"),
                                                **{**common, "global_batch_size": 2, "micro_batch_size": 1}),
                                       [[0], [1]])
    expected = reference.fit()
    assert result.losses == pytest.approx(expected.losses, rel=1e-5)
    for (name, a), (_, b) in zip(skipped_model.named_parameters(), absent_model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_group_sizes_count_a_partitioned_parameter_whole() -> None:
    """Under ZeRO-3 a parameter holds 0 elements locally (`ds_numel` has its size): the banner's group sizes are
    read from the optimizer before the engine swaps in its flat partitions, and count the full size."""
    from train.optim import summarize

    whole, partitioned = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.empty(0))
    partitioned.ds_numel = 40
    optimizer = torch.optim.SGD([{"params": [whole, partitioned], "name": "llm"}], lr=0.1)
    assert [(g.name, g.num_params) for g in summarize(optimizer)] == [("llm", 43)]
