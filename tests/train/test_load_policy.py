"""bf16 runs load their weights in bf16 (the LLM too when it is frozen or DeepSpeed keeps masters); what trains
under plain AdamW is cast back to fp32."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from train.load_policy import load_dtype, upcast_trainable
from vlm.batch import Batch


class _Cfg:
    def __init__(self, recipe: str, llm_mode: str = "full") -> None:
        self.recipe, self.trainable = recipe, SimpleNamespace(llm_mode=llm_mode)


def test_policy_table() -> None:
    assert load_dtype(_Cfg("align"), "fp32", deepspeed=False) == "float32"
    assert load_dtype(_Cfg("align"), "bf16", deepspeed=False) == "bfloat16"
    assert load_dtype(_Cfg("instruct", "lora"), "bf16", deepspeed=False) == "bfloat16"
    assert load_dtype(_Cfg("instruct", "full"), "bf16", deepspeed=False) == "float32"  # AdamW needs fp32 masters
    assert load_dtype(_Cfg("instruct", "full"), "bf16", deepspeed=True) == "bfloat16"  # DeepSpeed keeps them


def test_upcast_touches_trainable_half_parameters_only() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)).to(torch.bfloat16)
    model[0].requires_grad_(False)
    assert upcast_trainable(model) == 4
    assert model[0].weight.dtype == torch.bfloat16 and model[1].weight.dtype == torch.float32


def test_align_run_loads_bf16_and_trains_fp32_projector(make_cfg, monkeypatch) -> None:
    """bf16 needs a GPU to train; here the precision and dtype resolution are forced to show the loading path."""
    import train.recipes
    import vlm.assembly
    import vlm.dtypes
    from train.load_policy import upcast_trainable as upcast
    from train.recipes import build_model, prepare_model
    from train.strategies.single import SingleProcessStrategy
    from train.step import summed_token_loss

    monkeypatch.setattr(train.recipes, "resolve_precision", lambda precision, device: "bf16")
    monkeypatch.setattr(vlm.assembly, "resolve_dtype", lambda name: None if name is None else vlm.dtypes.DTYPES[name])
    cfg = make_cfg(recipe="align", model={"template": None})
    model = build_model(cfg, SingleProcessStrategy())
    assert model.llm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert next(model.vision_encoder.parameters()).dtype == torch.bfloat16
    assert model.config.torch_dtype is None  # a saved output still loads as before
    prepare_model(model, cfg)
    upcast(model)
    assert all(p.dtype == torch.float32 for p in model.projector.parameters())
    assert model.llm.get_input_embeddings().weight.dtype == torch.bfloat16  # frozen: stays bf16
    ids = torch.tensor([[1, 2, 3, 4]])
    batch = Batch(ids, torch.ones_like(ids), labels=ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = summed_token_loss(model, batch, torch.device("cpu"))
    assert torch.isfinite(loss)
