"""FSDP2 (`engine.strategy=fsdp`) under torchrun (2 CPU processes, gloo) through the real recipe: the losses and the
final weights of one process, sharded checkpoints resumed on another number of processes, an export HF Llava reads."""
from __future__ import annotations

import json
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


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_lora_matches_one_process(make_cfg, tmp_path: Path) -> None:
    """LoRA: the adapters are sharded with their decoder layers, the frozen base too; same losses, adapters and
    projector as one process, and the checkpoints hold the trainable weights only."""
    from train.recipes import run

    common = dict(global_batch_size=8, max_steps=2, save_every=0, llm_mode="lora",
                  lora={"r": 4, "alpha": 8, "dropout": 0.0})
    single_cfg = make_cfg(micro_batch_size=4, output_dir=str(tmp_path / "single"), **common)
    single = run(single_cfg)
    fsdp_cfg = make_cfg(micro_batch_size=2, strategy="fsdp", output_dir=str(tmp_path / "fsdp"), **common)
    multi = harness.run_distributed(fsdp_cfg, tmp_path, "fsdp")
    assert multi["steps"] == single.steps == 2
    assert multi["losses"] == pytest.approx(single.losses, rel=1e-5, abs=0)
    assert_same_weights(single_cfg.checkpoint.output_dir, fsdp_cfg.checkpoint.output_dir, atol=2e-5, lora="attach")
    from torch.distributed.checkpoint import FileSystemReader

    last = sorted((Path(fsdp_cfg.checkpoint.output_dir) / "checkpoints").glob("step-*"))[-1]
    saved = set(FileSystemReader(str(last / "model_shards")).read_metadata().state_dict_metadata)
    assert saved and all(".lora_" in k or k.startswith("vlm.projector.") for k in saved)


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_align_with_feature_cache_fills_first_and_matches_one_process(make_cfg, tiny_world,
                                                                            tmp_path: Path) -> None:
    """Phase 1 with the feature cache: filled before the shards exist, no rank runs the (sharded) encoder during
    training, an undecodable image skips its record, and the losses and projector match one process."""
    from tests.train.test_zero3_feature_cache import _world_with_corrupt_image
    from train.recipes import run

    data, images = _world_with_corrupt_image(tiny_world, tmp_path)
    common = dict(recipe="align", model={"template": "plain"}, feature_cache=True, global_batch_size=8,
                  max_steps=3, save_every=0, data={"data_path": [str(data)], "image_folder": str(images),
                                                   "max_skip_ratio": 1.0})
    single_cfg = make_cfg(micro_batch_size=4, output_dir=str(tmp_path / "single"),
                          feature_cache_dir=str(tmp_path / "fc_single"), **common)
    single = run(single_cfg)
    fsdp_cfg = make_cfg(micro_batch_size=2, strategy="fsdp", output_dir=str(tmp_path / "fsdp"),
                        feature_cache_dir=str(tmp_path / "fc_fsdp"), **common)
    ranks, output = harness.run_ranks(fsdp_cfg, tmp_path, "fsdp", no_encoder_in_fit=True)
    assert "feature cache filled before training" in output
    assert ranks[0]["steps"] == single.steps == 3
    assert sum(r["skipped"].get("image", 0) for r in ranks) == 1 == single.skipped["image"]
    assert ranks[0]["losses"] == pytest.approx(single.losses, rel=1e-5, abs=0)
    assert_same_weights(single_cfg.checkpoint.output_dir, fsdp_cfg.checkpoint.output_dir, atol=2e-5)


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_packed_anyres_with_a_text_only_rank_matches_one_process(make_cfg, tiny_world, tmp_path: Path) -> None:
    """Packed anyres rows, two steps over two epochs of one text-only and one image record: at every step one rank
    packs a text-only row, whose pass still runs the (sharded) encoder, projector and `image_newline` on nothing."""
    from train.recipes import run
    from vision_encoders.config import VisionEncoderConfig
    from vlm.model import VisionLanguageModel

    parts = tiny_world["root"] / "parts"
    vision = VisionEncoderConfig(spec=f"hf:{parts / 'vision_clip'}", image_aspect_ratio="anyres",
                                 image_grid_pinpoints=PINS)
    VisionLanguageModel.build(vision, "mlp2x_gelu", str(parts / "llm_llama"), "vicuna_v1").save(tmp_path / "base")
    records = json.loads(tiny_world["data"].read_text())
    two = [next(r for r in records if "image" not in r), next(r for r in records if "image" in r)]
    data = tmp_path / "two.json"
    data.write_text(json.dumps(two))
    common = dict(model={"init_from": str(tmp_path / "base"), "template": "vicuna_v1"}, global_batch_size=2,
                  micro_batch_size=1, max_steps=2, save_every=0,
                  data={"data_path": [str(data)], "packing": True, "pack_length": 1024})
    single_cfg = make_cfg(output_dir=str(tmp_path / "single"), **common)
    single = run(single_cfg)
    fsdp_cfg = make_cfg(strategy="fsdp", output_dir=str(tmp_path / "fsdp"), **common)
    ranks, output = harness.run_ranks(fsdp_cfg, tmp_path, "fsdp")
    assert "packing self-check passed" in output
    assert ranks[0]["steps"] == single.steps == 2
    assert ranks[0]["losses"] == pytest.approx(single.losses, rel=1e-5, abs=0)
    assert_same_weights(single_cfg.checkpoint.output_dir, fsdp_cfg.checkpoint.output_dir, atol=2e-5)


