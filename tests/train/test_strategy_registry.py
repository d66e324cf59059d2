"""Tests for train.strategies.registry: every registered name resolves to a Strategy; unknown names list the known."""
from __future__ import annotations

import importlib

import pytest

from train.strategies.base import Strategy
from train.strategies.registry import STRATEGIES, build_strategy
from train.strategies.single import SingleProcessStrategy


def test_every_registered_strategy_is_a_strategy_beside_the_base() -> None:
    assert sorted(STRATEGIES) == ["ddp", "deepspeed", "fsdp", "single"]
    for path in STRATEGIES.values():
        module_name, cls_name = path.split(":")
        assert module_name.startswith("train.strategies.")
        assert issubclass(getattr(importlib.import_module(module_name), cls_name), Strategy)


def test_build_by_exact_name() -> None:
    assert isinstance(build_strategy("single"), SingleProcessStrategy)
    with pytest.raises(ValueError, match=r"unknown strategy 'DDP'; known: \['ddp', 'deepspeed', 'fsdp', 'single'\]"):
        build_strategy("DDP")


def test_config_strategy_choices_are_the_registry_names() -> None:
    import typing

    from train.config import ConfigError, EngineConfig, config_from_dict

    assert typing.get_args(typing.get_type_hints(EngineConfig)["strategy"]) == tuple(STRATEGIES)
    with pytest.raises(ConfigError, match=r"strategy: 'FSDP' is not one of \['single', 'ddp', 'deepspeed', 'fsdp'\]"):
        config_from_dict({"engine": {"strategy": "FSDP"}})
