"""Stage-0 ViT: the contrastive losses fall, retrieval and per-cell captioning beat chance, `hf:` loads the vision half."""
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel

from synthetic.text import cell_caption, clip_caption
from synthetic.world import SceneObject
from synthetic.stage0.config import ViTPretrainConfig
from synthetic.stage0.vit import CellCaptions, encode_captions, load_scenes, load_split, normalize, patch_size, pretrain_vit


def test_cell_captions_name_each_patch_s_own_cell(stage0_world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(stage0_world / "tokenizer"))
    scenes = load_scenes(stage0_world, "test")
    for grid in (3, 6):
        cells = CellCaptions({"test": scenes}, grid, tok, 16)
        assert cells.targets["test"].shape == (len(scenes), grid * grid)
        for scene, row in zip(scenes[:8], cells.targets["test"]):
            by_cell = {o.row * 3 + o.col: o for o in scene.objects}
            for patch, index in enumerate(row.tolist()):
                r, c = patch // grid * 3 // grid, patch % grid * 3 // grid
                assert cells.texts[index] == cell_caption(by_cell.get(r * 3 + c), r, c)
        assert len(set(cells.texts)) == len(cells.texts)  # each distinct caption once
    obj = SceneObject(shape="star", colour="red", size="small", row=0, col=2)
    assert cell_caption(obj, 0, 2) == "small red star top right" and cell_caption(None, 1, 1) == "empty center"


def test_patch_size_defaults_to_one_patch_per_grid_cell() -> None:
    assert patch_size(ViTPretrainConfig(), 72) == 24
    assert patch_size(ViTPretrainConfig(patch_size=8), 32) == 8
    with pytest.raises(ValueError, match="multiple of 3"):
        patch_size(ViTPretrainConfig(), 64)
    with pytest.raises(ValueError, match="divisor of 30"):
        patch_size(ViTPretrainConfig(patch_size=8), 30)


def test_captions_end_with_the_pooling_marker(stage0_world: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(stage0_world / "tokenizer"))
    images, scenes = load_split(stage0_world, "test")
    assert images.dtype == torch.uint8 and images.shape == (32, 3, 32, 32) and len(scenes) == 32
    ids = encode_captions([clip_caption(s) for s in scenes], tok, 48)
    assert (ids == tok.pad_token_id).any(dim=1).all()  # every caption has its end marker


@pytest.mark.slow  # ~8 s alone on one thread: 100 CLIP steps are needed to leave the ln(N) plateau
def test_short_run_lowers_contrastive_loss_and_saves_a_loadable_vit(stage0_world: Path, tmp_path: Path, tiny_vit) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "vit"
    m = pretrain_vit(stage0_world, out, tiny_vit, log_every=0)
    assert m["final_train_loss"] < m["first_train_loss"] - 0.5, m
    assert m["retrieval"]["num_candidates"] == 32
    r = m["retrieval"]
    assert max(r["image_to_text_top1"], r["text_to_image_top1"]) >= 2 * r["chance"], r  # untrained: about chance
    # 16 patches of 8 px on 32-px images: each patch names its cell among every distinct cell caption
    assert m["cell_caption_top1"] >= 5 * m["cell_caption_chance"], m
    vision = CLIPVisionModel.from_pretrained(str(out))
    assert vision.config.image_size == 32 and vision.config.patch_size == 8
    processor = CLIPImageProcessor.from_pretrained(str(out))
    images, _ = load_split(stage0_world, "test")
    pil = __import__("PIL.Image", fromlist=["Image"]).fromarray(images[0].permute(1, 2, 0).numpy())
    pixels = processor(pil, return_tensors="pt").pixel_values
    assert torch.allclose(pixels, normalize(images[:1]), atol=1e-5)  # the saved processor matches training
    with torch.no_grad():
        hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert hidden[-1].shape == (1, 1 + 16, 32)


def test_wide_world_is_refused_with_the_reason(tmp_path: Path, make_config) -> None:
    import dataclasses

    from synthetic.generate import generate_world

    cfg = dataclasses.replace(make_config(tmp_path / "wide"), num_train=4, num_test=2, image_width=216)
    generate_world(cfg)
    with pytest.raises(ValueError, match="square world of the same height"):
        pretrain_vit(Path(cfg.out), tmp_path / "vit", ViTPretrainConfig(steps=1))