@pytest.mark.slow
def test_compiled_decoder_layers_train_like_eager_on_one_process(make_cfg, tmp_path: Path) -> None:
    """`engine.compile=true` (inductor's C++ kernels on this CPU) gives the eager losses and weights, packed rows of
    one fixed length included; the strategy compiled every decoder layer."""
    from torch._dynamo.utils import counters

    from train.recipes import run

    common = dict(global_batch_size=4, micro_batch_size=2, max_steps=1, save_every=0,
                  data={"packing": True, "pack_length": 512})
    eager_cfg = make_cfg(output_dir=str(tmp_path / "eager"), **common)
    eager = run(eager_cfg)
    counters.clear()
    compiled_cfg = make_cfg(output_dir=str(tmp_path / "compiled"), engine={"compile": True}, **common)
    compiled = run(compiled_cfg)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo compiled (the layers share their graphs)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-5, abs=0)
    assert_same_weights(eager_cfg.checkpoint.output_dir, compiled_cfg.checkpoint.output_dir, atol=2e-5)


def test_fsdp_strategy_on_one_process_shards_gathers_and_clips(tmp_path: Path) -> None:
    """Outside torchrun FSDP2 runs on a one-process group: every parameter becomes a DTensor, `full_parameters`
    lends whole plain tensors (the same values) and gives the shards back, and the clipped norm is the global one."""
    from torch.distributed.tensor import DTensor

    from train.strategies.fsdp import FSDPStrategy
    from vlm.testing import make_tiny_vlm

    model = make_tiny_vlm(tmp_path)
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    strategy = FSDPStrategy(precision="fp32")
    try:
        view, optimizer = strategy.setup(model, lambda m: torch.optim.SGD([p for p in m.parameters()
                                                                           if p.requires_grad], lr=1.0))
        assert strategy.unwrap(view) is model and strategy.partitions_parameters and strategy.shards_checkpoints
        assert all(isinstance(p, DTensor) for p in model.parameters())
        with strategy.full_parameters(view, only=list(model.projector.parameters())):
            for name, param in model.projector.named_parameters():
                assert not isinstance(param, DTensor) and torch.equal(param, before[f"projector.{name}"])
        assert all(isinstance(p, DTensor) for p in model.projector.parameters())
        with pytest.raises(NotImplementedError, match="sharded checkpoints"):
            with strategy.full_parameters(view, modify=True):
                pass
        trainable = [p for p in model.parameters() if p.requires_grad]
        for param in trainable:
            param.grad = torch.ones_like(param)
        count = sum(p.numel() for p in trainable)
        norm = strategy.clip_and_step(1.0)
        assert norm == pytest.approx(count ** 0.5)
        full = {n: p.full_tensor() for n, p in model.named_parameters()}
        for name, value in before.items():  # SGD lr 1: the trainable ones moved by the clipped gradient
            step = 1.0 / (count ** 0.5 + 1e-6) if name.startswith("projector.") else 0.0
            torch.testing.assert_close(full[name], value - step, rtol=0, atol=1e-6, msg=name)
    finally:
        strategy.close()


def test_a_sharded_checkpoint_is_refused_by_name_under_a_gathering_strategy(tmp_path: Path) -> None:
    from train.checkpointing import STATE_FILE, TrainerState, load_checkpoint
    from train.errors import ConfigError
    from train.strategies.single import SingleProcessStrategy

    (tmp_path / "model_shards").mkdir()
    (tmp_path / STATE_FILE).write_text(json.dumps(TrainerState(step=2, world_size=2).__dict__))
    with pytest.raises(ConfigError, match=r"holds sharded weights \(engine.strategy=fsdp's\), which "
                                          r"engine.strategy=single does not resume"):
        load_checkpoint(tmp_path, SingleProcessStrategy(), torch.nn.Linear(2, 2), scheduler=None)
