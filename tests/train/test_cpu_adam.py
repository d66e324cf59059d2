"""ZeRO-Offload configs get DeepSpeed's CPU Adam with our groups and hyperparameters; torch AdamW if it cannot build."""
from __future__ import annotations

import pytest
import torch

from train.strategies.cpu_adam import cpu_adam_like, offloads_optimizer


def _adamw() -> torch.optim.AdamW:
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    return torch.optim.AdamW([{"params": [a], "lr": 0.1, "weight_decay": 0.0, "name": "projector"},
                              {"params": [b], "lr": 0.2, "weight_decay": 0.5, "name": "llm"}],
                             lr=1e-3, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.01)


def test_offload_detection() -> None:
    assert offloads_optimizer({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}})
    assert not offloads_optimizer({"zero_optimization": {"offload_optimizer": {"device": "none"}}})
    assert not offloads_optimizer({"zero_optimization": {"stage": 3}})


def test_groups_and_hyperparameters_carry_over() -> None:
    seen = {}

    class FakeCPUAdam(torch.optim.Optimizer):
        def __init__(self, groups, **kw):
            seen.update(kw)
            super().__init__(groups, {"lr": kw["lr"], "weight_decay": kw["weight_decay"]})

    opt = _adamw()
    new = cpu_adam_like(opt, FakeCPUAdam)
    assert isinstance(new, FakeCPUAdam)
    assert seen == {"lr": 1e-3, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.01, "adamw_mode": True}
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in new.param_groups] == [("projector", 0.1, 0.0),
                                                                                  ("llm", 0.2, 0.5)]
    assert new.param_groups[1]["params"][0] is opt.param_groups[1]["params"][0]


def test_an_op_that_cannot_build_keeps_torch_adamw() -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    opt = _adamw()
    with pytest.warns(UserWarning, match="could not be built.*Ninja.*stays torch AdamW"):
        assert cpu_adam_like(opt, broken) is opt
