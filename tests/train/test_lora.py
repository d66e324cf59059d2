"""Tests for train.lora and `vlm merge-lora`: adapters train, merged logits equal unmerged, QLoRA refuses CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train.config import LoraSettings
from train.lora import ADAPTER_DIR, check_qlora_available, load_lora_model
from train.merge_lora import merge_directory
from train.recipes import run


def test_lora_run_then_merge_matches_unmerged(make_cfg, tmp_path) -> None:
    from vlm.model import VisionLanguageModel

    cfg = make_cfg(llm_mode="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0}, optim={"lr": 5e-2, "projector_lr": 1e-3},
                   output_dir=str(tmp_path / "lora"), max_steps=2)
    result = run(cfg)
    assert result.steps == 2
    assert (tmp_path / "lora" / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    unmerged = load_lora_model(tmp_path / "lora")
    unmerged.eval()
    merge_directory(str(tmp_path / "lora"), str(tmp_path / "merged"))
    merged = VisionLanguageModel.load(tmp_path / "merged")
    merged.eval()
    base = VisionLanguageModel.load(cfg.model.init_from)
    base.eval()
    k = merged.config.num_image_tokens
    ids = torch.tensor([[1] + [merged.config.image_token_id] * k + [10, 11, 12, 13]])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = unmerged(input_ids=ids, pixel_values=pixels).logits
        b = merged(input_ids=ids, pixel_values=pixels).logits
        c = base(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (a - c).abs().max() > 1e-3, "LoRA training must have changed the model"


def test_lora_targets_all_linear_layers_but_the_head(make_cfg) -> None:
    from train.recipes import build_model, prepare_model

    cfg = make_cfg(llm_mode="lora", lora={"r": 2, "alpha": 4})
    model = build_model(cfg)
    counts = prepare_model(model, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith("projector.") or "lora_" in n for n in trainable)
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in trainable if ".lora_A" in n}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert counts["llm"] > 0


def test_qlora_refuses_cpu_clearly() -> None:
    if torch.cuda.is_available():
        pytest.skip("this check is about machines without a GPU")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        check_qlora_available()


def test_lora_settings_defaults_follow_llava() -> None:
    s = LoraSettings()
    assert (s.r, s.alpha) == (128, 256)


# ---------------------------------------------------------------------------- QLoRA loading path
# bitsandbytes needs a GPU, so on a CPU the 4-bit kwargs are replaced by a marker: what is checked is the path
# (which LLM directory is loaded, how many times, which rows come back), not the quantization itself.
@pytest.fixture()
def fake_4bit(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    import train.lora
    import vlm.assembly
    from transformers import AutoModelForCausalLM

    calls: list[tuple[str, bool]] = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(path, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append((str(path), kwargs.pop("fake_4bit", False)))
        return real(path, **kwargs)

    monkeypatch.setattr(vlm.assembly.AutoModelForCausalLM, "from_pretrained", spy)
    monkeypatch.setattr(train.lora, "qlora_llm_kwargs", lambda init_from=None: {"fake_4bit": True})
    return calls


def _perturbed(model, seed: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Give every LLM weight and the added tokens' rows new values (a 'trained' LLM); returns its state."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.llm.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    return {k: v.detach().clone() for k, v in model.llm.state_dict().items()}


def test_qlora_loads_the_trained_llm_of_a_full_init_from_once(make_cfg, tiny_world, tmp_path, fake_4bit) -> None:
    from train.recipes import build_model
    from vlm.model import VisionLanguageModel

    trained = VisionLanguageModel.load(tiny_world["base"])
    state = _perturbed(trained, seed=1)
    trained.save(tmp_path / "trained")
    fake_4bit.clear()
    model = build_model(make_cfg(llm_mode="qlora", model={"init_from": str(tmp_path / "trained")}))
    assert fake_4bit == [(str(tmp_path / "trained" / "llm"), True)]  # one load, in "4-bit", of the trained LLM
    loaded = model.llm.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # untied and tied input/output embeddings
def test_qlora_from_projector_only_init_restores_input_and_output_rows(arch: str, make_cfg, tmp_path,
                                                                        fake_4bit) -> None:
    from train.recipes import build_model
    from vlm.testing import make_tiny_vlm

    phase1 = make_tiny_vlm(tmp_path / "parts", arch=arch)
    ids = phase1.config.added_token_ids
    gen = torch.Generator().manual_seed(3)
    input_w = phase1.llm.get_input_embeddings().weight
    output_w = phase1.llm.get_output_embeddings().weight
    tied = output_w is input_w
    assert tied == (arch == "gpt2")
    with torch.no_grad():  # rows phase 1 "trained", unlike the mean rows a fresh resize would give
        input_w[ids] = torch.randn(len(ids), input_w.shape[1], generator=gen)
        if not tied:
            output_w[ids] = torch.randn(len(ids), output_w.shape[1], generator=gen)
    want_in, want_out = input_w[ids].detach().clone(), output_w[ids].detach().clone()
    phase1.save(tmp_path / "phase1", projector_only=True)
    fake_4bit.clear()
    model = build_model(make_cfg(llm_mode="qlora", model={"init_from": str(tmp_path / "phase1")}))
    assert fake_4bit == [(phase1.config.llm, True)]  # the base the projector-only checkpoint refers to, once
    llm = model.llm
    torch.testing.assert_close(llm.get_input_embeddings().weight[ids], want_in, rtol=0, atol=0)
    torch.testing.assert_close(llm.get_output_embeddings().weight[ids], want_out, rtol=0, atol=0)
    assert (llm.get_output_embeddings().weight is llm.get_input_embeddings().weight) == tied


def test_qlora_keeps_the_projector_trainable_in_float32(make_cfg, fake_4bit) -> None:
    """After peft's k-bit preparation (here on an fp32 LLM flagged as 4-bit) only adapters and the projector train."""
    from train.recipes import build_model, prepare_model

    cfg = make_cfg(llm_mode="qlora", lora={"r": 2, "alpha": 4})
    model = build_model(cfg)
    model.llm.is_loaded_in_4bit = True
    counts = prepare_model(model, cfg)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert counts["projector"] > 0 and counts["llm"] > 0
    assert all(n.startswith("projector.") or "lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in trainable.items() if n.startswith("projector."))


def test_qlora_refusals_name_the_cause(make_cfg, tiny_world, tmp_path) -> None:
    import shutil

    from train.config import ConfigError
    from train.lora import prepare_4bit_llm
    from train.recipes import build_model, run
    from vlm.model import VisionLanguageModel

    zero3 = str(Path(__file__).resolve().parents[2] / "configs" / "deepspeed" / "zero3.json")
    with pytest.raises(ConfigError, match=r"ZeRO-3.*zero2\.json.*strategy=single"):
        run(make_cfg(llm_mode="qlora", strategy="deepspeed", deepspeed_config=zero3))
    with_adapter = tmp_path / "lora_out"
    shutil.copytree(tiny_world["base"], with_adapter)
    (with_adapter / ADAPTER_DIR).mkdir()
    with pytest.raises(ConfigError, match="merge-lora"):  # train.rules, before any weight loads
        run(make_cfg(llm_mode="qlora", model={"init_from": str(with_adapter)}))
    with pytest.raises(RuntimeError, match="not loaded in 4-bit"):
        prepare_4bit_llm(VisionLanguageModel.load(tiny_world["base"]))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            build_model(make_cfg(llm_mode="qlora"))


@pytest.mark.gpu
def test_qlora_4bit_on_gpu_loads_trained_weights_and_trains(make_cfg, tiny_world, tmp_path) -> None:
    """On a GPU with bitsandbytes: the LLM of init_from in NF4, added rows intact, one step changes the adapters."""
    pytest.importorskip("bitsandbytes")
    from train.recipes import build_model, run
    from vlm.model import VisionLanguageModel

    trained = VisionLanguageModel.load(tiny_world["base"])
    state = _perturbed(trained, seed=2)
    trained.save(tmp_path / "trained")
    cfg = make_cfg(llm_mode="qlora", lora={"r": 2, "alpha": 4}, model={"init_from": str(tmp_path / "trained")},
                   precision="bf16", max_steps=1, output_dir=str(tmp_path / "run"))
    model = build_model(cfg)
    assert model.llm.is_loaded_in_4bit
    ids = model.config.added_token_ids
    rows = model.llm.get_input_embeddings().weight[ids].float().cpu()
    torch.testing.assert_close(rows, state["model.embed_tokens.weight"][ids], rtol=1e-2, atol=1e-2)
    result = run(cfg)
    assert result.steps == 1 and all(loss == loss for loss in result.losses)
    assert (tmp_path / "run" / ADAPTER_DIR / "adapter_model.safetensors").is_file()
