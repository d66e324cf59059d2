"""The LLM's decoder layers: the units FSDP2 shards one by one, and what `engine.compile` compiles."""
from __future__ import annotations

from torch import nn

from train.errors import ConfigError


def decoder_layers(llm: nn.Module) -> list[nn.Module]:
    """The decoder layers of an HF causal LM, inside a peft wrapper too (`get_decoder().layers`)."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ConfigError(f"{type(base).__name__}: no decoder layers found (get_decoder().layers), which FSDP2 and "
                          "engine.compile take one by one")
    return list(layers)


def compile_decoder_layers(llm: nn.Module) -> int:
    """`torch.compile` each decoder layer in place (`nn.Module.compile`: its forward; hooks added later, FSDP2's,
    stay eager); returns how many. The layers share one compiled graph (same code, parameters as inputs)."""
    layers = decoder_layers(llm)
    for layer in layers:
        layer.compile()
    return len(layers)
