"""FSDP2 (`engine.strategy=fsdp`) under torchrun (2 CPU processes, gloo) through the real recipe: the losses and the
final weights of one process, sharded checkpoints resumed on another number of processes, an export HF Llava reads."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train import harness

PINS = "(1x1),...,(2x2)"


def exported(output_dir: str | Path, names: list[str], lora: str = "merge") -> dict[str, torch.Tensor]:
    """The named parameters of a run's final output, loaded as any user loads it."""
    from vlm.model import VisionLanguageModel

    params = dict(VisionLanguageModel.load(output_dir, lora=lora).named_parameters())
    return {name: params[name].detach() for name in names}


def assert_same_weights(single_dir: str, multi_dir: str, atol: float, lora: str = "merge") -> None:
    """The FSDP run's final output holds the single run's final trainable weights (its last checkpoint's)."""
    expected = harness.final_weights(single_dir)
    got = exported(multi_dir, sorted(expected), lora=lora)
    assert expected
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=atol, msg=name)


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_full_matches_one_process_resumes_on_one_and_exports_to_hf(make_cfg, tmp_path: Path) -> None:
    """Instruct, full LLM, gradient checkpointing, text-only micro-batches, a sharded checkpoint every step.

    2 ranks x micro-batch 2 x 2 accumulation steps = one process's micro-batch 4 x 2: only the reduction order
    differs. Then the step-2 checkpoint (2 ranks' shards) resumes on ONE process and ends where the others did,
    and the final output exports to HF Llava with the same logits."""
    from train.recipes import run

    common = dict(global_batch_size=8, max_steps=3, save_every=1, gradient_checkpointing=True)
    single_cfg = make_cfg(micro_batch_size=4, output_dir=str(tmp_path / "single"), **common)
    single = run(single_cfg)
    fsdp_cfg = make_cfg(micro_batch_size=2, strategy="fsdp", output_dir=str(tmp_path / "fsdp"), **common)
    multi = harness.run_distributed(fsdp_cfg, tmp_path, "fsdp")
    assert multi["steps"] == single.steps == 3
    assert multi["losses"] == pytest.approx(single.losses, rel=1e-5, abs=0)
    assert_same_weights(single_cfg.checkpoint.output_dir, fsdp_cfg.checkpoint.output_dir, atol=2e-5)
    step2 = Path(fsdp_cfg.checkpoint.output_dir) / "checkpoints" / "step-00000002"
    assert (step2 / "model_shards" / ".metadata").is_file() and not (step2 / "trainable.safetensors").exists()
    assert len(list((step2 / "model_shards").glob("*.distcp"))) == 2  # one file of shards per rank

    # 2 -> 1 process: DCP reshards the weights and Adam moments, the data continues at step 3.
    resumed_cfg = make_cfg(micro_batch_size=4, strategy="fsdp", output_dir=str(tmp_path / "resumed"),
                           checkpoint={"resume": str(step2)}, **common)
    resumed = run(resumed_cfg)
    assert resumed.resumed_from == step2 and resumed.steps == 3
    assert resumed.losses == pytest.approx(single.losses[2:], rel=1e-5, abs=0)
    assert_same_weights(single_cfg.checkpoint.output_dir, resumed_cfg.checkpoint.output_dir, atol=2e-5)

    _assert_hf_logits_match(fsdp_cfg.checkpoint.output_dir, tmp_path / "hf")


def _assert_hf_logits_match(output_dir: str, hf_dir: Path) -> None:
    from transformers import LlavaForConditionalGeneration

    from vlm.hf.convert import export_hf
    from vlm.model import VisionLanguageModel
    from vlm.testing import pad_batch, sample_ids

    model = VisionLanguageModel.load(output_dir).eval()
    export_hf(model, hf_dir)
    hf = LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
    seqs = [sample_ids(model, 1, num_text=3, seed=1), sample_ids(model, 0, num_text=6, seed=2)]
    ids, mask = pad_batch(seqs, model.config.pad_token_id, "left")
    size = model.vision_encoder.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, pixel_values=pixels).logits
        theirs = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    torch.testing.assert_close(theirs[mask.bool()], ours[mask.bool()], rtol=0, atol=1e-5)
